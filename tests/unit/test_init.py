"""`anyrouter-proxy init DIR`: a starter routes.yaml with its schema beside it and a fresh
key, run as the real command in a clean environment."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from anyrouter_proxy.config.loader import load_config, schema
from tests.console import clean_env, run_cli, wait_for_health
from tests.net import free_port

KEY_RE = re.compile(r"^\s*(sk-ar-[A-Za-z0-9_-]{40,})\s*$", re.MULTILINE)
DEMO_KEY = "sk-ar-demo-0000000000000000000000000000"  # the README's
SCHEMA_LINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")


def init(folder: Path, *extra: str) -> tuple[str, subprocess.CompletedProcess[str]]:
    """Run from the first existing folder above `folder` (init creates the rest)."""
    cwd = next(parent for parent in folder.parents if parent.is_dir())
    result = run_cli("init", str(folder), *extra, cwd=cwd)
    assert result.returncode == 0, result.stderr
    keys = KEY_RE.findall(result.stdout)
    assert len(set(keys)) == 1, result.stdout
    return keys[0], result


def editor_schema(config: Path) -> Path:
    """The schema an editor finds from the file's first line, relative to the file."""
    match = SCHEMA_LINE.match(config.read_text("utf-8").splitlines()[0])
    assert match is not None
    return (config.parent / match.group(1)).resolve()


def test_init_writes_a_valid_config_with_only_the_keys_hash(tmp_path: Path) -> None:
    folder = tmp_path / "etc" / "anyrouter"  # created, parents too
    key, result = init(folder)
    config_file, schema_file = folder / "routes.yaml", folder / "schema.json"
    assert sorted(p.name for p in folder.iterdir()) == ["routes.yaml", "schema.json"]
    assert json.loads(schema_file.read_text("utf-8")) == schema()
    text = config_file.read_text("utf-8")
    assert key not in text and key not in schema_file.read_text("utf-8")
    digest = hashlib.sha256(key.encode()).hexdigest()
    config = load_config(config_file, environ={})
    [(name, entry)] = config.keys.items()
    assert (name, entry.key_sha256) == ("admin", digest)
    assert entry.credits is None and entry.models is None  # the operator's: unrestricted
    key_fields = schema()["$defs"]["key"]["properties"]
    assert ("admin: true" in text) == ("admin" in key_fields)
    check = run_cli("check", "--config", str(config_file), cwd=tmp_path)
    assert check.returncode == 0 and check.stderr == "", check.stderr
    assert f"anyrouter-proxy serve --config {config_file}" in result.stdout


def test_the_editor_schema_line_works_wherever_the_folder_goes(tmp_path: Path) -> None:
    init(tmp_path / "first")
    moved = shutil.copytree(tmp_path / "first", tmp_path / "elsewhere" / "deeper")
    shutil.rmtree(tmp_path / "first")
    config_file = moved / "routes.yaml"
    found = editor_schema(config_file)
    assert found == (moved / "schema.json").resolve() and found.is_file()
    document = yaml.safe_load(config_file.read_text("utf-8"))
    errors = list(Draft202012Validator(json.loads(found.read_text("utf-8")))
                  .iter_errors(document))
    assert errors == []
    assert run_cli("check", "--config", str(config_file), cwd=tmp_path).returncode == 0


def test_every_init_makes_a_new_key(tmp_path: Path) -> None:
    first, _ = init(tmp_path / "a")
    second, _ = init(tmp_path / "b")
    assert first != second
    assert len(set(first.removeprefix("sk-ar-"))) >= 16


@pytest.mark.parametrize("present", ["routes.yaml", "schema.json"])
def test_init_never_overwrites(tmp_path: Path, present: str) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / present).write_text("mine\n", "utf-8")
    result = run_cli("init", str(folder), cwd=tmp_path)
    assert result.returncode == 1
    assert "never overwrites" in result.stderr and present in result.stderr
    assert "Traceback" not in result.stderr and not KEY_RE.search(result.stdout)
    assert [p.name for p in folder.iterdir()] == [present]  # nothing else written
    assert (folder / present).read_text("utf-8") == "mine\n"


def test_init_names_the_key(tmp_path: Path) -> None:
    init(tmp_path / "conf", "--key-name", "ops-team")
    config = load_config(tmp_path / "conf" / "routes.yaml", environ={})
    assert list(config.keys) == ["ops-team"]
    bad = run_cli("init", str(tmp_path / "other"), "--key-name", "no spaces", cwd=tmp_path)
    assert bad.returncode == 2 and not (tmp_path / "other").exists()


def test_the_printed_key_is_served_and_the_demo_key_is_not(tmp_path: Path) -> None:
    key, _ = init(tmp_path / "conf")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "anyrouter_proxy", "serve", "--config",
         str(tmp_path / "conf" / "routes.yaml"), "--port", str(port)],
        cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_health(process, f"http://127.0.0.1:{port}/health")
        assert chat(port, key)["choices"][0]["message"]["content"].endswith("You said: Hello")
        with pytest.raises(urllib.error.HTTPError) as refused:
            chat(port, DEMO_KEY)
        refused.value.close()
        assert refused.value.code == 401
    finally:
        process.terminate()
        process.communicate(timeout=40)


def chat(port: int, key: str) -> dict[str, object]:
    body = {"model": "demo/echo", "messages": [{"role": "user", "content": "Hello"}]}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/chat/completions", data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer


def test_the_usage_log_path_comes_from_the_environment_or_beside_the_file(
        tmp_path: Path) -> None:
    init(tmp_path / "conf")
    config_file = tmp_path / "conf" / "routes.yaml"
    beside = load_config(config_file, environ={})
    assert beside.storage.sqlite_path == (tmp_path / "conf" / "data" / "anyrouter.db")
    service = load_config(config_file,
                          environ={"ANYROUTER_SQLITE_PATH": "/var/lib/anyrouter/anyrouter.db"})
    assert service.storage.sqlite_path == Path("/var/lib/anyrouter/anyrouter.db")
