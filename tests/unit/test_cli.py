"""The `anyrouter-proxy` command line, run as the real `python -m anyrouter_proxy`
in a clean environment, and in-process through `cli.main` where that is quicker."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from anyrouter_proxy import cli
from anyrouter_proxy.config.loader import load_config, schema, schema_path
from tests.net import free_port

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "routes.yaml"
KEY_RE = re.compile(r"^\s*(sk-ar-\S+)\s*$", re.MULTILINE)
DEMO_KEY = "sk-ar-demo-0000000000000000000000000000"  # the README's
DIGEST_RE = re.compile(r"^\s*key_sha256: ([0-9a-f]{64})\s*$", re.MULTILINE)

BAD = """\
version: 1
providers:
  demo: {kind: foo}
  oa: {kind: openai, base_url: "https://x.example/v1", api_key: "${ANYROUTER_TEST_UNSET}"}
models:
  demo/echo:
    routes:
      - {provider: ghost, model: echo}
"""
# (line, path, part of the message) of each problem of BAD
BAD_PROBLEMS = [
    (3, "providers.demo.kind", "'foo' is not one of"),
    (4, "providers.oa.api_key", "environment variable ANYROUTER_TEST_UNSET is not set"),
    (8, "models.demo/echo.routes[0].provider", "unknown provider 'ghost'"),
]


def clean_env() -> dict[str, str]:
    """A fresh machine: no provider credentials, no proxy settings."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
           "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    if "SYSTEMROOT" in os.environ:  # pragma: no cover - Windows
        env["SYSTEMROOT"] = os.environ["SYSTEMROOT"]
    return env


def run(*args: str, cwd: Path = REPO, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "anyrouter_proxy", *args], cwd=cwd,
                          env=clean_env(), capture_output=True, text=True, timeout=timeout)


def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD, "utf-8")
    return path


def problem_lines(stderr: str, path: Path) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"{path}:")
            and not line.endswith("problem(s)")]


# --- check ----------------------------------------------------------------------------


def test_check_example_config_in_clean_environment() -> None:
    result = run("check")  # default --config config/routes.yaml, from the repo root
    assert result.returncode == 0, result.stderr
    assert "config/routes.yaml: OK" in result.stdout
    assert result.stderr == ""


def test_check_example_config_by_path_from_elsewhere(tmp_path: Path) -> None:
    result = run("check", "--config", str(EXAMPLE), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_bad_config_exits_1_and_prints_every_problem(tmp_path: Path) -> None:
    path = bad_config(tmp_path)
    result = run("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1
    lines = problem_lines(result.stderr, path)
    assert len(lines) == len(BAD_PROBLEMS), result.stderr
    for number, where, message in BAD_PROBLEMS:  # in any order
        prefix = f"{path}:{number}: {where}: "
        assert [line for line in lines if line.startswith(prefix) and message in line], prefix
    assert "OK" not in result.stdout


def test_check_bad_config_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = bad_config(tmp_path)
    assert cli.main(["check", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: 3 problem(s)" in err
    for number, where, message in BAD_PROBLEMS:
        assert re.search(rf"^{re.escape(f'{path}:{number}: {where}: ')}.*{re.escape(message)}",
                         err, re.MULTILINE), (number, err)


def test_check_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "absent.yaml"
    assert cli.main(["check", "--config", str(missing)]) == 1
    err = capsys.readouterr().err
    assert f"{missing}: <root>: cannot read config" in err


def test_check_ignores_credentials_in_the_process_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert cli.main(["check", "--config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "OK (4 providers, 6 models, 2 keys)" in out


def test_check_reports_an_unknown_yaml_tag_as_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "tagged.yaml"
    path.write_text(BAD.replace('"${ANYROUTER_TEST_UNSET}"', "!secret FOO"), "utf-8")
    result = run("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{path}:4: " in result.stderr


# --- serve ----------------------------------------------------------------------------


def test_serve_invalid_config_exits_without_listening(tmp_path: Path) -> None:
    path = bad_config(tmp_path)
    port = free_port()
    result = run("serve", "--config", str(path), "--port", str(port), cwd=tmp_path, timeout=30)
    assert result.returncode != 0
    assert "listening" not in result.stderr.lower()
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))
    check = run("check", "--config", str(path), cwd=tmp_path)
    assert problem_lines(result.stderr, path) == problem_lines(check.stderr, path)
    assert len(problem_lines(result.stderr, path)) == len(BAD_PROBLEMS)


def test_serve_invalid_config_never_calls_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from anyrouter_proxy.server import runner

    calls: list[object] = []
    monkeypatch.setattr(runner, "serve", lambda *a, **k: calls.append(a) or 0)
    path = bad_config(tmp_path)
    assert cli.main(["serve", "--config", str(path)]) != 0
    assert calls == []
    assert f"{path}:8: models.demo/echo.routes[0].provider" in capsys.readouterr().err


def test_serve_valid_config_passes_flags_to_the_server(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from anyrouter_proxy.server import runner

    seen: dict[str, object] = {}

    def fake_serve(config: object, **kwargs: object) -> int:
        seen.update(kwargs, config=config)
        return 0

    monkeypatch.setattr(runner, "serve", fake_serve)
    assert cli.main(["serve", "--config", str(EXAMPLE), "--host", "::1",
                     "--port", "9123"]) == 0
    assert (seen["host"], seen["port"]) == ("::1", 9123)
    assert seen["config"] == load_config(EXAMPLE, environ={})


UNPRICED = """\
version: 1
providers:
  demo: {kind: mock}
models:
  demo/echo:
    pricing: {prompt: 1, completion: 2}
    routes:
      - {provider: demo, model: echo}
  demo/free:
    routes:
      - {provider: demo, model: free}
keys:
  alice:
    key_sha256: %s
    credits: 10
""" % ("a" * 64)


def test_check_and_serve_refuse_an_unpriced_model_a_credit_key_may_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from anyrouter_proxy.server import runner

    path = tmp_path / "unpriced.yaml"
    path.write_text(UNPRICED, "utf-8")
    result = run("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1
    [line] = problem_lines(result.stderr, path)
    assert line.startswith(f"{path}:9: models.demo/free.pricing: missing"), line
    assert "key 'alice' has credits or a budget" in line
    calls: list[object] = []
    monkeypatch.setattr(runner, "serve", lambda *a, **k: calls.append(a) or 0)
    assert cli.main(["serve", "--config", str(path)]) != 0
    assert calls == []
    assert f"{path}:9: models.demo/free.pricing: missing" in capsys.readouterr().err
    path.write_text(UNPRICED.replace("  demo/free:\n",
                                     "  demo/free:\n    pricing: {prompt: 0, completion: 0}\n"),
                    "utf-8")
    assert run("check", "--config", str(path), cwd=tmp_path).returncode == 0


# --- serve: the published demo key stays on loopback ---------------------------------


def demo_config(tmp_path: Path, host: str = "127.0.0.1") -> Path:
    """The demo key under another name (it is known by its digest), listening on `host`."""
    path = tmp_path / "routes.yaml"
    path.write_text(
        f"version: 1\nserver: {{host: '{host}'}}\n"
        f"storage: {{sqlite_path: {tmp_path / 'usage.db'}}}\n"
        "providers:\n  demo: {kind: mock}\n"
        "models:\n  demo/echo: {routes: [{provider: demo, model: echo}]}\n"
        f"keys:\n  mine: {{key_sha256: {'a' * 64}}}\n"
        f"  trial: {{key_sha256: {hashlib.sha256(DEMO_KEY.encode()).hexdigest()}}}\n",
        "utf-8")
    return path


def assert_refused(result: subprocess.CompletedProcess[str], host: str, port: int) -> None:
    assert result.returncode != 0
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message  # one paragraph, no traceback
    assert f"refusing to serve on {host}:" in message
    assert "keys.trial" in message  # which entry to remove
    assert "anyrouter-proxy keys new NAME" in message  # how to make one's own
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "192.168.1.10", "10.0.0.7",
                                  "::ffff:0.0.0.0", "anyrouter.example.com"])
def test_serve_refuses_the_demo_key_on_a_non_loopback_host(tmp_path: Path, host: str) -> None:
    port = free_port()
    result = run("serve", "--config", str(demo_config(tmp_path)), "--host", host,
                 "--port", str(port), cwd=tmp_path, timeout=30)
    assert_refused(result, host, port)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "172.16.0.3"])
def test_serve_refuses_the_demo_key_on_the_configs_host(tmp_path: Path, host: str) -> None:
    port = free_port()
    result = run("serve", "--config", str(demo_config(tmp_path, host)), "--port", str(port),
                 cwd=tmp_path, timeout=30)
    assert_refused(result, host, port)


def test_serve_refuses_the_example_config_as_the_container_runs_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from anyrouter_proxy.server import runner

    calls: list[object] = []
    monkeypatch.setattr(runner, "serve", lambda *a, **k: calls.append(a) or 0)
    assert cli.main(["serve", "--config", str(EXAMPLE), "--host", "0.0.0.0"]) == 1
    assert calls == []
    assert "refusing to serve on 0.0.0.0: " in capsys.readouterr().err


def wait_for_health(process: subprocess.Popen[str], url: str) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited: {process.communicate()[1]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status)
        except OSError:
            time.sleep(0.1)
    raise AssertionError("serve did not answer within 30 s")


@pytest.mark.parametrize(("host", "connect"), [
    ("127.0.0.1", "127.0.0.1"), ("localhost", "127.0.0.1"), ("::1", "[::1]"),
    ("127.0.0.2", "127.0.0.2"),
])
def test_serve_accepts_the_demo_key_on_loopback(tmp_path: Path, host: str,
                                               connect: str) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "anyrouter_proxy", "serve", "--config", str(demo_config(tmp_path)),
         "--host", host, "--port", str(port)],
        cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    try:
        assert wait_for_health(process, f"http://{connect}:{port}/health") == 200
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "refusing" not in stderr


# --- schema ---------------------------------------------------------------------------


def test_schema_prints_the_packaged_schema(tmp_path: Path) -> None:
    result = run("schema", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed == json.loads(schema_path().read_text("utf-8"))
    assert printed == schema()


# --- keys new -------------------------------------------------------------------------


def new_key(capsys: pytest.CaptureFixture[str], name: str = "bob") -> tuple[str, str]:
    assert cli.main(["keys", "new", name]) == 0
    out = capsys.readouterr().out
    keys = KEY_RE.findall(out)
    assert len(keys) == 1, out
    return keys[0], out


def test_keys_new_prints_a_key_and_its_digest(tmp_path: Path) -> None:
    result = run("keys", "new", "bob", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [key] = KEY_RE.findall(result.stdout)
    assert key.startswith("sk-ar-")
    secret = key.removeprefix("sk-ar-")
    assert len(secret) >= 40
    assert re.fullmatch(r"[A-Za-z0-9_-]+", secret)
    assert len(set(secret)) >= 16  # not a constant or a short repeat
    [digest] = DIGEST_RE.findall(result.stdout)
    assert digest == hashlib.sha256(key.encode()).hexdigest()
    assert re.search(r"^\s*bob:\s*$", result.stdout, re.MULTILINE)


def test_keys_new_gives_a_different_key_each_time(capsys: pytest.CaptureFixture[str]) -> None:
    first, _ = new_key(capsys)
    second, _ = new_key(capsys)
    assert first != second


def test_keys_new_snippet_pastes_into_a_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, out = new_key(capsys, "bob")
    snippet = out[out.index("Paste under"):].split("\n", 1)[1].strip("\n")
    config_text = ("version: 1\nproviders:\n  demo: {kind: mock}\nmodels:\n"
                   "  demo/echo: {routes: [{provider: demo, model: echo}]}\nkeys:\n"
                   f"{snippet}\n")
    path = tmp_path / "routes.yaml"
    path.write_text(config_text, "utf-8")
    config = load_config(path, environ={})
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert config.keys["bob"].key_sha256 == digest
    assert config.keys_by_hash[digest].name == "bob"


# --- usage, help ----------------------------------------------------------------------


def test_usage_with_missing_database(tmp_path: Path) -> None:
    db = tmp_path / "nowhere" / "usage.db"
    result = run("usage", "--db", str(db), cwd=tmp_path)
    assert result.returncode == 1
    assert "not found" in result.stderr
    assert str(db) in result.stderr
    assert "Traceback" not in result.stderr
    assert not db.exists()


def test_help() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: anyrouter-proxy")
    for command in ("serve", "check", "schema", "keys", "usage"):
        assert command in result.stdout


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    assert "required" in capsys.readouterr().err
