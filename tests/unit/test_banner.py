"""What `serve` prints: on a terminal a short banner (where the API and the docs are, a
warning while the demo key is configured) and readable log lines; elsewhere, or when
server.log_format says json, JSON lines only."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from anyrouter_proxy.banner import DEMO_KEY, banner, base_url, docs_location
from anyrouter_proxy.config.loader import load_config
from anyrouter_proxy.exposure import DEMO_KEY_SHA256
from tests.console import serve_once
from tests.net import free_port

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "routes.yaml"


def own_config(tmp_path: Path, *server: str) -> Path:
    """A config without the demo key, storing its log in tmp_path."""
    path = tmp_path / "routes.yaml"
    path.write_text(
        "version: 1\n"
        + (f"server: {{{', '.join(server)}}}\n" if server else "")
        + f"storage: {{sqlite_path: {tmp_path / 'usage.db'}}}\n"
        "providers:\n  demo: {kind: mock}\n"
        "models:\n  demo/echo: {routes: [{provider: demo, model: echo}]}\n"
        f"keys:\n  mine: {{key_sha256: {'a' * 64}}}\n", "utf-8")
    return path


def example_copy(tmp_path: Path) -> Path:
    """The example config (with the demo key), its usage log in tmp_path."""
    text = EXAMPLE.read_text("utf-8").replace("../data/anyrouter.db",
                                              str(tmp_path / "usage.db"))
    path = tmp_path / "routes.yaml"
    path.write_text(text, "utf-8")
    return path


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_on_a_terminal_the_banner_comes_first_then_readable_logs(tmp_path: Path) -> None:
    port = free_port()
    out = serve_once(["--config", str(example_copy(tmp_path))], port, tmp_path,
                     stdout_tty=True, stderr_tty=True, request="/api/v1/openapi.json")
    assert out.returncode == 0
    first = out.terminal.splitlines()[0]
    assert first.startswith("AnyRouter proxy ") and f"http://127.0.0.1:{port}" in first
    assert f"http://127.0.0.1:{port}/api/v1" in out.terminal
    assert "docs" in out.terminal and "configuration.md" in out.terminal  # this checkout's
    assert "The demo key is configured (keys.demo)" in out.terminal
    assert f"Bearer {DEMO_KEY}" in out.terminal
    logs = out.terminal[out.terminal.index("delete keys.demo."):].splitlines()[1:]
    assert any("listening on" in line for line in logs)
    assert any("path=/api/v1/openapi.json" in line for line in logs)  # the access line, as text
    assert not any(line.startswith("{") for line in logs)


def test_without_the_demo_key_there_is_no_warning(tmp_path: Path) -> None:
    out = serve_once(["--config", str(own_config(tmp_path))], free_port(), tmp_path,
                     stdout_tty=True, stderr_tty=True)
    assert out.terminal.startswith("AnyRouter proxy ")
    assert "demo key" not in out.terminal and DEMO_KEY not in out.terminal


def test_on_pipes_json_lines_only(tmp_path: Path) -> None:
    out = serve_once(["--config", str(example_copy(tmp_path))], free_port(), tmp_path,
                     stdout_tty=False, stderr_tty=False, request="/api/v1/openapi.json")
    assert out.returncode == 0 and out.terminal == ""
    assert "AnyRouter proxy 0" not in out.stderr and DEMO_KEY not in out.stdout + out.stderr
    lines = json_lines(out.stdout)  # every line parses
    assert any(line.get("path") == "/api/v1/openapi.json" for line in lines)


def test_banner_on_the_terminal_logs_as_json_to_a_pipe(tmp_path: Path) -> None:
    port = free_port()
    out = serve_once(["--config", str(own_config(tmp_path))], port, tmp_path,
                     stdout_tty=False, stderr_tty=True)
    assert out.terminal.startswith("AnyRouter proxy ")
    assert any(line.get("message") == f"AnyRouter proxy listening on http://127.0.0.1:{port}"
               for line in json_lines(out.stdout))


@pytest.mark.parametrize("setting", [("config", "log_format: json"), ("flag", "json")])
def test_log_format_json_wins_on_a_terminal(tmp_path: Path, setting: tuple[str, str]) -> None:
    where, value = setting
    config = own_config(tmp_path, value) if where == "config" else own_config(tmp_path)
    flags = ["--log-format", value] if where == "flag" else []
    out = serve_once(["--config", str(config), *flags], free_port(), tmp_path,
                     stdout_tty=True, stderr_tty=False, request="/api/v1/openapi.json")
    lines = json_lines(out.terminal)
    assert any(line.get("path") == "/api/v1/openapi.json" for line in lines)


def test_the_warning_names_the_documented_key() -> None:
    assert hashlib.sha256(DEMO_KEY.encode()).hexdigest() == DEMO_KEY_SHA256
    assert DEMO_KEY in (REPO / "README.md").read_text("utf-8")
    text = banner(load_config(EXAMPLE, environ={}), "127.0.0.1", 8080)
    assert "keys.demo" in text and '"model": "demo/echo"' in text


@pytest.mark.parametrize(("host", "url"), [
    ("127.0.0.1", "http://127.0.0.1:80"), ("0.0.0.0", "http://127.0.0.1:80"),
    ("::", "http://[::1]:80"), ("::1", "http://[::1]:80"), ("[::1]", "http://[::1]:80"),
    ("localhost", "http://localhost:80"),
])
def test_base_url_is_one_a_local_client_can_use(host: str, url: str) -> None:
    assert base_url(host, 80) == url


def test_docs_location_is_this_checkouts_docs_folder() -> None:
    assert docs_location().startswith(str(REPO / "docs"))
