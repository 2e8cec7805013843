"""The command line as a user runs it: `python -m anyrouter_proxy` in a clean environment,
and `serve` with its output on a terminal (a pseudo-terminal) or on pipes."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO


def clean_env() -> dict[str, str]:
    """A fresh machine: no provider credentials, no proxy settings."""
    return {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
            "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}


def run_cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "anyrouter_proxy", *args], cwd=cwd,
                          env=clean_env(), capture_output=True, text=True, timeout=timeout)


@dataclass
class ServeOutput:
    terminal: str  # what the pseudo-terminal showed (\r\n made \n), "" without one
    stdout: str  # what went to a pipe ("" when stdout was the terminal)
    stderr: str
    returncode: int


def wait_for_health(process: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "serve exited before it answered"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("serve did not answer within 30 s")


def serve_once(args: list[str], port: int, cwd: Path, *, stdout_tty: bool, stderr_tty: bool,
               request: str = "/health") -> ServeOutput:
    """Start `serve ARGS --port PORT` with stdout and/or stderr on a pseudo-terminal, wait
    until it answers, GET `request` once, stop it with SIGTERM and return what it wrote."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "anyrouter_proxy", "serve", *args, "--port", str(port)],
        cwd=cwd, env=clean_env(), stdin=subprocess.DEVNULL,
        stdout=slave if stdout_tty else subprocess.PIPE,
        stderr=slave if stderr_tty else subprocess.PIPE)
    os.close(slave)
    try:
        wait_for_health(process, f"http://127.0.0.1:{port}/health")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{request}", timeout=5):
            pass
        time.sleep(0.3)  # the access line is written in batches
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=40)
    terminal = _drain(master)
    return ServeOutput(terminal.replace("\r\n", "\n"), _text(stdout), _text(stderr),
                       process.returncode)


def _drain(master: int) -> str:
    chunks = []
    try:
        while select.select([master], [], [], 0.5)[0]:
            chunk = os.read(master, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:  # EIO: the other side is closed and everything was read
        pass
    finally:
        os.close(master)
    return b"".join(chunks).decode()


def _text(data: bytes | IO[bytes] | None) -> str:
    return data.decode() if isinstance(data, bytes) else ""
