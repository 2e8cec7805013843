"""A throwaway redis-server for tests: started in a temp dir on a free loopback port with
no persistence (`--save '' --appendonly no`), killed and deleted at the end.

Uses Debian's `redis-server` (installed by scripts/install-test-deps.sh, which `make test` runs).
`kill()` / `start()` simulate an outage (the restarted server is empty, as a Redis
without persistence is after a crash). Usage in a test module:

    @pytest.fixture(scope="session")
    def redis_server() -> Iterator[RedisServer]:
        with running_redis_server() as server:
            yield server
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.net import free_port

MISSING = ("redis-server not found on PATH or in /usr/bin, /usr/sbin: "
           "scripts/install-test-deps.sh (run by `make test`) installs it")


def find_redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in ("/usr/bin/redis-server", "/usr/sbin/redis-server",
                      "/usr/local/bin/redis-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class RedisServer:
    """One private redis-server. `url` is its redis:// URL; `kill()` ends it at once
    (SIGKILL, like a crash) and `start()` starts it again on the same port, empty."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="anyrouter-redis-"))
        self.log_file = self.root / "redis.log"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def start(self, timeout: float = 10.0) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--dir", str(self.root),
                   "--logfile", str(self.log_file), "--daemonize", "no",
                   "--protected-mode", "yes"]
        self.process = subprocess.Popen(command, cwd=self.root, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self._ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.log_file.read_text(errors="replace")[-2000:] \
                    if self.log_file.exists() else ""
                self.kill()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL and wait: the port refuses connections from the moment this returns."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_redis_server() -> Iterator[RedisServer]:
    """A started redis-server; FAILS the test (not skips) when the binary is missing,
    since CI must run these tests."""
    binary = find_redis_server()
    if binary is None:
        pytest.fail(MISSING, pytrace=False)
    server = RedisServer(binary)
    try:
        for attempt in range(3):  # the free port can be taken between probe and bind
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                server.port = free_port()
        yield server
    finally:
        server.cleanup()
