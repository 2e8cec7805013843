"""Output estimates for answers without a final usage, and the usage a request is charged."""

from __future__ import annotations

import pytest

from anyrouter_proxy.accounting import settled_usage
from anyrouter_proxy.output_estimate import (
    anthropic_content_tokens,
    anthropic_delta_tokens,
    openai_choice_tokens,
    openai_delta_tokens,
    text_tokens,
)
from anyrouter_proxy.types import Usage


@pytest.mark.parametrize(("text", "tokens"), [("", 0), ("a", 1), ("abc", 1), ("abcd", 2),
                                              ("x" * 300, 100), ("日本", 2)])
def test_text_is_three_bytes_a_token_rounded_up(text: str, tokens: int) -> None:
    assert text_tokens(text) == tokens


def test_a_delta_counts_content_reasoning_and_tool_arguments_not_its_role() -> None:
    delta = {"role": "assistant", "content": "abc", "reasoning_content": "abcdef",
             "tool_calls": [{"index": 0, "function": {"name": "get", "arguments": '{"a":1}'}}]}
    assert openai_delta_tokens(delta) == 7  # 3 + 6 + 3 + 7 = 19 chars, the role not


def test_every_content_event_is_at_least_one_token() -> None:
    events = [{"content": "a"}] * 20
    assert sum(openai_delta_tokens(d) for d in events) == 20


def test_chunk_choices_all_count() -> None:
    choices = [{"index": i, "delta": {"content": "abc"}} for i in range(4)]
    assert openai_choice_tokens(choices) == 4


def test_legacy_completion_text_and_whole_messages_count() -> None:
    assert openai_choice_tokens([{"text": "abcdef"}]) == 2
    assert openai_choice_tokens([{"message": {"content": "abcdef", "role": "assistant"}}]) == 2


def test_anthropic_deltas() -> None:
    assert anthropic_delta_tokens({"type": "text_delta", "text": "abcd"}) == 2
    assert anthropic_delta_tokens({"type": "thinking_delta", "thinking": "ab"}) == 1
    assert anthropic_delta_tokens({"type": "input_json_delta", "partial_json": '{"a"'}) == 2
    assert anthropic_delta_tokens({"type": "signature_delta", "signature": "x" * 90}) == 0
    assert anthropic_delta_tokens("odd") == 0


def test_anthropic_message_content() -> None:
    content = [{"type": "text", "text": "abcdef"}, {"type": "thinking", "thinking": "abc"},
               {"type": "tool_use", "id": "t", "name": "get", "input": {"city": "Paris"}}]
    # 2 + 1 + '{"city":"Paris"}' (16 bytes -> 6) + '"get"' (5 -> 2)
    assert anthropic_content_tokens(content) == 11


# --- settled_usage ------------------------------------------------------------------------

def test_the_providers_final_usage_is_charged_as_reported() -> None:
    reported = Usage(prompt_tokens=10, completion_tokens=3)
    assert settled_usage(reported, True, 999, 999) is reported


def test_input_only_usage_gets_the_output_estimated() -> None:
    reported = Usage(prompt_tokens=25, completion_tokens=1, cached_tokens=5, source="partial")
    usage = settled_usage(reported, True, 999, 40)
    assert usage == Usage(prompt_tokens=25, completion_tokens=40, cached_tokens=5,
                          source="partial")


def test_no_usage_is_estimated_from_the_prompt_and_the_output_seen() -> None:
    assert settled_usage(None, True, 120, 7) == Usage(prompt_tokens=120, completion_tokens=7,
                                                      source="estimated")


def test_no_answer_costs_nothing() -> None:
    assert settled_usage(None, False, 120, 7) == Usage(source="none")
