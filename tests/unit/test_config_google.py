"""The gemini and vertex kinds in routes.yaml: their fields, defaults, conditional
requirements, and where a vertex provider's credentials are (no_credentials otherwise)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from anyrouter_proxy.config.google_credentials import default_credentials_found
from anyrouter_proxy.config.loader import ConfigError, parse_config
from anyrouter_proxy.config.model import Config


def load(provider: dict[str, Any], base_dir: Path | None = None,
         environ: dict[str, str] | None = None) -> Config:
    text = yaml.safe_dump({"version": 1, "providers": {"google": provider}, "models": {
        "g/m": {"pricing": {"prompt": 1, "completion": 1},
                "routes": [{"provider": "google", "model": "gemini-2.5-flash"}]}}})
    return parse_config(text, base_dir=base_dir, environ=environ or {})


def problems(provider: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        load(provider)
    return {p.path: p.message for p in caught.value.problems}


def test_gemini_defaults_to_googles_endpoint() -> None:
    provider = load({"kind": "gemini", "api_key": "AIza-key"}).providers["google"]
    assert provider.base_url == "https://generativelanguage.googleapis.com/v1beta"
    assert provider.has_credentials
    assert not load({"kind": "gemini", "api_key": ""}).providers["google"].has_credentials


def test_gemini_base_url_may_be_overridden() -> None:
    provider = load({"kind": "gemini", "api_key": "k",
                     "base_url": "https://proxy.internal/gemini/v1beta/"}).providers["google"]
    assert provider.base_url == "https://proxy.internal/gemini/v1beta"


@pytest.mark.parametrize(("location", "base_url"), [
    ("us-central1", "https://us-central1-aiplatform.googleapis.com/v1"),
    ("europe-west4", "https://europe-west4-aiplatform.googleapis.com/v1"),
    ("global", "https://aiplatform.googleapis.com/v1"),
])
def test_vertex_base_url_comes_from_its_location(location: str, base_url: str,
                                                 tmp_path: Path) -> None:
    (tmp_path / "sa.json").write_text("{}")
    provider = load({"kind": "vertex", "project": "p", "location": location,
                     "credentials_file": "sa.json"}, tmp_path).providers["google"]
    assert provider.base_url == base_url
    assert (provider.project, provider.location) == ("p", location)
    assert provider.credentials_file == str(tmp_path / "sa.json")  # relative to the config
    assert provider.has_credentials


def test_required_fields_per_kind() -> None:
    assert "'api_key' is a required property" in problems({"kind": "gemini"})["providers.google"]
    found = problems({"kind": "vertex"})["providers.google"]
    assert "'project' is a required property" in found or "'location'" in found


@pytest.mark.parametrize(("provider", "path", "message"), [
    ({"kind": "vertex", "project": "p", "location": "us-central1", "api_key": "k"},
     "providers.google.api_key", "authenticates with Google OAuth"),
    ({"kind": "openai", "base_url": "https://x", "project": "p"}, "providers.google.project",
     "only kind vertex reads it"),
    ({"kind": "gemini", "api_key": "k", "credentials_file": "a.json"},
     "providers.google.credentials_file", "only kind vertex reads it"),
    ({"kind": "vertex", "project": "p", "location": "US Central"},
     "providers.google.location", "not in the expected form"),
])
def test_misplaced_and_malformed_fields(provider: dict[str, Any], path: str,
                                        message: str) -> None:
    assert message in problems(provider)[path]


@pytest.mark.parametrize("credentials_file", ["", "missing.json"])
def test_a_missing_credentials_file_is_no_credentials(credentials_file: str,
                                                      tmp_path: Path) -> None:
    provider = load({"kind": "vertex", "project": "p", "location": "us-central1",
                     "credentials_file": credentials_file}, tmp_path).providers["google"]
    assert provider.credentials_file == ""
    assert not provider.has_credentials


def test_application_default_credentials_where_google_looks(tmp_path: Path) -> None:
    vertex = {"kind": "vertex", "project": "p", "location": "us-central1"}
    assert not load(vertex, environ={}).providers["google"].has_credentials
    key = tmp_path / "key.json"
    key.write_text("{}")
    adc = load(vertex, environ={"GOOGLE_APPLICATION_CREDENTIALS": str(key)})
    assert adc.providers["google"].credentials_file is None  # found: google-auth reads it
    assert adc.providers["google"].has_credentials
    gcloud = tmp_path / "home" / ".config" / "gcloud"
    gcloud.mkdir(parents=True)
    assert not default_credentials_found({"HOME": str(tmp_path / "home")})
    (gcloud / "application_default_credentials.json").write_text("{}")
    assert default_credentials_found({"HOME": str(tmp_path / "home")})
    assert not default_credentials_found({"GOOGLE_APPLICATION_CREDENTIALS": str(
        tmp_path / "nope.json"), "HOME": str(tmp_path / "home")})  # named, not there
    assert default_credentials_found({"K_SERVICE": "my-service"})  # Cloud Run's metadata


def test_the_schema_documents_the_new_fields() -> None:
    from anyrouter_proxy.config.loader import schema

    provider = schema()["$defs"]["provider"]["properties"]
    assert {"gemini", "vertex"} <= set(provider["kind"]["enum"])
    for name in ("project", "location", "credentials_file"):
        assert provider[name]["description"].startswith("kind vertex")


def test_example_snippets_load(tmp_path: Path) -> None:
    (tmp_path / "vertex-sa.json").write_text("{}")
    text = textwrap.dedent("""\
        version: 1
        providers:
          gemini:
            kind: gemini
            api_key: ${GEMINI_API_KEY:-}
          vertex:
            kind: vertex
            project: my-project
            location: us-central1
            credentials_file: vertex-sa.json
        models:
          google/gemini-2.5-flash:
            pricing: {prompt: 0.30, completion: 2.50, cached_prompt: 0.075}
            routes:
              - {provider: gemini, model: gemini-2.5-flash}
              - {provider: vertex, model: gemini-2.5-flash}
        """)
    config = parse_config(text, base_dir=tmp_path, environ={})
    assert not config.providers["gemini"].has_credentials
    assert config.providers["vertex"].has_credentials
