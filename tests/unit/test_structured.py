"""response_format on Anthropic requests (structured.py), the response tool folded back
into the answer (structured_answer.py), and Anthropic output formats for OpenAI upstreams
(json_format.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from anyrouter_proxy.errors import InvalidRequest
from anyrouter_proxy.providers.anthropic_stream import AnthropicToOpenAIStream
from anyrouter_proxy.providers.anthropic_translate import (
    anthropic_to_openai_response,
    translate_openai_request,
)
from anyrouter_proxy.providers.json_format import openai_response_format, strict_ready
from anyrouter_proxy.providers.structured import (
    JSON_OBJECT_TOOL,
    OPEN_OBJECT,
    anthropic_structured_output,
)

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"},
                                           "degrees": {"type": "integer"}},
          "required": ["city", "degrees"], "additionalProperties": False}
WEATHER_FORMAT = {"type": "json_schema",
                  "json_schema": {"name": "Weather", "schema": SCHEMA, "strict": True}}
LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}}}}
USER = {"role": "user", "content": "Weather in Paris?"}


def translate(mode: str = "tool", **body: Any) -> tuple[dict[str, Any], str | None]:
    request = translate_openai_request({"messages": [USER], **body}, upstream_model="claude",
                                       default_max_tokens=1024, structured_output=mode)
    return request.body, request.response_tool


# --- the request --------------------------------------------------------------------------

def test_json_schema_is_a_forced_tool_with_the_schema() -> None:
    out, tool = translate(response_format=WEATHER_FORMAT)
    assert tool == "Weather"
    assert out["tools"] == [{"name": "Weather", "description": out["tools"][0]["description"],
                             "input_schema": SCHEMA}]
    assert out["tool_choice"] == {"type": "tool", "name": "Weather",
                                  "disable_parallel_tool_use": True}
    assert "output_config" not in out


def test_the_schema_description_leads_the_tool_description() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "W", "description": "A forecast",
                                                  "schema": SCHEMA}}
    out, _ = translate(response_format=fmt)
    assert out["tools"][0]["description"].startswith("A forecast\n\n")


def test_json_object_is_a_forced_tool_with_an_open_schema() -> None:
    for mode in ("tool", "native"):
        out, tool = translate(mode, response_format={"type": "json_object"})
        assert tool == JSON_OBJECT_TOOL
        assert out["tools"][0]["input_schema"] == OPEN_OBJECT
        assert out["tool_choice"]["name"] == JSON_OBJECT_TOOL


def test_native_mode_sends_output_config_format_and_no_tool() -> None:
    out, tool = translate("native", response_format=WEATHER_FORMAT)
    assert tool is None
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    assert "tools" not in out and "tool_choice" not in out


def test_native_mode_uses_the_tool_for_a_schema_that_is_not_strict() -> None:
    for strict in (False, None):
        fmt = {"type": "json_schema", "json_schema": {"name": "Weather", "schema": SCHEMA,
                                                      "strict": strict}}
        out, tool = translate("native", response_format=fmt)
        assert tool == "Weather" and "output_config" not in out
        assert out["tools"][0]["input_schema"] == SCHEMA


def test_text_format_and_no_format_add_nothing() -> None:
    bodies: list[dict[str, Any]] = [{}, {"response_format": {"type": "text"}}]
    for body in bodies:
        out, tool = translate(**body)
        assert tool is None and set(out) == {"model", "messages", "max_tokens"}


def test_a_schema_without_type_is_an_object_and_a_non_object_schema_is_refused() -> None:
    loose = {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "properties": {"a": {"type": "string"}}}}}
    out, _ = translate(response_format=loose)
    assert out["tools"][0]["input_schema"]["type"] == "object"
    array = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}}
    with pytest.raises(InvalidRequest) as err:
        translate(response_format=array)
    assert (err.value.code, err.value.param) == (
        "unsupported_parameter", "response_format.json_schema.schema.type")
    strict = {**array, "json_schema": {**array["json_schema"], "strict": True}}
    out, _ = translate("native", response_format=strict)  # native: Anthropic decides
    assert out["output_config"]["format"]["schema"] == {"type": "array"}


def test_client_tools_stay_and_any_tool_may_answer() -> None:
    out, tool = translate(response_format=WEATHER_FORMAT, tools=[LOOKUP])
    assert [t["name"] for t in out["tools"]] == ["lookup", "Weather"]
    assert out["tool_choice"] == {"type": "any"}
    assert tool == "Weather"


def test_parallel_tool_calls_false_is_kept_with_client_tools() -> None:
    out, _ = translate(response_format=WEATHER_FORMAT, tools=[LOOKUP],
                       parallel_tool_calls=False)
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


def test_tool_choice_none_forces_the_response_tool_and_keeps_the_tools() -> None:
    out, _ = translate(response_format=WEATHER_FORMAT, tools=[LOOKUP], tool_choice="none")
    assert [t["name"] for t in out["tools"]] == ["lookup", "Weather"]
    assert out["tool_choice"]["type"] == "tool" and out["tool_choice"]["name"] == "Weather"


@pytest.mark.parametrize("choice", ["required", {"type": "function",
                                                 "function": {"name": "lookup"}}])
def test_a_required_tool_call_is_the_answer_and_no_response_tool_is_added(
        choice: Any) -> None:
    out, tool = translate(response_format=WEATHER_FORMAT, tools=[LOOKUP], tool_choice=choice)
    assert tool is None
    assert [t["name"] for t in out["tools"]] == ["lookup"]


def test_a_name_taken_by_a_client_tool_gets_a_suffix() -> None:
    clash = {"type": "function", "function": {"name": "Weather"}}
    out, tool = translate(response_format=WEATHER_FORMAT, tools=[clash])
    assert tool == "Weather_2"
    assert [t["name"] for t in out["tools"]] == ["Weather", "Weather_2"]


def test_a_name_is_made_of_tool_name_characters() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "my schema/v2" + "x" * 80}}
    _, tool = translate(response_format=fmt)
    assert tool is not None and len(tool) == 64 and tool.startswith("my_schema_v2x")


def test_thinking_uses_auto_and_an_instruction_instead_of_forcing() -> None:
    out, tool = translate(response_format=WEATHER_FORMAT, reasoning_effort="low",
                          messages=[{"role": "system", "content": "Be brief"}, USER])
    assert out["thinking"]["type"] == "enabled"
    assert out["tool_choice"] == {"type": "auto"}
    assert out["system"][0] == {"type": "text", "text": "Be brief"}
    assert "`Weather` tool" in out["system"][-1]["text"]
    assert tool == "Weather"


@pytest.mark.parametrize(("fmt", "param"), [
    ("json", "response_format"),
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"schema": SCHEMA}},
     "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": []}},
     "response_format.json_schema.schema"),
])
def test_bad_formats_are_invalid_requests_naming_the_field(fmt: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        translate(response_format=fmt)
    assert err.value.param == param


def test_the_additions_are_a_pure_function_of_the_request() -> None:
    request = {"model": "m", "messages": [], "tools": [{"name": "a", "input_schema": {}}]}
    before = json.dumps(request)
    added = anthropic_structured_output(WEATHER_FORMAT, request)
    assert json.dumps(request) == before
    assert set(added.fields) == {"tools", "tool_choice"}


# --- the answer ---------------------------------------------------------------------------

def message(*blocks: dict[str, Any], stop: str = "tool_use") -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "content": list(blocks),
            "stop_reason": stop, "usage": {"input_tokens": 10, "output_tokens": 6}}


def call(name: str, value: dict[str, Any], tool_id: str = "toolu_1") -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_id, "name": name, "input": value}


def to_openai(resp: dict[str, Any], tool: str | None = "Weather") -> dict[str, Any]:
    return anthropic_to_openai_response(resp, gen_id="gen-1", model="anthropic/c", created=1,
                                        response_tool=tool)


def test_the_response_tool_call_is_the_content() -> None:
    out = to_openai(message(call("Weather", {"city": "Paris", "degrees": 21})))
    choice = out["choices"][0]
    assert json.loads(choice["message"]["content"]) == {"city": "Paris", "degrees": 21}
    assert "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] == 6


def test_text_beside_the_response_tool_is_dropped_and_kept_without_it() -> None:
    out = to_openai(message({"type": "text", "text": "Let me answer."},
                            call("Weather", {"city": "Oslo"})))
    assert out["choices"][0]["message"]["content"] == '{"city": "Oslo"}'
    out = to_openai(message({"type": "text", "text": "No tool."}, stop="end_turn"))
    assert out["choices"][0]["message"]["content"] == "No tool."


def test_client_tool_calls_stay_tool_calls() -> None:
    out = to_openai(message(call("lookup", {"q": "x"})))
    choice = out["choices"][0]
    assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["lookup"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None


def test_without_a_response_tool_a_call_of_that_name_is_a_tool_call() -> None:
    out = to_openai(message(call("Weather", {"city": "Oslo"})), tool=None)
    assert out["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "Weather"


# --- the stream ---------------------------------------------------------------------------

def events(*blocks: tuple[str, list[str]], stop: str = "tool_use") -> list[dict[str, Any]]:
    """Anthropic stream events: per block (kind, fragments); kind "text" or a tool name."""
    out: list[dict[str, Any]] = [{"type": "message_start", "message": {
        "id": "msg_1", "usage": {"input_tokens": 10, "output_tokens": 1}}}]
    for index, (kind, pieces) in enumerate(blocks):
        block = {"type": "text", "text": ""} if kind == "text" else {
            "type": "tool_use", "id": f"toolu_{index}", "name": kind, "input": {}}
        out.append({"type": "content_block_start", "index": index, "content_block": block})
        for piece in pieces:
            delta = {"type": "text_delta", "text": piece} if kind == "text" else {
                "type": "input_json_delta", "partial_json": piece}
            out.append({"type": "content_block_delta", "index": index, "delta": delta})
        out.append({"type": "content_block_stop", "index": index})
    out.append({"type": "message_delta", "delta": {"stop_reason": stop},
                "usage": {"output_tokens": 9}})
    out.append({"type": "message_stop"})
    return out


def run(stream_events: list[dict[str, Any]], tool: str | None = "Weather"
        ) -> tuple[AnthropicToOpenAIStream, list[dict[str, Any]]]:
    stream = AnthropicToOpenAIStream(gen_id="gen-1", model="anthropic/c", created=1,
                                     include_usage=True, response_tool=tool)
    chunks = [c for e in stream_events for c in stream.feed(e["type"], e)]
    return stream, chunks + stream.finish()


def deltas(chunks: list[dict[str, Any]], name: str) -> list[Any]:
    return [c["choices"][0]["delta"][name] for c in chunks
            if c["choices"] and name in c["choices"][0]["delta"]]


def test_stream_relays_the_tool_input_fragments_as_content() -> None:
    stream, chunks = run(events(("Weather", ['{"ci', 'ty": "Pa', 'ris"}'])))
    assert deltas(chunks, "content") == ["", '{"ci', 'ty": "Pa', 'ris"}']
    assert deltas(chunks, "tool_calls") == []
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert stream.finish_reason == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 9
    assert stream.output_tokens > 0  # the estimate still counts the tool's input


def test_stream_a_tool_without_input_is_an_empty_object() -> None:
    _, chunks = run(events(("Weather", [])))
    assert "".join(deltas(chunks, "content")) == "{}"


def test_stream_text_is_held_and_dropped_when_the_tool_comes() -> None:
    _, chunks = run(events(("text", ["I will ", "answer."]), ("Weather", ['{"a": 1}'])))
    assert deltas(chunks, "content") == ["", '{"a": 1}']


def test_stream_text_is_sent_at_the_end_when_the_tool_never_comes() -> None:
    stream, chunks = run(events(("text", ["plain ", "text"]), stop="end_turn"))
    assert "".join(deltas(chunks, "content")) == "plain text"
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert chunks.index(finish[0]) > max(i for i, c in enumerate(chunks) if c["choices"]
                                         and c["choices"][0]["delta"].get("content"))
    assert stream.finish_reason == "stop"


def test_stream_client_tools_keep_their_calls_renumbered() -> None:
    stream, chunks = run(events(("Weather", ['{"a": 1}']), ("lookup", ['{"q":', ' "x"}']),
                                ("Weather", ['{"a": 2}'])))
    calls = [c for d in deltas(chunks, "tool_calls") for c in d]
    assert calls[0]["index"] == 0 and calls[0]["function"]["name"] == "lookup"
    assert "".join(c["function"]["arguments"] for c in calls) == '{"q": "x"}'
    assert "".join(deltas(chunks, "content")) == '{"a": 1}'  # a second call is dropped
    assert stream.finish_reason == "tool_calls"


def test_stream_without_a_response_tool_is_unchanged() -> None:
    _, chunks = run(events(("Weather", ['{"a": 1}'])), tool=None)
    assert deltas(chunks, "tool_calls")[0][0]["function"]["name"] == "Weather"


# --- Anthropic output formats for OpenAI upstreams ----------------------------------------

def test_output_config_format_is_a_strict_json_schema() -> None:
    schema = {**SCHEMA, "title": "Weather"}
    fmt = openai_response_format({"output_config": {"format": {"type": "json_schema",
                                                               "schema": schema}}})
    assert fmt == {"type": "json_schema",
                   "json_schema": {"name": "Weather", "schema": schema, "strict": True}}


def test_the_beta_output_format_works_too_and_open_schemas_are_not_strict() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}},
              "additionalProperties": False}
    fmt = openai_response_format({"output_format": {"type": "json_schema", "schema": schema}})
    assert fmt is not None
    assert fmt["json_schema"]["name"] == "response" and fmt["json_schema"]["strict"] is False


def test_no_format_is_none_and_a_bad_one_is_refused() -> None:
    assert openai_response_format({"output_config": {"effort": "low"}}) is None
    with pytest.raises(InvalidRequest) as err:
        openai_response_format({"output_config": {"format": {"type": "xml"}}})
    assert err.value.param == "output_config.format.type"


@pytest.mark.parametrize(("schema", "ready"), [
    (SCHEMA, True),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}, False),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}, "required": ["a"],
      "additionalProperties": False,
      "$defs": {"A": {"type": "object", "properties": {"b": {"type": "string"}},
                      "required": [], "additionalProperties": False}}}, False),
    ({"type": "object", "properties": {}, "required": [{"x": 1}],
      "additionalProperties": False}, False),
    ({"type": "array", "items": SCHEMA}, True),
])
def test_strict_ready_follows_openais_object_rules(schema: dict[str, Any], ready: bool) -> None:
    assert strict_ready(schema) is ready


def test_strict_ready_survives_deep_schemas() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(5000):
        deep = {"type": "array", "items": deep}
    assert strict_ready(deep) is False
