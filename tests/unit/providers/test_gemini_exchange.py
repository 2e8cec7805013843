"""The Gemini-wire exchanges' builds and replies (no I/O): paths and headers of the gemini
and vertex kinds, the output cap guard on their bodies, Anthropic clients, embeddings and
countTokens."""

from __future__ import annotations

import base64
import struct
from typing import Any

import pytest

from anyrouter_proxy.config.model import ProviderConfig, Route
from anyrouter_proxy.errors import InvalidRequest
from anyrouter_proxy.output_cap import OutputCap, cap_upstream_body
from anyrouter_proxy.providers.base import CallContext
from anyrouter_proxy.providers.registry import exchange_for, token_counter_for
from anyrouter_proxy.types import CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES
from tests.fake_gemini import golden

GEMINI = ProviderConfig(id="gemini", kind="gemini", base_url="https://g/v1beta",
                        api_key="AIza-key", headers={"x-goog-user-project": "billing"})
VERTEX = ProviderConfig(id="vertex", kind="vertex", base_url="https://v/v1", project="proj",
                        location="europe-west4")
USER = [{"role": "user", "content": "Hi"}]


def ctx(provider: ProviderConfig = GEMINI, model: str = "gemini-2.5-flash", *,
        stream: bool = False, cap: int | None = 1000) -> CallContext:
    return CallContext("gen-1", "google/flash", 7, provider, Route(provider.id, model, 0),
                       stream, False, output=OutputCap(cap) if cap else None)


@pytest.mark.parametrize(("provider", "model", "stream", "path"), [
    (GEMINI, "gemini-2.5-flash", False, "/models/gemini-2.5-flash:generateContent"),
    (GEMINI, "gemini-2.5-flash", True,
     "/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
    (GEMINI, "tunedModels/my-model-7", False, "/tunedModels/my-model-7:generateContent"),
    (VERTEX, "gemini-2.5-pro", False, "/projects/proj/locations/europe-west4/publishers/"
     "google/models/gemini-2.5-pro:generateContent"),
    (VERTEX, "endpoints/1234", True, "/projects/proj/locations/europe-west4/endpoints/1234:"
     "streamGenerateContent?alt=sse"),
])
def test_paths(provider: ProviderConfig, model: str, stream: bool, path: str) -> None:
    exchange = exchange_for(CHAT, provider.kind)
    assert exchange is not None
    call = exchange.build({"messages": USER}, ctx(provider, model, stream=stream))
    assert call.path == path


def test_headers() -> None:
    gemini = exchange_for(CHAT, "gemini")
    vertex = exchange_for(CHAT, "vertex")
    assert gemini is not None and vertex is not None
    assert gemini.build({"messages": USER}, ctx()).headers == {
        "Content-Type": "application/json", "x-goog-api-key": "AIza-key",
        "x-goog-user-project": "billing"}
    # the gateway adds the bearer token on the way out (google_auth.GoogleTokens)
    assert vertex.build({"messages": USER}, ctx(VERTEX)).headers == {
        "Content-Type": "application/json"}


@pytest.mark.parametrize("model", ["../../v1/other", "gemini:generateContent?key=x",
                                   "/models/x", "a b", "models//x"])
def test_model_names_that_would_leave_their_place_are_refused(model: str) -> None:
    exchange = exchange_for(CHAT, "gemini")
    assert exchange is not None
    with pytest.raises(InvalidRequest) as caught:
        exchange.build({"messages": USER}, ctx(model=model))
    assert caught.value.param == "model"


def test_completions_are_not_served() -> None:
    assert exchange_for(COMPLETIONS, "gemini") is None
    assert exchange_for(COMPLETIONS, "vertex") is None


@pytest.mark.parametrize("path", ["/models/m:generateContent",
                                  "/projects/p/locations/l/publishers/google/models/m:"
                                  "streamGenerateContent?alt=sse"])
def test_the_final_guard_caps_gemini_bodies(path: str) -> None:
    body: dict[str, Any] = {"contents": []}
    cap_upstream_body(path, body, OutputCap(500, 2))
    assert body["generationConfig"] == {"maxOutputTokens": 500}
    body["generationConfig"] = {"maxOutputTokens": 9000, "candidateCount": 4}
    cap_upstream_body(path, body, OutputCap(500, 2))
    assert body["generationConfig"] == {"maxOutputTokens": 500, "candidateCount": 2}
    body["generationConfig"] = {"maxOutputTokens": 100, "candidateCount": 1}
    cap_upstream_body(path, body, OutputCap(500, 2))
    assert body["generationConfig"] == {"maxOutputTokens": 100, "candidateCount": 1}


def test_the_final_guard_leaves_other_gemini_methods_alone() -> None:
    body: dict[str, Any] = {"requests": []}
    cap_upstream_body("/models/m:batchEmbedContents", body, OutputCap(500))
    assert body == {"requests": []}


def test_an_anthropic_client_keeps_its_thinking_budget() -> None:
    exchange = exchange_for(MESSAGES, "gemini")
    assert exchange is not None
    call = exchange.build({"max_tokens": 2000, "messages": USER, "system": "Brief.",
                           "thinking": {"type": "enabled", "budget_tokens": 1234},
                           "stop_sequences": ["END"], "top_k": 20}, ctx(cap=2000))
    assert call.body == {
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "systemInstruction": {"parts": [{"text": "Brief."}]},
        "generationConfig": {"maxOutputTokens": 2000, "stopSequences": ["END"], "topK": 20,
                             "thinkingConfig": {"thinkingBudget": 1234,
                                                "includeThoughts": True}}}


def test_an_anthropic_client_gets_an_anthropic_message() -> None:
    exchange = exchange_for(MESSAGES, "gemini")
    assert exchange is not None
    reply = exchange.reply(golden("generate_parallel_calls.json"), ctx())
    assert reply.body["stop_reason"] == "tool_use"
    assert [b["type"] for b in reply.body["content"]] == ["tool_use", "tool_use"]
    assert reply.body["content"][1]["input"] == {"city": "Tokyo"}
    assert reply.usage is not None and reply.usage.completion_tokens == 52
    assert reply.upstream_id == "nFPnaJ3xBoyN7M8P4tKq4QQ"


def test_embeddings_builds() -> None:
    exchange = exchange_for(EMBEDDINGS, "gemini")
    assert exchange is not None
    single = exchange.build({"input": "a", "dimensions": 8}, ctx(cap=None))
    assert (single.path, single.body) == ("/models/gemini-2.5-flash:embedContent", {
        "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 8})
    batch = exchange.build({"input": ["a", "b"]}, ctx(cap=None))
    assert batch.path == "/models/gemini-2.5-flash:batchEmbedContents"
    assert batch.body["requests"][1] == {"model": "models/gemini-2.5-flash",
                                         "content": {"parts": [{"text": "b"}]}}
    vertex = exchange_for(EMBEDDINGS, "vertex")
    assert vertex is not None
    predict = vertex.build({"input": ["a"]}, ctx(VERTEX, "text-embedding-005", cap=None))
    assert predict.path.endswith("/publishers/google/models/text-embedding-005:predict")
    assert predict.body == {"instances": [{"content": "a"}]}


@pytest.mark.parametrize(("body", "param"), [({"input": [[1, 2, 3]]}, "input"),
                                             ({"input": []}, "input"),
                                             ({"input": "a", "encoding_format": "int8"},
                                              "encoding_format")])
def test_embeddings_refusals(body: dict[str, Any], param: str) -> None:
    exchange = exchange_for(EMBEDDINGS, "gemini")
    assert exchange is not None
    with pytest.raises(InvalidRequest) as caught:
        exchange.build(body, ctx(cap=None))
    assert caught.value.param == param


def test_embeddings_reply_in_the_encoding_asked_for() -> None:
    exchange = exchange_for(EMBEDDINGS, "gemini")
    assert exchange is not None
    call_ctx = ctx(cap=None)
    exchange.build({"input": "some text", "encoding_format": "base64"}, call_ctx)
    reply = exchange.reply(golden("embed_content.json"), call_ctx)
    packed = base64.b64decode(reply.body["data"][0]["embedding"])
    assert struct.unpack("<4f", packed) == pytest.approx([0.0125, -0.5, 0.25, 0.75])
    assert reply.usage is None  # the Gemini API counts no tokens: the estimate is charged
    assert reply.body["usage"]["prompt_tokens"] == call_ctx.notes["prompt_estimate"] > 0


def test_count_tokens_builds() -> None:
    gemini, vertex = token_counter_for("gemini"), token_counter_for("vertex")
    assert gemini is not None and vertex is not None
    body = {"model": "google/flash", "messages": USER, "tools": [
        {"name": "f", "input_schema": {"type": "object"}}]}
    call = gemini.build(body, ctx())
    assert call.path == "/models/gemini-2.5-flash:countTokens"
    assert call.body == {"generateContentRequest": {
        "model": "models/gemini-2.5-flash",
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "tools": [{"functionDeclarations": [{"name": "f",
                                             "parametersJsonSchema": {"type": "object"}}]}]}}
    assert "generateContentRequest" not in vertex.build(body, ctx(VERTEX)).body
    assert gemini.answer(b'{"totalTokens": 12}', ctx()) == b'{"input_tokens":12}'
    assert token_counter_for("openai") is None
