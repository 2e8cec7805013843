"""A real `anyrouter-proxy serve` in a subprocess, and what /proc tells about it: shared by
the soak (bench/soak.py, tests/e2e/test_soak.py) and the e2e tests that need a whole
process (durability, upstream faults)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick, released at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_status_kb(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status (VmRSS, VmHWM, ...)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[name] = int(parts[0])
    return out


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class ServeProcess:
    """`python -m anyrouter_proxy serve` on a free port; its output (stdout and stderr,
    through a pipe so that a file-size limit on the process does not touch it) is kept in
    `lines`."""

    proc: asyncio.subprocess.Process
    port: int
    lines: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def output(self) -> str:
        return "\n".join(self.lines[-60:])

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.lines.append(line.decode(errors="replace").rstrip())

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, config_path: Path, *, ready_s: float = 30,
                    env: dict[str, str] | None = None) -> AsyncIterator[ServeProcess]:
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "anyrouter_proxy", "serve", "--config", str(config_path),
            "--port", str(port), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        server = cls(proc, port)
        server._reader = asyncio.ensure_future(server._read())
        try:
            await server.wait_ready(ready_s)
            yield server
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(server._reader, 5)

    async def wait_ready(self, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        async with aiohttp.ClientSession() as session:
            while True:
                assert self.proc.returncode is None, self.output()
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with session.get(self.url("/health")) as response:
                        if response.status == 200:
                            return
                assert time.monotonic() < deadline, self.output()
                await asyncio.sleep(0.05)

    async def stop(self, sig: int = signal.SIGTERM, within_s: float = 30) -> int:
        self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), within_s)
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._reader, 5)
        return code
