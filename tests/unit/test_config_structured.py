"""`structured_output` on providers and routes: its default, the route's override, and the
values the schema accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from anyrouter_proxy.config.loader import ConfigError, parse_config
from anyrouter_proxy.config.model import Config, Pricing
from anyrouter_proxy.providers.base import CallContext


def config(tmp_path: Path, provider: str = "", route: str = "") -> Config:
    text = f"""\
version: 1
providers:
  claude: {{kind: anthropic, base_url: "https://api.anthropic.com/v1", api_key: k{provider}}}
models:
  anthropic/claude:
    pricing: {{prompt: 3, completion: 15}}
    routes:
      - {{provider: claude, model: claude-x{route}}}
"""
    return parse_config(text, source="routes.yaml", base_dir=tmp_path, environ={})


def mode(cfg: Config) -> str:
    route = cfg.models["anthropic/claude"].routes[0]
    ctx = CallContext("gen-1", "anthropic/claude", 1, cfg.providers["claude"], route,
                      False, False, pricing=Pricing())
    return ctx.structured_output


def test_the_default_is_tool(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert cfg.providers["claude"].structured_output == "tool"
    assert cfg.models["anthropic/claude"].routes[0].structured_output is None
    assert mode(cfg) == "tool"


def test_the_provider_sets_it_and_a_route_overrides_it(tmp_path: Path) -> None:
    assert mode(config(tmp_path, provider=", structured_output: native")) == "native"
    assert mode(config(tmp_path, provider=", structured_output: native",
                       route=", structured_output: tool")) == "tool"
    assert mode(config(tmp_path, route=", structured_output: native")) == "native"


@pytest.mark.parametrize(("provider", "route", "path"), [
    (", structured_output: json", "", "providers.claude.structured_output"),
    ("", ", structured_output: auto", "models.anthropic/claude.routes[0].structured_output"),
])
def test_other_values_are_config_errors(tmp_path: Path, provider: str, route: str,
                                        path: str) -> None:
    with pytest.raises(ConfigError) as info:
        config(tmp_path, provider, route)
    assert [p.path for p in info.value.problems] == [path]


def test_other_kinds_do_not_take_it(tmp_path: Path) -> None:
    text = """\
version: 1
providers:
  gpt: {kind: openai, base_url: "https://api.openai.com/v1", api_key: k,
        structured_output: native}
  claude: {kind: anthropic, base_url: "https://api.anthropic.com/v1", api_key: k}
models:
  openai/gpt:
    pricing: {prompt: 1, completion: 1}
    routes:
      - {provider: gpt, model: gpt-x, structured_output: tool}
      - {provider: claude, model: claude-x, structured_output: native}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="routes.yaml", base_dir=tmp_path, environ={})
    found = {p.path: p.message for p in info.value.problems}
    assert set(found) == {"providers.gpt.structured_output",
                          "models.openai/gpt.routes[0].structured_output"}
    assert "kind openai" in found["models.openai/gpt.routes[0].structured_output"]
