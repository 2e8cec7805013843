"""A real nginx with deploy/nginx/anyrouter.conf, for the deploy and replica tests: the
site file as written, with only its upstream address and listen port replaced."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
SITE = DEPLOY / "nginx" / "anyrouter.conf"
SITE_UPSTREAM = "server 127.0.0.1:8080;"
SITE_LISTEN = "listen 80;"


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.fail("nginx is not installed: these tests need a real nginx "
                    "(scripts/install-test-deps.sh installs it)", pytrace=False)
    return found


def site_config(upstream: str, port: int, *, metrics_open: bool = True) -> str:
    text = SITE.read_text()
    assert text.count(SITE_UPSTREAM) == 1 and SITE_LISTEN in text
    text = text.replace(SITE_UPSTREAM, f"server {upstream};")
    text = text.replace(SITE_LISTEN, f"listen 127.0.0.1:{port};")
    if not metrics_open:  # as seen from an address outside the allowed networks
        text = text.replace("allow 127.0.0.1;", "")
    return text


def nginx_config(tmp: Path, site: str) -> str:
    """A main nginx.conf like Debian's (gzip on for the whole http block) around the site."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach tmp_path (0700)
    temp_paths = "".join(f"    {name}_temp_path {tmp / name};\n"
                         for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"{user}worker_processes 1;\npid {tmp / 'nginx.pid'};\n"
            f"error_log {tmp / 'error.log'} info;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"    access_log {tmp / 'access.log'};\n{temp_paths}"
            "    default_type application/octet-stream;\n"
            "    gzip on;\n    gzip_min_length 1;\n"
            "    gzip_types text/plain application/json text/event-stream;\n"
            f"{site}\n}}\n")
