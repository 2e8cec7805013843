"""The Responses API's config fields: providers' native_responses (openai kind only) and
keys' admin, both false unless written."""

from __future__ import annotations

from pathlib import Path

import pytest

from anyrouter_proxy.config.loader import ConfigError, load_config

CONFIG = """\
version: 1
providers:
  up: {{kind: {kind}, base_url: "https://up.example/v1", api_key: k{native}}}
models:
  m/x: {{pricing: {{prompt: 1, completion: 1}}, routes: [{{provider: up, model: x}}]}}
keys:
  root: {{key_sha256: "{digest}"{admin}}}
  plain: {{key_sha256: "{other}"}}
"""


def load(tmp_path: Path, kind: str = "openai", native: str = "", admin: str = "") -> object:
    path = tmp_path / "routes.yaml"
    path.write_text(CONFIG.format(kind=kind, native=native, admin=admin, digest="a" * 64,
                                  other="b" * 64))
    return load_config(path, environ={})


def test_defaults_are_off(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert config.providers["up"].native_responses is False  # type: ignore[attr-defined]
    assert config.keys["root"].admin is False  # type: ignore[attr-defined]


def test_native_responses_and_admin_load(tmp_path: Path) -> None:
    config = load(tmp_path, native=", native_responses: true", admin=", admin: true")
    assert config.providers["up"].native_responses is True  # type: ignore[attr-defined]
    assert config.keys["root"].admin is True  # type: ignore[attr-defined]
    assert config.keys["plain"].admin is False  # type: ignore[attr-defined]


def test_native_responses_is_for_the_openai_kind_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, kind="anthropic", native=", native_responses: true")
    assert "providers.up.kind: 'openai' was expected" in str(refused.value)
