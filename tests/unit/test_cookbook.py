"""The config cookbook (config/cookbook/*.yaml): each snippet passes `anyrouter-proxy check`
on a fresh machine with no environment variables, and each of its providers becomes
available once the variables its keys come from are set."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anyrouter_proxy.config.loader import load_config

REPO = Path(__file__).resolve().parents[2]
COOKBOOK = REPO / "config" / "cookbook"
SNIPPETS = [
    "anthropic.yaml", "azure-classic.yaml", "azure-v1.yaml", "bedrock.yaml", "deepseek.yaml",
    "fireworks.yaml", "gemini.yaml", "groq.yaml", "lmstudio.yaml", "mistral.yaml",
    "ollama.yaml", "openai.yaml", "openrouter.yaml", "together.yaml", "vllm.yaml", "xai.yaml",
]
# Their credentials come from no variable of the file (application default credentials).
CHECKED_ONLY = ["vertex.yaml"]
OPTIONAL_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-\}")
SCHEMA_COMMENT = "# yaml-language-server: $schema=../../anyrouter_proxy/config/schema.json"


def clean_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
            "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.mark.parametrize("name", SNIPPETS + CHECKED_ONLY)
def test_the_snippet_passes_check_with_no_environment(name: str, tmp_path: Path) -> None:
    path = COOKBOOK / name
    result = subprocess.run([sys.executable, "-m", "anyrouter_proxy", "check", "--config",
                             str(path)], cwd=tmp_path, env=clean_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: OK") and result.stderr == ""
    assert path.read_text("utf-8").startswith(SCHEMA_COMMENT + "\n")  # editors find the schema


@pytest.mark.parametrize("name", SNIPPETS)
def test_its_providers_are_available_once_their_variables_are_set(name: str) -> None:
    path = COOKBOOK / name
    names = set(OPTIONAL_VAR.findall(path.read_text("utf-8")))
    config = load_config(path, environ=dict.fromkeys(names, "set-by-the-test"))
    assert config.providers and all(p.has_credentials for p in config.providers.values())
    raw = yaml.safe_load(path.read_text("utf-8"))
    unpriced = [m for m, entry in raw["models"].items() if "pricing" not in entry]
    assert unpriced == []  # every model is priced: a key with credits may reach it
    unset = load_config(path, environ={})
    keyed = {pid for pid, p in unset.providers.items() if not p.has_credentials}
    assert keyed == {pid for pid, p in config.providers.items()
                     if p.api_key == "set-by-the-test"
                     or "set-by-the-test" in p.headers.values()}


def test_the_vertex_snippet_uses_application_default_credentials(tmp_path: Path) -> None:
    path = COOKBOOK / "vertex.yaml"
    assert not load_config(path, environ={}).providers["vertex"].has_credentials
    key = tmp_path / "vertex-sa.json"
    key.write_text("{}")
    config = load_config(path, environ={"GOOGLE_APPLICATION_CREDENTIALS": str(key),
                                        "VERTEX_PROJECT": "p1"})
    vertex = config.providers["vertex"]
    assert vertex.has_credentials and vertex.project == "p1"
    assert vertex.base_url == "https://us-central1-aiplatform.googleapis.com/v1"
