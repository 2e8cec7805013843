"""output_cap: the worst-case output of a request, and the cap written on the upstream body."""

from __future__ import annotations

from typing import Any

import pytest

from anyrouter_proxy.config.model import ProviderConfig, Route
from anyrouter_proxy.errors import InvalidRequest
from anyrouter_proxy.output_cap import (
    EFFORT_BUDGETS,
    MAX_CAP,
    OutputCap,
    cap_anthropic_body,
    cap_openai_body,
    cap_upstream_body,
    output_cap,
)
from anyrouter_proxy.providers.anthropic import AnthropicPassthrough, OpenAIViaAnthropic
from anyrouter_proxy.providers.base import CallContext
from anyrouter_proxy.providers.openai import AnthropicViaOpenAI, OpenAIPassthrough
from anyrouter_proxy.types import CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES

USER = [{"role": "user", "content": "hi"}]


def chat_cap(body: dict[str, Any], model_limit: int | None = None,
             endpoint: str = CHAT) -> OutputCap:
    return output_cap(endpoint, {"model": "m", "messages": USER, **body},
                      model_limit=model_limit, default_max_tokens=4096)


def messages_cap(body: dict[str, Any], model_limit: int | None = None) -> OutputCap:
    return output_cap(MESSAGES, {"model": "m", "messages": USER, **body},
                      model_limit=model_limit, default_max_tokens=4096)


# --- what is reserved ----------------------------------------------------------------------

def test_no_cap_is_the_server_default() -> None:
    assert chat_cap({}) == OutputCap(4096, 1, "max_tokens")


def test_no_cap_is_the_models_own_limit_when_it_has_one() -> None:
    assert chat_cap({}, model_limit=16384).tokens == 16384


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens", "max_output_tokens"])
def test_each_cap_field_is_read(name: str) -> None:
    assert chat_cap({name: 123}).tokens == 123


def test_the_largest_of_several_cap_fields_is_reserved() -> None:
    """vLLM and OpenAI's newer models apply max_completion_tokens over max_tokens."""
    cap = chat_cap({"max_tokens": 1, "max_completion_tokens": 8000})
    assert cap.tokens == 8000 and cap.field == "max_completion_tokens"


def test_a_cap_above_the_models_limit_is_lowered_to_it() -> None:
    assert chat_cap({"max_tokens": 100_000}, model_limit=8192).tokens == 8192


def test_a_huge_integer_cap_is_bounded() -> None:
    assert chat_cap({"max_tokens": 10**30}).tokens == MAX_CAP


@pytest.mark.parametrize(("body", "choices"), [
    ({"n": 8}, 8), ({"best_of": 5}, 5), ({"n": 2, "best_of": 6}, 6), ({"n": None}, 1)])
def test_every_choice_is_reserved(body: dict[str, Any], choices: int) -> None:
    cap = chat_cap({"max_tokens": 100, **body}, endpoint=COMPLETIONS)
    assert cap.choices == choices and cap.total == 100 * choices


@pytest.mark.parametrize("effort", sorted(EFFORT_BUDGETS))
def test_reasoning_effort_without_a_cap_adds_its_budget(effort: str) -> None:
    cap = chat_cap({"reasoning_effort": effort})
    assert cap.tokens == 4096 + EFFORT_BUDGETS[effort]
    assert cap.field == "max_completion_tokens"  # OpenAI's reasoning models want it


def test_legacy_completions_are_capped_with_max_tokens() -> None:
    assert chat_cap({"reasoning_effort": "low"}, endpoint=COMPLETIONS).field == "max_tokens"


def test_high_effort_reserves_what_the_anthropic_translation_asks_for() -> None:
    assert chat_cap({"reasoning_effort": "high"}).tokens == 20_480


def test_responses_style_reasoning_effort_counts_too() -> None:
    assert chat_cap({"reasoning": {"effort": "medium"}}).tokens == 4096 + 8192


def test_an_unknown_effort_is_taken_as_the_largest_budget() -> None:
    assert chat_cap({"reasoning_effort": "ultra"}).tokens == 4096 + max(EFFORT_BUDGETS.values())


def test_effort_none_asks_for_no_reasoning() -> None:
    assert chat_cap({"reasoning_effort": "none"}) == OutputCap(4096, 1, "max_tokens")


def test_a_thinking_budget_without_a_cap_is_added_to_the_default() -> None:
    """What the OpenAI->Anthropic translation sends: budget + default_max_tokens."""
    cap = chat_cap({"thinking": {"type": "enabled", "budget_tokens": 60_000}})
    assert cap.tokens == 64_096


def test_an_explicit_cap_includes_reasoning() -> None:
    assert chat_cap({"max_completion_tokens": 3000, "reasoning_effort": "high"}).tokens == 3000


def test_the_models_limit_bounds_a_grown_default() -> None:
    assert chat_cap({"reasoning_effort": "high"}, model_limit=8192).tokens == 8192


def test_anthropic_max_tokens_is_the_cap() -> None:
    cap = messages_cap({"max_tokens": 700, "thinking": {"type": "enabled",
                                                        "budget_tokens": 600}})
    assert cap == OutputCap(700, 1, "max_completion_tokens")


def test_anthropic_n_is_not_a_choice_count() -> None:
    assert messages_cap({"max_tokens": 10, "n": 8}).total == 10


def test_embeddings_have_no_output() -> None:
    assert output_cap(EMBEDDINGS, {"input": "x", "max_tokens": 5}, model_limit=None,
                      default_max_tokens=4096).total == 0


# --- what is refused -----------------------------------------------------------------------

BAD_CAPS = [16000.0, "100", True, False, 0, -1, 1e9, [], {}]


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens", "max_output_tokens",
                                  "n", "best_of"])
@pytest.mark.parametrize("value", BAD_CAPS)
def test_a_cap_that_is_not_a_positive_integer_is_a_400(name: str, value: Any) -> None:
    with pytest.raises(InvalidRequest) as err:
        chat_cap({name: value})
    assert err.value.status == 400 and err.value.code == "invalid_request"
    assert err.value.param == name


@pytest.mark.parametrize("value", [*BAD_CAPS, None])
def test_anthropic_max_tokens_must_be_a_positive_integer(value: Any) -> None:
    with pytest.raises(InvalidRequest) as err:
        messages_cap({"max_tokens": value})
    assert err.value.param == "max_tokens"


@pytest.mark.parametrize("value", [60000.0, "5", 0, True])
def test_a_thinking_budget_must_be_a_positive_integer(value: Any) -> None:
    thinking = {"type": "enabled", "budget_tokens": value}
    for check in (lambda: chat_cap({"thinking": thinking}),
                  lambda: messages_cap({"max_tokens": 9000, "thinking": thinking})):
        with pytest.raises(InvalidRequest) as err:
            check()
        assert err.value.param == "thinking.budget_tokens"


def test_a_reasoning_max_tokens_must_be_a_positive_integer() -> None:
    with pytest.raises(InvalidRequest) as err:
        chat_cap({"reasoning": {"max_tokens": 2.5}})
    assert err.value.param == "reasoning.max_tokens"


# --- the cap on the upstream body ----------------------------------------------------------

def test_a_body_without_a_cap_gets_one() -> None:
    body: dict[str, Any] = {"model": "m"}
    cap_openai_body(body, OutputCap(4096))
    assert body["max_tokens"] == 4096


def test_reasoning_bodies_get_max_completion_tokens() -> None:
    body: dict[str, Any] = {"reasoning_effort": "high"}
    cap_openai_body(body, OutputCap(20480, 1, "max_completion_tokens"))
    assert body == {"reasoning_effort": "high", "max_completion_tokens": 20480}


def test_openais_own_api_gets_max_completion_tokens() -> None:
    body: dict[str, Any] = {}
    cap_openai_body(body, OutputCap(100), field="max_completion_tokens")
    assert body == {"max_completion_tokens": 100}


def test_every_cap_field_above_the_reservation_is_clamped() -> None:
    body: dict[str, Any] = {"max_tokens": 1, "max_completion_tokens": 8000,
                            "max_output_tokens": 9000.0, "n": 3}
    cap_openai_body(body, OutputCap(500, 2))
    assert body == {"max_tokens": 1, "max_completion_tokens": 500, "max_output_tokens": 500,
                    "n": 2}


def test_anthropic_max_tokens_is_clamped_and_added() -> None:
    body: dict[str, Any] = {"max_tokens": 64_096}
    cap_anthropic_body(body, 8192)
    assert body == {"max_tokens": 8192}
    empty: dict[str, Any] = {}
    cap_anthropic_body(empty, 100)
    assert empty == {"max_tokens": 100}


def test_a_thinking_budget_shrinks_below_a_lowered_max_tokens() -> None:
    thinking = {"type": "enabled", "budget_tokens": 60_000}
    body: dict[str, Any] = {"max_tokens": 64_096, "thinking": thinking}
    cap_anthropic_body(body, 8192)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 8191}
    assert thinking["budget_tokens"] == 60_000  # the client's own dict is left alone


def test_a_cap_within_the_reservation_is_left_alone() -> None:
    body: dict[str, Any] = {"max_tokens": 50, "thinking": {"type": "enabled",
                                                           "budget_tokens": 9000}}
    cap_anthropic_body(body, 100)
    assert body == {"max_tokens": 50, "thinking": {"type": "enabled", "budget_tokens": 9000}}


@pytest.mark.parametrize(("path", "field"), [("/chat/completions", "max_completion_tokens"),
                                             ("/completions", "max_tokens"),
                                             ("/responses", "max_output_tokens"),
                                             ("/messages", "max_tokens")])
def test_the_guard_caps_by_wire(path: str, field: str) -> None:
    body: dict[str, Any] = {}
    cap_upstream_body(path, body, OutputCap(77, 1, "max_completion_tokens"))
    assert body == {field: 77}


def test_the_guard_leaves_embeddings_alone() -> None:
    body: dict[str, Any] = {"input": "x"}
    cap_upstream_body("/embeddings", body, OutputCap(77))
    assert body == {"input": "x"}


# --- the exchanges' builds -----------------------------------------------------------------

def context(base_url: str, kind: str, cap: OutputCap) -> CallContext:
    provider = ProviderConfig(id="p", kind=kind, base_url=base_url, api_key="k")
    return CallContext("gen-1", "m", 0, provider, Route(provider="p", model="up", priority=0),
                       False, False, 4096, output=cap)


@pytest.mark.parametrize(("base_url", "field"), [
    ("https://api.openai.com/v1", "max_completion_tokens"),
    ("http://vllm.internal:8000/v1", "max_tokens")])
def test_openai_builds_add_the_field_the_upstream_takes(base_url: str, field: str) -> None:
    call = OpenAIPassthrough(CHAT).build({"model": "m", "messages": USER},
                                         context(base_url, "openai", OutputCap(4096)))
    other = "max_tokens" if field == "max_completion_tokens" else "max_completion_tokens"
    assert call.body[field] == 4096 and other not in call.body


def test_anthropic_builds_clamp_max_tokens_and_the_thinking_budget() -> None:
    body = {"model": "m", "messages": USER, "max_tokens": 64_000,
            "thinking": {"type": "enabled", "budget_tokens": 60_000}}
    call = AnthropicPassthrough().build(body, context("http://a/v1", "anthropic",
                                                      OutputCap(8192)))
    assert call.body["max_tokens"] == 8192
    assert call.body["thinking"]["budget_tokens"] == 8191


def test_the_openai_to_anthropic_translation_stays_within_the_reservation() -> None:
    body = {"model": "m", "messages": USER, "reasoning_effort": "high"}
    call = OpenAIViaAnthropic().build(body, context("http://a/v1", "anthropic",
                                                    OutputCap(8192)))
    assert call.body["max_tokens"] == 8192
    assert call.body["thinking"] == {"type": "enabled", "budget_tokens": 8191}


def test_the_anthropic_to_openai_translation_stays_within_the_reservation() -> None:
    body = {"model": "m", "messages": USER, "max_tokens": 64_000,
            "thinking": {"type": "enabled", "budget_tokens": 20_000}}
    call = AnthropicViaOpenAI().build(body, context("http://o/v1", "openai", OutputCap(8192)))
    assert call.body["max_completion_tokens"] == 8192 and "max_tokens" not in call.body
