"""Resolving a model id against exact entries and wildcards (config/wildcards.py)."""

from __future__ import annotations

import textwrap

import pytest

from anyrouter_proxy.config.loader import parse_config
from anyrouter_proxy.config.model import Config
from anyrouter_proxy.config.wildcards import glob_may_match, resolve_model, resolves

CONFIG = textwrap.dedent("""\
    version: 1
    providers:
      groq: {kind: openai, base_url: "https://api.groq.com/openai/v1", api_key: k}
      fw: {kind: openai, base_url: "https://api.fireworks.ai/inference/v1", api_key: k}
    models:
      groq/*:
        name: Groq
        pricing: {prompt: 0.59, completion: 0.79}
        routes: [{provider: groq, model: "*"}, {provider: fw, model: "groq-mirror/*", priority: 5}]
      groq/meta-llama/*:
        pricing: {prompt: 0.11, completion: 0.34}
        routes: [{provider: groq, model: "meta-llama/*"}]
      groq/llama-3.1-8b-instant:
        pricing: {prompt: 0.05, completion: 0.08}
        routes: [{provider: groq, model: llama-3.1-8b-instant}]
    """)


@pytest.fixture
def config() -> Config:
    return parse_config(CONFIG, environ={})


def test_wildcards_are_indexed_longest_prefix_first(config: Config) -> None:
    assert [m.id for m in config.wildcards] == ["groq/meta-llama/*", "groq/*"]


def test_a_concrete_model_takes_the_rest_of_the_id(config: Config) -> None:
    model = resolve_model(config, "groq/qwen-qwq-32b")
    assert model is not None
    assert (model.id, model.wildcard, model.name) == ("groq/qwen-qwq-32b", "groq/*", None)
    assert [(r.provider, r.model, r.priority) for r in model.routes] == [
        ("groq", "qwen-qwq-32b", 0), ("fw", "groq-mirror/qwen-qwq-32b", 5)]
    assert model.pricing.prompt == 0.59 and not model.is_wildcard


def test_exact_then_longest_prefix(config: Config) -> None:
    exact = resolve_model(config, "groq/llama-3.1-8b-instant")
    assert exact is config.models["groq/llama-3.1-8b-instant"]
    longer = resolve_model(config, "groq/meta-llama/llama-4-scout")
    assert longer is not None and longer.routes[0].model == "meta-llama/llama-4-scout"
    entry = resolve_model(config, "groq/*")  # the entry itself, for /models/{id}
    assert entry is not None and entry.is_wildcard


@pytest.mark.parametrize("model_id", ["groq/", "groq/a b", "groq/é", "mistral/x", "groq",
                                      "groq/" + "x" * 201, "groq/..", "groq/../x", "groq/-x"])
def test_what_no_wildcard_covers(config: Config, model_id: str) -> None:
    assert resolve_model(config, model_id) is None


@pytest.mark.parametrize(("pattern", "matches"), [
    ("groq/*", True), ("groq/llama-*", True), ("groq/llama-3.3-70b", True), ("g*", True),
    ("*", True), ("openai/*", False), ("gro", False), ("mistral/*", False),
])
def test_globs_that_may_match_ids_under_a_wildcard(pattern: str, matches: bool) -> None:
    assert glob_may_match(pattern, ["groq/*", "anthropic/claude-sonnet-4"]) is matches


def test_resolves_raw_sections() -> None:
    models = {"groq/*": {}, "openai/gpt-4o": {}}
    assert resolves(models, "groq/x") and resolves(models, "openai/gpt-4o")
    assert not resolves(models, "groq/") and not resolves(models, "openai/gpt-5")
