"""A real nginx running deploy/nginx/anyrouter.conf for a test, on a free loopback port.

The site file is used as written, except its upstream address (127.0.0.1:8080), its
listen port (80) and, with `prefix=True`, its commented-out `location /anyrouter/`
block, which is switched on. Debian's `nginx` package provides the binary (.ci/run).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.net import free_port

SITE = Path(__file__).resolve().parents[1] / "deploy" / "nginx" / "anyrouter.conf"
PREFIX_BLOCK = re.compile(r"^    # (location /anyrouter/ \{\n(?:    #     .*\n)+)    # \}\n",
                          re.MULTILINE)


def site(upstream: str, port: int, *, prefix: bool = False) -> str:
    text = SITE.read_text()
    text = text.replace("server 127.0.0.1:8080;", f"server {upstream};")
    text = text.replace("listen 80;", f"listen 127.0.0.1:{port};")
    if prefix:
        match = PREFIX_BLOCK.search(text)
        assert match is not None, "the site lost its commented location /anyrouter/ block"
        block = "    " + match[1].replace("    #     ", "        ") + "    }\n"
        text = text[:match.start()] + block + text[match.end():]
    return text


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    port: int
    tmp: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def error_log(self) -> str:
        log = self.tmp / "error.log"
        return log.read_text() if log.exists() else ""


def _main_config(tmp: Path, site_text: str) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach tmp (0700)
    temp_paths = "".join(f"    {name}_temp_path {tmp / name};\n"
                         for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"{user}worker_processes 1;\npid {tmp / 'nginx.pid'};\n"
            f"error_log {tmp / 'error.log'} info;\nevents {{ worker_connections 64; }}\n"
            f"http {{\n    access_log {tmp / 'access.log'};\n{temp_paths}"
            f"    default_type application/octet-stream;\n{site_text}\n}}\n")


@contextmanager
def running_nginx(tmp: Path, upstream: str, *, prefix: bool = False) -> Iterator[Nginx]:
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        pytest.fail("nginx is not installed (.ci/run installs it)", pytrace=False)
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(_main_config(tmp, site(upstream, port, prefix=prefix)))
    base = [binary, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")]
    check = subprocess.run([*base, "-t"], capture_output=True, text=True, timeout=10)
    assert check.returncode == 0, f"nginx -t failed:\n{check.stderr}"
    process = subprocess.Popen([*base, "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        yield Nginx(process, port, tmp)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_listening(nginx: Nginx) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if nginx.process.poll() is not None:
            pytest.fail(f"nginx exited with {nginx.process.returncode}:\n{nginx.error_log()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", nginx.port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        await writer.wait_closed()
        return
    pytest.fail(f"nginx did not listen on {nginx.port}:\n{nginx.error_log()}")
