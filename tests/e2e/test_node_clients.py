"""The official JavaScript clients against the proxy, only their base URL changed: the
openai package, @anthropic-ai/sdk and the AI SDK (ai with @ai-sdk/openai and
@ai-sdk/anthropic), each run by Node (tests/node_clients.py) over real HTTP against the
proxy and its fake upstreams."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from anyrouter_proxy.config.model import Config
from tests.conftest import (
    ALICE_KEY,
    PROVIDER_KEY,
    ConfigFactory,
    Proxy,
    anthropic_provider,
    openai_provider,
    sha256,
)
from tests.fake_responses import TEXT_PIECES
from tests.fakes import ANSWER, USAGE, Behaviour, FakeAnthropic, FakeOpenAI, embedding_values
from tests.node_clients import Call, error, install, result, run_node

GPT, EMBED = "openai/gpt-4o-mini", "openai/text-embedding-3-small"
NATIVE = "native/gpt-4o-mini"  # a provider that speaks the Responses API itself
CLAUDE = "anthropic/claude-sonnet-4"
BROKE_KEY = "sk-ar-test-broke-0123456789abcdef0123456789"
LIMITED_KEY = "sk-ar-test-limited-0123456789abcdef01234567"
RESPONSES_TEXT = "".join(TEXT_PIECES)
PRICING = {"prompt": 0.15, "completion": 0.60}


@pytest.fixture(scope="module", autouse=True)
def node_packages() -> None:
    install()


@pytest.fixture
async def proxy(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                fake_backup: FakeOpenAI, fake_anthropic: FakeAnthropic,
                start_proxy: Callable[[Config], Awaitable[Proxy]]) -> Proxy:
    def model(provider: str, upstream: str) -> dict[str, Any]:
        return {"pricing": PRICING, "routes": [{"provider": provider, "model": upstream}]}

    return await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai),
                   "native": openai_provider(fake_backup, native_responses=True),
                   "anthropic": anthropic_provider(fake_anthropic)},
        models={GPT: model("openai", "gpt-4o-mini"),
                EMBED: model("openai", "text-embedding-3-small"),
                NATIVE: model("native", "gpt-4o-mini"),
                CLAUDE: model("anthropic", "claude-sonnet-4-20250514")},
        keys={"alice": {"key_sha256": sha256(ALICE_KEY)},
              "broke": {"key_sha256": sha256(BROKE_KEY), "credits": 0.0000001},
              "limited": {"key_sha256": sha256(LIMITED_KEY),
                          "limits": {"requests_per_minute": 1}}},
        # Each SDK attempt is one upstream request: the proxy's own retry round is off.
        server={"retries": 0}))


def openai_input(proxy: Proxy, model: str = GPT, key: str = ALICE_KEY,
                 **extra: Any) -> dict[str, Any]:
    return {"baseURL": proxy.base_url, "apiKey": key, "model": model, **extra}


def anthropic_input(proxy: Proxy, model: str = CLAUDE, key: str = ALICE_KEY,
                    **extra: Any) -> dict[str, Any]:
    # The Anthropic SDK appends /v1/messages to its base URL.
    return {"baseURL": proxy.url("/api"), "apiKey": key, "model": model, **extra}


AI_SDK_MODELS = {"chat": GPT, "responses": NATIVE, "anthropic": CLAUDE}
# Each AI SDK provider on the model of its own wire, and two across wires.
AI_SDK_ROUTES = {**{provider: (provider, model) for provider, model in AI_SDK_MODELS.items()},
                 "chat-to-claude": ("chat", CLAUDE), "anthropic-to-gpt": ("anthropic", GPT)}


def ai_sdk_input(proxy: Proxy, provider: str, key: str = ALICE_KEY,
                 **extra: Any) -> dict[str, Any]:
    # Both AI SDK providers take the base URL with /v1 (their defaults end in /v1).
    return {"provider": provider, "baseURL": proxy.base_url, "apiKey": key,
            "model": AI_SDK_MODELS[provider], **extra}


def assert_provider_keys_only(fake: FakeOpenAI | FakeAnthropic) -> None:
    assert fake.requests
    for request in fake.requests:
        sent = request.headers.get("Authorization", "") + request.headers.get("x-api-key", "")
        assert PROVIDER_KEY in sent
        assert all(ALICE_KEY not in value for value in request.headers.values())


# -- openai ------------------------------------------------------------------------------------

async def test_openai_chat_stream_and_models(proxy: Proxy, fake_openai: FakeOpenAI) -> None:
    whole, streamed, models = await run_node(Call("openai", "chat", openai_input(proxy)),
                                             Call("openai", "chatStream", openai_input(proxy)),
                                             Call("openai", "models", openai_input(proxy)))
    whole = result(whole)
    assert whole["content"] == ANSWER and whole["model"] == GPT
    assert whole["id"].startswith("gen-") and whole["generationHeader"] == whole["id"]
    assert whole["usage"]["prompt_tokens"] == USAGE["prompt_tokens"]
    streamed = result(streamed)
    assert streamed["text"] == "tok0 tok1 tok2 " and streamed["finishReason"] == "stop"
    assert len(streamed["ids"]) == 1 and streamed["ids"][0].startswith("gen-")
    assert streamed["models"] == [GPT]
    assert streamed["usage"]["completion_tokens"] == 3
    assert [r.body["model"] for r in fake_openai.requests] == ["gpt-4o-mini"] * 2
    models = result(models)
    assert sorted(models["ids"]) == sorted([GPT, EMBED, NATIVE, CLAUDE])
    assert models["retrieved"] == GPT and models["pricing"]["prompt"] == "0.00000015"
    assert_provider_keys_only(fake_openai)


async def test_openai_tool_round_trip(proxy: Proxy, fake_openai: FakeOpenAI) -> None:
    (outcome,) = await run_node(Call("openai", "toolRoundTrip", openai_input(proxy)))
    trip = result(outcome)
    assert trip["finishReason"] == "tool_calls"
    assert trip["call"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert trip["streamedCall"] == {"id": "call_1", "name": "get_weather",
                                    "arguments": {"city": "Paris"}}
    assert trip["answer"] == ANSWER
    sent_back = fake_openai.requests[-1].body["messages"]
    assert sent_back[-1] == {"role": "tool", "tool_call_id": "call_1",
                             "content": "Sunny in Paris, 21C"}


async def test_openai_embeddings_base64_by_default(proxy: Proxy,
                                                   fake_openai: FakeOpenAI) -> None:
    outcome, ai_sdk = await run_node(Call("openai", "embeddings", openai_input(proxy, EMBED)),
                                     Call("aisdk", "embeddings", openai_input(proxy, EMBED)))
    embedded = result(outcome)
    # The SDK asked for base64 and decoded the float32 bytes the upstream sent through us;
    # the AI SDK asks for floats.
    assert [r.body.get("encoding_format") for r in fake_openai.requests] == \
        ["base64", "float", "float"]
    assert embedded["areArrays"] and embedded["model"] == EMBED
    expected = [pytest.approx(embedding_values(i), rel=1e-6) for i in range(2)]
    assert embedded["vectors"] == expected and embedded["floatVectors"] == expected
    assert embedded["usage"]["prompt_tokens"] == 4
    assert result(ai_sdk) == {"embeddings": expected, "tokens": 4}


@pytest.mark.parametrize("model", [NATIVE, GPT, CLAUDE], ids=["native", "chat", "anthropic"])
async def test_openai_responses_and_parse(proxy: Proxy, model: str) -> None:
    """responses.create, whole and streamed, a function call answered with
    previous_response_id, and chat.completions.parse / responses.parse with a zod schema,
    on a native Responses provider and translated to chat and Messages."""
    whole, streamed, tools, parsed = await run_node(
        Call("openai", "responses", openai_input(proxy, model)),
        Call("openai", "responsesStream", openai_input(proxy, model)),
        Call("openai", "responsesToolRoundTrip", openai_input(proxy, model)),
        Call("openai", "parse", openai_input(proxy, model)))
    text = RESPONSES_TEXT if model == NATIVE else ANSWER
    streamed_text = {NATIVE: RESPONSES_TEXT, GPT: "tok0 tok1 tok2 ", CLAUDE: ANSWER}[model]
    whole = result(whole)
    assert whole["outputText"] == text and whole["status"] == "completed"
    assert whole["id"].startswith("gen-") and whole["model"] == model
    assert whole["usage"]["total_tokens"] > 0
    streamed = result(streamed)
    assert streamed["types"][0] == "response.created"
    assert streamed["types"][-1] == "response.completed"
    assert streamed["text"] == streamed["outputText"] == streamed_text
    assert streamed["id"].startswith("gen-") and streamed["model"] == model
    tools = result(tools)
    assert tools["call"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert tools["answer"] and all(i.startswith("gen-") for i in tools["ids"])
    parsed = result(parsed)
    for answer in (parsed["chat"], parsed["responses"]):
        assert set(answer) == {"city", "temperature", "sunny"}
        assert isinstance(answer["sunny"], bool)


# -- @anthropic-ai/sdk ---------------------------------------------------------------------------

@pytest.mark.parametrize("model", [CLAUDE, GPT], ids=["anthropic", "chat"])
async def test_anthropic_create_and_stream(proxy: Proxy, fake_anthropic: FakeAnthropic,
                                           model: str) -> None:
    whole, streamed = await run_node(Call("anthropic", "create", anthropic_input(proxy, model)),
                                     Call("anthropic", "stream", anthropic_input(proxy, model)))
    whole = result(whole)
    assert whole["content"][0] == {"type": "text", "text": ANSWER}
    assert whole["model"] == model and whole["stopReason"] == "end_turn"
    assert whole["generationHeader"].startswith("gen-")
    assert whole["usage"]["input_tokens"] > 0 and whole["usage"]["output_tokens"] > 0
    streamed = result(streamed)
    assert streamed["types"][0] == "message_start" and streamed["types"][-1] == "message_stop"
    assert streamed["call"] == {"name": "get_weather", "input": {"city": "Paris"}}
    assert streamed["stopReason"] == "tool_use" and streamed["model"] == model
    # Both fakes write text before their tool call; the chat one streams it as tok<i>.
    streamed_text = ANSWER if model == CLAUDE else "tok0 tok1 tok2 "
    assert streamed["text"] == streamed["answer"] == streamed_text
    if model == CLAUDE:
        assert fake_anthropic.requests[0].body["model"] == "claude-sonnet-4-20250514"
        assert_provider_keys_only(fake_anthropic)


async def test_anthropic_count_tokens_and_auth_token(proxy: Proxy,
                                                    fake_anthropic: FakeAnthropic) -> None:
    counted, bearer = await run_node(
        Call("anthropic", "countTokens", anthropic_input(proxy)),
        # authToken (ANTHROPIC_AUTH_TOKEN) sends the key as a Bearer token, not x-api-key.
        Call("anthropic", "createOnce", anthropic_input(proxy, key="", authToken=ALICE_KEY)))
    assert result(counted) == {"input_tokens": 42}
    assert result(bearer)["content"] == [{"type": "text", "text": ANSWER}]
    assert fake_anthropic.requests[0].path == "/v1/messages/count_tokens"
    assert fake_anthropic.requests[0].body["model"] == "claude-sonnet-4-20250514"


# -- the AI SDK ----------------------------------------------------------------------------------

@pytest.mark.parametrize("route", list(AI_SDK_ROUTES))
async def test_ai_sdk(proxy: Proxy, route: str) -> None:
    """generateText, streamText, generateObject (a zod schema) and a tool loop with
    openai.chat(id), openai(id) (the Responses API) and anthropic(id)."""
    provider, model = AI_SDK_ROUTES[route]
    text, stream, obj, loop = await run_node(
        *(Call("aisdk", case, ai_sdk_input(proxy, provider, model=model))
          for case in ("text", "stream", "object", "toolLoop")))
    text = result(text)
    assert text["text"] == (RESPONSES_TEXT if model == NATIVE else ANSWER)
    assert text["finishReason"] == "stop"
    assert text["usage"]["inputTokens"] > 0 and text["usage"]["outputTokens"] > 0
    assert text["generationHeader"].startswith("gen-")
    # OpenAI-shaped answers carry the generation id, Messages ones an msg_ id.
    assert text["responseId"] == text["generationHeader"] if provider != "anthropic" \
        else text["responseId"].startswith("msg_")
    assert text["responseModel"] == model
    stream = result(stream)
    assert stream["text"] == "".join(stream["deltas"]) and len(stream["deltas"]) > 1
    assert stream["finishReason"] == "stop" and stream["usage"]["outputTokens"] > 0
    obj = result(obj)
    assert set(obj["object"]) == {"city", "temperature", "sunny"}
    assert isinstance(obj["object"]["city"], str)
    assert isinstance(obj["object"]["sunny"], bool)
    loop = result(loop)
    assert loop["calls"] == ["Paris"] and loop["steps"] == 2
    assert loop["finishReasons"] == ["tool-calls", "stop"] and loop["text"]


@pytest.mark.parametrize("store", [None, False], ids=["default-store", "store-false"])
async def test_ai_sdk_responses_on_a_translated_model(proxy: Proxy, fake_anthropic: FakeAnthropic,
                                                     store: bool | None) -> None:
    """openai(id) on a model the proxy serves through Messages. With its default store the
    SDK sends an earlier answer back as an item_reference, which the proxy resolves from the
    response it stored; with store false it sends the item itself. Either way the upstream
    gets the first answer whole."""
    text, loop = await run_node(
        *(Call("aisdk", case, ai_sdk_input(proxy, "responses", model=CLAUDE,
                                           **({} if store is None else {"store": store})))
          for case in ("text", "toolLoop")))
    assert result(text)["text"] == ANSWER
    loop = result(loop)
    assert loop["calls"] == ["Paris"] and loop["finishReasons"] == ["tool-calls", "stop"]
    resent = fake_anthropic.requests[-1].body["messages"][1]["content"]
    assert resent[0] == {"type": "text", "text": ANSWER}  # the first answer, sent whole


# -- errors as each SDK types them -------------------------------------------------------------

def every_client(proxy: Proxy, key: str, **extra: Any) -> list[Call]:
    return [Call("openai", "chatOnce", openai_input(proxy, key=key, **extra)),
            Call("anthropic", "createOnce", anthropic_input(proxy, key=key, **extra)),
            *(Call("aisdk", "text", ai_sdk_input(proxy, provider, key=key, **extra))
              for provider in AI_SDK_MODELS)]


def assert_typed(outcomes: list[dict[str, Any]], status: int, openai_class: str,
                 anthropic_class: str) -> list[dict[str, Any]]:
    """The openai and Anthropic SDKs' error classes, the AI SDK's APICallError with the
    status; the errors, in order."""
    errors = [error(outcome) for outcome in outcomes]
    openai_error, anthropic_error, *ai_sdk_errors = errors
    assert openai_error["classes"][0] == openai_class and openai_error["status"] == status
    assert anthropic_error["classes"][0] == anthropic_class
    assert anthropic_error["status"] == status
    for raised in ai_sdk_errors:
        assert raised["classes"][0] == "APICallError" and raised["statusCode"] == status
    return errors


async def test_bad_key_is_authentication_error(proxy: Proxy, fake_openai: FakeOpenAI,
                                               fake_anthropic: FakeAnthropic) -> None:
    errors = assert_typed(await run_node(*every_client(proxy, "sk-ar-wrong")), 401,
                          "AuthenticationError", "AuthenticationError")
    assert errors[0]["code"] == "invalid_api_key"
    assert errors[1]["error"]["error"]["type"] == "authentication_error"
    assert not any(e["isRetryable"] for e in errors[2:])
    assert fake_openai.requests == fake_anthropic.requests == []


async def test_insufficient_credits_is_402(proxy: Proxy, fake_openai: FakeOpenAI,
                                           fake_backup: FakeOpenAI,
                                           fake_anthropic: FakeAnthropic) -> None:
    # 402 is not retried by any of them (the AI SDK would wrap retries in a RetryError).
    errors = assert_typed(await run_node(*every_client(proxy, BROKE_KEY)), 402,
                          "APIError", "PaymentRequiredError")
    assert errors[0]["code"] == "insufficient_credits"
    assert errors[1]["error"]["error"]["type"] == "insufficient_credits"
    assert all("insufficient_credits" in e["responseBody"] for e in errors[2:])
    assert fake_openai.requests == fake_backup.requests == fake_anthropic.requests == []


async def test_rate_limited_key_is_429(proxy: Proxy) -> None:
    """The key's bucket is empty for ~60 s, which Retry-After says: with their default
    retries the SDKs would wait that long, so these calls set maxRetries 0."""
    first, *limited = await run_node(
        Call("openai", "chatOnce", openai_input(proxy, key=LIMITED_KEY)),
        *every_client(proxy, LIMITED_KEY, maxRetries=0))
    assert result(first)["content"] == ANSWER  # the key's one request a minute
    errors = assert_typed(limited, 429, "RateLimitError", "RateLimitError")
    assert errors[0]["code"] == "rate_limited" and int(errors[0]["headers"]["retry-after"]) > 1
    assert all(e["isRetryable"] for e in errors[2:])


async def test_upstream_429_is_retried_by_each_sdk(proxy: Proxy, fake_openai: FakeOpenAI,
                                                   fake_anthropic: FakeAnthropic) -> None:
    """An upstream 429 reaches the client as 429 with the upstream's Retry-After (0 here),
    so each SDK's own retries (two by default) come through the proxy again: 429s and then
    an answer is a success, three 429s the SDK's rate limit error. (The Anthropic SDK reads
    Retry-After 0 as "back off 0.5 s, then 1 s": one 429 keeps it quick.)"""
    def limited(anthropic: bool = False) -> Behaviour:
        body = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}} \
            if anthropic else {"error": {"message": "slow", "type": "requests",
                                         "code": "rate_limit_exceeded", "param": None}}
        return Behaviour(status=429, headers={"Retry-After": "0"}, body=body)

    fake_openai.then(limited(), limited(), Behaviour(), *(limited() for _ in range(6)))
    fake_anthropic.then(limited(True))
    calls = [Call("openai", "chatOnce", openai_input(proxy)),
             Call("anthropic", "createOnce", anthropic_input(proxy)),
             Call("aisdk", "text", ai_sdk_input(proxy, "chat")),
             Call("openai", "chatOnce", openai_input(proxy))]
    openai_ok, anthropic_ok, ai_sdk_failed, openai_failed = await run_node(*calls)
    assert result(openai_ok)["content"] == ANSWER
    assert result(anthropic_ok)["content"] == [{"type": "text", "text": ANSWER}]
    retried = error(ai_sdk_failed)
    assert retried["classes"][0] == "RetryError" and retried["reason"] == "maxRetriesExceeded"
    assert retried["attempts"] == 3 and retried["lastError"]["statusCode"] == 429
    raised = error(openai_failed)
    assert raised["classes"][0] == "RateLimitError" and raised["code"] == "upstream_rate_limited"
    assert raised["headers"]["retry-after"] == "0"
    # Each SDK attempt was one upstream request: 3 + 3 + 3 to OpenAI, 2 to Anthropic.
    assert len(fake_openai.requests) == 9 and len(fake_anthropic.requests) == 2
