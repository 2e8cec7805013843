"""End to end: POST /batch over real HTTP against fake upstreams.

Sync and async batches, JSON-lines input, limits/credits/allow-lists applying per item,
bounded concurrency, cancel, isolation between keys, and restarts of the proxy over the
same SQLite file (an async batch resumes; a finished batch keeps its results).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from anyrouter_proxy.config.model import Config
from anyrouter_proxy.pricing import estimate_prompt_tokens
from anyrouter_proxy.server.app import create_app
from anyrouter_proxy.server.state import GATEWAY
from tests.conftest import (
    ALICE_KEY,
    BOB_KEY,
    ConfigFactory,
    Proxy,
    anthropic_provider,
    auth,
    openai_provider,
    sha256,
)
from tests.fakes import USAGE, Behaviour, FakeAnthropic, FakeOpenAI

StartProxy = Callable[[Config], Awaitable[Proxy]]
Server = Callable[..., Awaitable[TestServer]]

MODEL = "openai/gpt-4o-mini"
OTHER_MODEL = "other/model"
EMBED_MODEL = "openai/text-embedding-3-small"
CLAUDE = "anthropic/claude-sonnet-4"
PROMPT_PRICE, COMPLETION_PRICE = 0.15, 0.60
MAX_TOKENS = 100
FINISHED = ("completed", "cancelled")


# -- fakes and config --------------------------------------------------------------------


class TrackingOpenAI(FakeOpenAI):
    """FakeOpenAI that answers every request after `delay_s` and measures how many
    requests it holds at once."""

    def __init__(self, name: str = "openai", delay_s: float = 0.0) -> None:
        super().__init__(name)
        self.delay_s = delay_s
        self.in_flight = 0
        self.peak = 0

    async def _record(self, request: web.Request) -> tuple[dict[str, Any], Behaviour]:
        if not self.script and self.delay_s:
            self.script.append(Behaviour(delay_s=self.delay_s))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await super()._record(request)
        finally:
            self.in_flight -= 1

    def per_marker(self) -> Counter[str]:
        """How many requests the fake received for each item (the marker is the chat
        message content, which the tests set to the item's custom_id)."""
        return Counter(r.body["messages"][0]["content"] for r in self.requests
                       if "messages" in r.body)


async def serve_fake(aiohttp_server: Server, fake: TrackingOpenAI) -> TrackingOpenAI:
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url("/v1"))  # type: ignore[attr-defined]
    return fake


def models(anthropic: bool = False) -> dict[str, Any]:
    pricing = {"prompt": PROMPT_PRICE, "completion": COMPLETION_PRICE}
    out: dict[str, Any] = {
        MODEL: {"pricing": pricing, "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]},
        OTHER_MODEL: {"pricing": pricing, "routes": [{"provider": "openai", "model": "other"}]},
        EMBED_MODEL: {"pricing": {"prompt": 0.02},
                      "routes": [{"provider": "openai", "model": "text-embedding-3-small"}]},
    }
    if anthropic:
        out[CLAUDE] = {"pricing": {"prompt": 3, "completion": 15},
                       "routes": [{"provider": "anthropic",
                                   "model": "claude-sonnet-4-20250514"}]}
    return out


def make_config(config_factory: ConfigFactory, fake: FakeOpenAI,
                fake_anthropic: FakeAnthropic | None = None, *,
                alice: dict[str, Any] | None = None, bob: dict[str, Any] | None = None,
                **sections: Any) -> Config:
    providers = {"openai": openai_provider(fake)}
    if fake_anthropic is not None:
        providers["anthropic"] = anthropic_provider(fake_anthropic)
    return config_factory(
        providers=providers, models=models(anthropic=fake_anthropic is not None),
        keys={"alice": {"key_sha256": sha256(ALICE_KEY), **(alice or {})},
              "bob": {"key_sha256": sha256(BOB_KEY), **(bob or {})}},
        **sections)


def chat_item(custom_id: str, url: str = "/v1/chat/completions", model: str = MODEL,
              **extra: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url,
            "body": {"model": model, "messages": [{"role": "user", "content": custom_id}],
                     "max_tokens": MAX_TOKENS, **extra}}


def worst_case() -> float:
    """The reservation of one chat_item: prompt estimate and max_tokens priced."""
    body = chat_item("c0")["body"]
    prompt = estimate_prompt_tokens(body)
    return (prompt * PROMPT_PRICE + MAX_TOKENS * COMPLETION_PRICE) / 1_000_000


# -- HTTP helpers ------------------------------------------------------------------------


Target = Proxy | TestServer | str  # a str is a base URL such as http://127.0.0.1:8080


def url_of(target: Target, path: str) -> str:
    if isinstance(target, Proxy):
        return target.url(path)
    if isinstance(target, str):
        return target + path
    return str(target.make_url(path))


async def request(target: Target, method: str, path: str, *,
                  key: str = ALICE_KEY, json_body: Any = None, data: bytes | None = None,
                  headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as session, session.request(
            method, url_of(target, path), json=json_body, data=data,
            headers={**auth(key), **(headers or {})}) as response:
        assert response.content_type == "application/json", await response.text()
        return response.status, dict(response.headers), await response.json()


async def post_batch(target: Target, items: Any, *, mode: str | None = None,
                     key: str = ALICE_KEY, headers: dict[str, str] | None = None,
                     path: str = "/api/v1/batch") -> tuple[int, dict[str, str], Any]:
    body: dict[str, Any] = {"requests": items}
    if mode is not None:
        body["mode"] = mode
    return await request(target, "POST", path, key=key, json_body=body, headers=headers)


async def get_batch(target: Target, batch_id: str,
                    key: str = ALICE_KEY) -> tuple[int, Any]:
    status, _, body = await request(target, "GET", f"/api/v1/batch/{batch_id}", key=key)
    return status, body


async def wait_until(target: Target, batch_id: str,
                     done: Callable[[dict[str, Any]], bool] = lambda b: b["status"] in FINISHED,
                     timeout_s: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = await get_batch(target, batch_id)
        assert status == 200, body
        if done(body):
            result: dict[str, Any] = body
            return result
        assert time.monotonic() < deadline, f"batch {batch_id} stuck: {body}"
        await asyncio.sleep(0.03)


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def assert_envelope(body: dict[str, Any], type_: str, code: str) -> None:
    error = body["error"]
    assert set(error) >= {"message", "type", "code", "param"}
    assert (error["type"], error["code"]) == (type_, code)
    assert isinstance(error["message"], str) and error["message"]


def assert_item_error(result: dict[str, Any], code: str) -> None:
    assert result["response"] is None
    assert result["error"]["code"] == code
    assert isinstance(result["error"]["message"], str) and result["error"]["message"]


def statuses(body: dict[str, Any]) -> list[int | None]:
    return [r["response"]["status_code"] if r["response"] else None for r in body["results"]]


# -- sync batch: mixed items and endpoints -------------------------------------------------


async def test_sync_batch_mixed_items_and_endpoints(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(make_config(config_factory, fake_openai, fake_anthropic))
    good_body = chat_item("x")["body"]
    items: list[Any] = [
        chat_item("chat-v1", "/v1/chat/completions"),
        chat_item("chat-api-v1", "/api/v1/chat/completions"),
        chat_item("chat-bare", "/chat/completions"),
        {"custom_id": "completions", "method": "POST", "url": "/v1/completions",
         "body": {"model": MODEL, "prompt": "Say hi", "max_tokens": 10}},
        {"custom_id": "embeddings", "url": "/api/v1/embeddings",  # method defaults to POST
         "body": {"model": EMBED_MODEL, "input": ["a", "b"]}},
        {"custom_id": "messages", "method": "POST", "url": "/v1/messages",
         "body": {"model": CLAUDE, "max_tokens": 50,
                  "messages": [{"role": "user", "content": "Hello"}]}},
        42,  # not an object
        {"method": "POST", "url": "/v1/chat/completions", "body": good_body},  # no custom_id
        {"custom_id": "get", "method": "GET", "url": "/v1/chat/completions", "body": good_body},
        {"custom_id": "bad-url", "method": "POST", "url": "/v1/images/generations",
         "body": good_body},
        {"custom_id": "body-not-object", "method": "POST", "url": "/v1/chat/completions",
         "body": "hello"},
        chat_item("streaming", stream=True),
        chat_item("unknown-model", model="nope/nothing"),
        {"custom_id": "messages-unknown-model", "method": "POST", "url": "/messages",
         "body": {"model": "nope/nothing", "max_tokens": 5,
                  "messages": [{"role": "user", "content": "Hi"}]}},
    ]
    status, headers, body = await post_batch(
        proxy, items, headers={"X-AnyRouter-Trace-Id": "batch-trace-1"})
    assert status == 200, body
    assert body["id"].startswith("batch_") and body["object"] == "batch"
    assert body["status"] == "completed"
    assert body["request_counts"] == {"total": 14, "completed": 6, "failed": 8}
    results = body["results"]
    assert [r["custom_id"] for r in results] == [
        "chat-v1", "chat-api-v1", "chat-bare", "completions", "embeddings", "messages",
        None, None, "get", "bad-url", "body-not-object", "streaming", "unknown-model",
        "messages-unknown-model"]

    # The valid items: 200, their own generation id, readable by the same key only.
    gen_ids = set()
    for result in results[:6]:
        assert result["error"] is None, result
        response = result["response"]
        assert response["status_code"] == 200
        gen_id = response["request_id"]
        assert gen_id.startswith("gen-") and gen_id not in gen_ids
        gen_ids.add(gen_id)
    for result in results[:4]:  # chat/completions and completions: body id = generation id
        assert result["response"]["body"]["id"] == result["response"]["request_id"]
    assert [r["response"]["body"]["choices"][0]["message"]["content"] for r in results[:3]] \
        == ["Hello from the fake upstream!"] * 3
    assert results[3]["response"]["body"]["object"] == "text_completion"
    assert results[4]["response"]["body"]["object"] == "list"
    assert len(results[4]["response"]["body"]["data"]) == 2
    assert results[5]["response"]["body"]["type"] == "message"
    assert results[5]["response"]["body"]["content"][0]["text"] == \
        "Hello from the fake upstream!"

    # Each valid item has its usage row, with the batch's trace id.
    await proxy.flush()
    for result in results[:6]:
        gen_id = result["response"]["request_id"]
        got, _, gen = await request(proxy, "GET", f"/api/v1/generation/{gen_id}")
        assert got == 200, gen
        assert gen["data"]["id"] == gen_id
        assert gen["data"]["trace_id"] == "batch-trace-1"
        assert gen["data"]["status_code"] == 200
        got, _, other = await request(proxy, "GET", f"/api/v1/generation/{gen_id}",
                                      key=BOB_KEY)
        assert got == 404 and other["error"]["code"] == "generation_not_found"
    got, _, gen = await request(proxy, "GET",
                                f"/api/v1/generation/{results[0]['response']['request_id']}")
    assert (gen["data"]["model"], gen["data"]["endpoint"]) == (MODEL, "chat")
    assert gen["data"]["provider_name"] == "openai"
    assert gen["data"]["tokens_prompt"] == USAGE["prompt_tokens"]
    assert gen["data"]["tokens_completion"] == USAGE["completion_tokens"]

    # Malformed items never ran: response null, error {code, message}.
    for result, code in zip(results[6:12], ["invalid_request", "invalid_request",
                                            "invalid_request", "invalid_url",
                                            "invalid_request", "streaming_not_supported"],
                            strict=True):
        assert_item_error(result, code)
        assert set(result["error"]) == {"code", "message"}

    # An item the gateway refused got an HTTP answer: response with the envelope.
    unknown = results[12]
    assert unknown["error"] is None
    assert unknown["response"]["status_code"] == 404
    assert_envelope(unknown["response"]["body"], "not_found_error", "model_not_found")
    unknown_messages = results[13]
    assert unknown_messages["response"]["status_code"] == 404
    assert unknown_messages["response"]["body"]["type"] == "error"  # Anthropic shape
    assert_envelope(unknown_messages["response"]["body"], "not_found_error", "model_not_found")

    # Only the valid items reached an upstream; each consumed one request of allowance.
    assert len(fake_openai.requests) == 5
    assert len(fake_anthropic.requests) == 1
    assert sorted(r.path for r in fake_openai.requests) == [
        "/v1/chat/completions"] * 3 + ["/v1/completions", "/v1/embeddings"]
    assert headers["X-RateLimit-Limit"] == "1000"
    assert headers["X-RateLimit-Remaining"] == str(1000 - 6)
    assert headers["X-AnyRouter-Trace-Id"] == "batch-trace-1"


async def test_batch_route_under_v1_and_json_content_type_with_charset(
        openai_proxy: Proxy, fake_openai: FakeOpenAI) -> None:
    data = json.dumps({"requests": [chat_item("a")]}).encode()
    status, _, body = await request(
        openai_proxy, "POST", "/v1/batch", data=data,
        headers={"Content-Type": "application/json; charset=utf-8"})
    assert status == 200 and body["status"] == "completed"
    assert body["results"][0]["response"]["status_code"] == 200


async def test_upstream_failure_of_one_item_fails_alone(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI,
        start_proxy: StartProxy) -> None:
    proxy = await start_proxy(make_config(config_factory, fake_openai,
                                          batch={"max_concurrency": 1}))
    fake_openai.then(Behaviour(), Behaviour(status=400, body={"error": {
        "message": "bad temperature", "type": "invalid_request_error", "code": None,
        "param": "temperature"}}), Behaviour())
    status, _, body = await post_batch(proxy, [chat_item("a"), chat_item("b"), chat_item("c")])
    assert status == 200
    assert statuses(body) == [200, 400, 200]
    failed = body["results"][1]
    assert failed["error"] is None
    assert "bad temperature" in failed["response"]["body"]["error"]["message"]
    assert body["request_counts"] == {"total": 3, "completed": 2, "failed": 1}


async def test_unexpected_internal_error_fails_only_its_item(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI,
        start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = await start_proxy(make_config(config_factory, fake_openai))
    gateway = proxy.app[GATEWAY]
    real_proxy = gateway.proxy

    async def flaky(req: Any) -> Any:
        if req.body["messages"][0]["content"] == "boom":
            raise RuntimeError("a bug in the gateway")
        return await real_proxy(req)

    monkeypatch.setattr(gateway, "proxy", flaky)
    status, _, body = await post_batch(proxy, [chat_item("a"), chat_item("boom"),
                                               chat_item("c")])
    assert status == 200, body
    assert statuses(body) == [200, 500, 200]
    assert_envelope(body["results"][1]["response"]["body"], "server_error", "internal_error")


async def test_unexpected_internal_error_does_not_strand_an_async_batch(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI,
        start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = await start_proxy(make_config(config_factory, fake_openai))
    gateway = proxy.app[GATEWAY]
    real_proxy = gateway.proxy

    async def flaky(req: Any) -> Any:
        if req.body["messages"][0]["content"] == "boom":
            raise RuntimeError("a bug in the gateway")
        return await real_proxy(req)

    monkeypatch.setattr(gateway, "proxy", flaky)
    _, _, created = await post_batch(proxy, [chat_item("a"), chat_item("boom")], mode="async")
    done = await wait_until(proxy, created["id"], timeout_s=3)
    assert done["status"] == "completed"
    assert statuses(done) == [200, 500]


# -- whole-batch errors ------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "code", "param"), [
    ({"requests": {}}, "invalid_request", "requests"),
    ({"requests": []}, "invalid_request", "requests"),
    ({"requests": "x"}, "invalid_request", "requests"),
    ({}, "invalid_request", "requests"),
    ({"requests": [chat_item("a")], "mode": "later"}, "invalid_request", "mode"),
    ({"requests": [chat_item("a")], "mode": None}, "invalid_request", "mode"),
])
async def test_whole_batch_400(openai_proxy: Proxy, fake_openai: FakeOpenAI,
                               payload: dict[str, Any], code: str, param: str) -> None:
    status, headers, body = await request(openai_proxy, "POST", "/api/v1/batch",
                                          json_body=payload)
    assert status == 400
    assert_envelope(body, "invalid_request_error", code)
    assert body["error"]["param"] == param
    assert "X-RateLimit-Limit" in headers
    assert fake_openai.requests == []


@pytest.mark.parametrize("data", [b"{not json", b"[1, 2]", b""])
async def test_batch_body_not_a_json_object(openai_proxy: Proxy, data: bytes) -> None:
    status, _, body = await request(openai_proxy, "POST", "/api/v1/batch", data=data,
                                    headers={"Content-Type": "application/json"})
    assert status == 400
    assert_envelope(body, "invalid_request_error", "invalid_json")


async def test_duplicate_custom_id_is_400_naming_it(openai_proxy: Proxy,
                                                   fake_openai: FakeOpenAI) -> None:
    status, _, body = await post_batch(openai_proxy, [chat_item("one"), chat_item("dup-id"),
                                                      chat_item("dup-id")])
    assert status == 400
    assert_envelope(body, "invalid_request_error", "invalid_request")
    assert "dup-id" in body["error"]["message"]
    assert body["error"]["param"] == "custom_id"
    assert fake_openai.requests == []


async def test_over_max_items_is_413_naming_the_limit(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI,
        start_proxy: StartProxy) -> None:
    proxy = await start_proxy(make_config(config_factory, fake_openai, batch={"max_items": 3}))
    status, _, body = await post_batch(proxy, [chat_item(f"c{i}") for i in range(4)])
    assert status == 413
    assert_envelope(body, "invalid_request_error", "request_too_large")
    assert "3" in body["error"]["message"] and "max_items" in body["error"]["message"]
    assert body["error"]["metadata"]["max_items"] == 3
    assert fake_openai.requests == []
    # Exactly the limit is fine.
    status, _, body = await post_batch(proxy, [chat_item(f"c{i}") for i in range(3)])
    assert status == 200 and body["request_counts"]["completed"] == 3


async def test_wrong_content_type_is_415(openai_proxy: Proxy, fake_openai: FakeOpenAI) -> None:
    line = json.dumps(chat_item("a")).encode()
    status, _, body = await request(openai_proxy, "POST", "/api/v1/batch", data=line,
                                    headers={"Content-Type": "text/plain"})
    assert status == 415
    assert_envelope(body, "invalid_request_error", "unsupported_media_type")
    assert fake_openai.requests == []


async def test_batch_needs_a_key(openai_proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as session, session.post(
            openai_proxy.url("/api/v1/batch"), json={"requests": [chat_item("a")]}) as response:
        assert response.status == 401
        assert_envelope(await response.json(), "authentication_error", "missing_api_key")


# -- limits per item ---------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 8])
async def test_rate_limit_applies_per_item(config_factory: ConfigFactory,
                                           fake_openai: FakeOpenAI, start_proxy: StartProxy,
                                           concurrency: int) -> None:
    proxy = await start_proxy(make_config(
        config_factory, fake_openai, alice={"limits": {"requests_per_minute": 3}},
        batch={"max_concurrency": concurrency}))
    items = [chat_item(f"c{i}") for i in range(5)]
    status, headers, body = await post_batch(proxy, items)
    assert status == 200
    assert body["status"] == "completed"
    assert [r["custom_id"] for r in body["results"]] == [f"c{i}" for i in range(5)]
    assert sorted(statuses(body), key=lambda s: s or 0) == [200, 200, 200, 429, 429]
    assert statuses(body) == [200, 200, 200, 429, 429]  # admitted in input order
    for result in body["results"][3:]:
        assert result["error"] is None
        assert_envelope(result["response"]["body"], "rate_limit_error", "rate_limited")
        assert result["response"]["request_id"].startswith("gen-")
    assert body["request_counts"] == {"total": 5, "completed": 3, "failed": 2}
    assert len(fake_openai.requests) == 3
    assert headers["X-RateLimit-Remaining"] == "0"
    # Bob's allowance is his own.
    status, _, body = await post_batch(proxy, [chat_item("b0")], key=BOB_KEY)
    assert statuses(body) == [200]


async def test_credits_apply_per_item(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                                      start_proxy: StartProxy) -> None:
    credits = 2.5 * worst_case()  # room for the reservations of two items
    proxy = await start_proxy(make_config(config_factory, fake_openai,
                                          alice={"credits": credits}))
    status, _, body = await post_batch(proxy, [chat_item(f"c{i}") for i in range(5)])
    assert status == 200
    assert statuses(body) == [200, 200, 402, 402, 402]
    for result in body["results"][2:]:
        assert result["error"] is None
        assert_envelope(result["response"]["body"], "insufficient_credits",
                        "insufficient_credits")
    assert body["request_counts"] == {"total": 5, "completed": 2, "failed": 3}
    assert len(fake_openai.requests) == 2
    _, _, spent = await request(proxy, "GET", "/api/v1/credits")
    assert 0 < spent["data"]["total_usage"] <= spent["data"]["total_credits"]


async def test_allow_list_applies_per_item(config_factory: ConfigFactory,
                                           fake_openai: FakeOpenAI,
                                           start_proxy: StartProxy) -> None:
    proxy = await start_proxy(make_config(config_factory, fake_openai,
                                          alice={"models": [MODEL]}))
    items = [chat_item("allowed"), chat_item("denied", model=OTHER_MODEL),
             {"custom_id": "denied-embed", "url": "/v1/embeddings",
              "body": {"model": EMBED_MODEL, "input": "x"}},
             chat_item("allowed-too")]
    status, _, body = await post_batch(proxy, items)
    assert status == 200
    assert statuses(body) == [200, 403, 403, 200]
    for result in body["results"][1:3]:
        assert result["error"] is None
        assert_envelope(result["response"]["body"], "permission_error", "model_not_allowed")
    assert [r.body["model"] for r in fake_openai.requests] == ["gpt-4o-mini"] * 2


@pytest.mark.parametrize("concurrency", [1, 2, 4])
async def test_max_concurrency_is_respected(config_factory: ConfigFactory,
                                            aiohttp_server: Server, start_proxy: StartProxy,
                                            concurrency: int) -> None:
    delay = 0.25
    fake = await serve_fake(aiohttp_server, TrackingOpenAI(delay_s=delay))
    proxy = await start_proxy(make_config(config_factory, fake,
                                          batch={"max_concurrency": concurrency}))
    started = time.monotonic()
    status, _, body = await post_batch(proxy, [chat_item(f"c{i}") for i in range(4)])
    elapsed = time.monotonic() - started
    assert status == 200 and statuses(body) == [200] * 4
    assert fake.peak == concurrency
    assert elapsed >= delay * (4 / concurrency) - 0.02


# -- async --------------------------------------------------------------------------------


async def test_async_batch_polled_to_completion(config_factory: ConfigFactory,
                                                aiohttp_server: Server,
                                                start_proxy: StartProxy) -> None:
    fake = await serve_fake(aiohttp_server, TrackingOpenAI(delay_s=0.2))
    proxy = await start_proxy(make_config(config_factory, fake, batch={"max_concurrency": 1}))
    items = [chat_item("a0"), chat_item("a1", model="nope/x"), chat_item("a2")]
    status, _, created = await post_batch(proxy, items, mode="async")
    assert status == 202, created
    assert created["id"].startswith("batch_") and created["object"] == "batch"
    assert created["status"] == "in_progress"
    assert created["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    assert "results" not in created or created["results"] in ([], None)
    batch_id = created["id"]

    progress = await wait_until(proxy, batch_id,
                                lambda b: b["request_counts"]["completed"] >= 1)
    if progress["status"] == "in_progress":
        assert not progress.get("results")
    done = await wait_until(proxy, batch_id)
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    assert [r["custom_id"] for r in done["results"]] == ["a0", "a1", "a2"]
    assert statuses(done) == [200, 404, 200]

    # GET .../results as JSON lines: OpenAI's batch output format.
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url(f"/api/v1/batch/{batch_id}/results"),
            headers={**auth(), "Accept": "application/x-ndjson"}) as response:
        assert response.status == 200
        assert response.content_type == "application/x-ndjson"
        text = await response.text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert text.endswith("\n") and len(lines) == 3
    for line, result in zip(lines, done["results"], strict=True):
        assert set(line) == {"id", "custom_id", "response", "error"}
        assert line["id"].startswith("batch_req_")
        assert line == result
    assert set(lines[0]["response"]) == {"status_code", "request_id", "body"}
    assert lines[0]["response"]["request_id"] == lines[0]["response"]["body"]["id"]
    assert lines[1]["response"]["body"]["error"]["code"] == "model_not_found"
    assert all(line["error"] is None for line in lines)

    # The same results as a JSON list.
    got, _, listed = await request(proxy, "GET", f"/api/v1/batch/{batch_id}/results")
    assert got == 200
    assert listed["data"] == done["results"]


async def test_async_json_lines_via_query_mode(config_factory: ConfigFactory,
                                               fake_openai: FakeOpenAI,
                                               start_proxy: StartProxy) -> None:
    proxy = await start_proxy(make_config(config_factory, fake_openai))
    data = b"".join(json.dumps(chat_item(f"l{i}")).encode() + b"\n" for i in range(2))
    status, _, created = await request(proxy, "POST", "/api/v1/batch?mode=async", data=data,
                                       headers={"Content-Type": "application/x-ndjson"})
    assert status == 202 and created["status"] == "in_progress"
    done = await wait_until(proxy, created["id"])
    assert [r["custom_id"] for r in done["results"]] == ["l0", "l1"]
    assert statuses(done) == [200, 200]


# -- JSON lines input ---------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["application/x-ndjson", "application/jsonl"])
async def test_json_lines_input(openai_proxy: Proxy, fake_openai: FakeOpenAI,
                                content_type: str) -> None:
    embed = {"custom_id": "embed", "method": "POST", "url": "/v1/embeddings",
             "body": {"model": "openai/text-embedding-3-small", "input": "x"}}
    data = (json.dumps(chat_item("first")).encode() + b"\n"
            + b"\n"  # blank lines are skipped
            + b'{"custom_id": "broken", "method": \n'  # garbage: fails alone
            + json.dumps(embed).encode() + b"\r\n"
            + b"[1, 2]\n"  # JSON but not an object
            + json.dumps(chat_item("last")).encode())  # no final newline
    status, _, body = await request(openai_proxy, "POST", "/api/v1/batch", data=data,
                                    headers={"Content-Type": content_type})
    assert status == 200, body
    assert body["status"] == "completed"
    assert body["request_counts"] == {"total": 5, "completed": 3, "failed": 2}
    results = body["results"]
    assert [r["custom_id"] for r in results] == ["first", None, "embed", None, "last"]
    assert statuses(body) == [200, None, 200, None, 200]
    assert_item_error(results[1], "invalid_json")
    assert "line 3" in results[1]["error"]["message"]
    assert_item_error(results[3], "invalid_request")
    assert len(fake_openai.requests) == 3


@pytest.mark.parametrize(("data", "query", "status_code", "code"), [
    (b"", "", 400, "invalid_request"),  # no items
    (b"\n\n", "", 400, "invalid_request"),
    (json.dumps(chat_item("a")).encode(), "?mode=later", 400, "invalid_request"),
])
async def test_json_lines_whole_batch_errors(openai_proxy: Proxy, data: bytes, query: str,
                                            status_code: int, code: str) -> None:
    status, _, body = await request(openai_proxy, "POST", f"/api/v1/batch{query}", data=data,
                                    headers={"Content-Type": "application/x-ndjson"})
    assert status == status_code
    assert_envelope(body, "invalid_request_error", code)


async def test_json_lines_duplicate_custom_id(openai_proxy: Proxy) -> None:
    line = json.dumps(chat_item("same")).encode()
    status, _, body = await request(openai_proxy, "POST", "/api/v1/batch",
                                    data=line + b"\n" + line,
                                    headers={"Content-Type": "application/jsonl"})
    assert status == 400 and "same" in body["error"]["message"]


# -- cancel -------------------------------------------------------------------------------


async def test_cancel_stops_items_not_yet_started(config_factory: ConfigFactory,
                                                  aiohttp_server: Server,
                                                  start_proxy: StartProxy) -> None:
    fake = await serve_fake(aiohttp_server, TrackingOpenAI(delay_s=0.4))
    proxy = await start_proxy(make_config(config_factory, fake, batch={"max_concurrency": 1}))
    status, _, created = await post_batch(proxy, [chat_item(f"k{i}") for i in range(5)],
                                          mode="async")
    assert status == 202
    batch_id = created["id"]
    await wait_for(lambda: len(fake.requests) == 1)  # k0 is running
    status, _, cancelled = await request(proxy, "POST", f"/api/v1/batch/{batch_id}/cancel")
    assert status == 200, cancelled
    assert cancelled["id"] == batch_id
    assert cancelled["status"] in ("cancelling", "cancelled")
    done = await wait_until(proxy, batch_id)
    assert done["status"] == "cancelled"
    assert done["completed_at"] is not None
    results = done["results"]
    assert [r["custom_id"] for r in results] == [f"k{i}" for i in range(5)]
    assert results[0]["response"]["status_code"] == 200  # already running: finishes
    for result in results[1:]:
        assert_item_error(result, "batch_cancelled")
    assert done["request_counts"] == {"total": 5, "completed": 1, "failed": 4}
    await asyncio.sleep(0.1)
    assert len(fake.requests) == 1
    # Cancelling a finished batch changes nothing.
    status, _, again = await request(proxy, "POST", f"/api/v1/batch/{batch_id}/cancel")
    assert status == 200 and again["status"] == "cancelled"


async def test_cancel_of_a_completed_batch_keeps_it_completed(openai_proxy: Proxy) -> None:
    _, _, body = await post_batch(openai_proxy, [chat_item("a")])
    status, _, after = await request(openai_proxy, "POST", f"/api/v1/batch/{body['id']}/cancel")
    assert status == 200
    assert after["status"] == "completed"
    assert after["results"] == body["results"]


# -- isolation ----------------------------------------------------------------------------


async def test_other_keys_cannot_see_or_cancel_a_batch(config_factory: ConfigFactory,
                                                       aiohttp_server: Server,
                                                       start_proxy: StartProxy) -> None:
    fake = await serve_fake(aiohttp_server, TrackingOpenAI(delay_s=0.2))
    proxy = await start_proxy(make_config(config_factory, fake, batch={"max_concurrency": 1}))
    _, _, finished = await post_batch(proxy, [chat_item("s0")])
    _, _, running = await post_batch(proxy, [chat_item(f"r{i}") for i in range(3)],
                                     mode="async")
    for batch_id in (finished["id"], running["id"], "batch_000000000000000000000000",
                     "nonsense"):
        for method, path in (("GET", f"/api/v1/batch/{batch_id}"),
                             ("GET", f"/api/v1/batch/{batch_id}/results"),
                             ("POST", f"/api/v1/batch/{batch_id}/cancel")):
            status, _, body = await request(proxy, method, path, key=BOB_KEY)
            assert status == 404, (method, path, body)
            assert_envelope(body, "not_found_error", "batch_not_found")
            assert "s0" not in json.dumps(body) and "r0" not in json.dumps(body)
    for path in ("/api/v1/batch/batch_000000000000000000000000",
                 "/api/v1/batch/batch_000000000000000000000000/results"):
        status, _, body = await request(proxy, "GET", path)
        assert status == 404
        assert_envelope(body, "not_found_error", "batch_not_found")
    status, _, body = await request(proxy, "POST",
                                    "/api/v1/batch/batch_000000000000000000000000/cancel")
    assert status == 404 and body["error"]["code"] == "batch_not_found"
    # Bob's cancel did not touch alice's running batch.
    done = await wait_until(proxy, running["id"])
    assert done["status"] == "completed"
    assert statuses(done) == [200, 200, 200]


# -- restarts -----------------------------------------------------------------------------


async def start_server(aiohttp_server: Server, config: Config) -> TestServer:
    return await aiohttp_server(create_app(config))


async def results_so_far(server: TestServer, batch_id: str) -> list[dict[str, Any]]:
    status, _, body = await request(server, "GET", f"/api/v1/batch/{batch_id}/results")
    assert status == 200
    data: list[dict[str, Any]] = body["data"]
    return data


@pytest.mark.parametrize("grace_s", [5.0, 0.05], ids=["running-item-finishes",
                                                       "running-item-interrupted"])
async def test_async_batch_resumes_after_restart(config_factory: ConfigFactory,
                                                 aiohttp_server: Server,
                                                 grace_s: float) -> None:
    fake = await serve_fake(aiohttp_server, TrackingOpenAI(delay_s=0.5))
    config = make_config(config_factory, fake, batch={"max_concurrency": 1},
                         server={"shutdown_grace_s": grace_s})
    ids = [f"r{i}" for i in range(4)]
    server_a = await start_server(aiohttp_server, config)
    status, _, created = await post_batch(server_a, [chat_item(i) for i in ids], mode="async")
    assert status == 202
    batch_id = created["id"]
    await wait_until(server_a, batch_id, lambda b: b["request_counts"]["completed"] >= 1)
    await wait_for(lambda: len(fake.requests) == 2)  # r1 is running
    first = await results_so_far(server_a, batch_id)
    assert [r["custom_id"] for r in first] == ["r0"]

    await server_a.close()  # app cleanup: BatchRunner.close(grace), then the store closes
    after_a = len(fake.requests)
    assert after_a == 2  # nothing new started while shutting down

    server_b = await start_server(aiohttp_server, config)
    done = await wait_until(server_b, batch_id)
    assert done["status"] == "completed"
    results = done["results"]
    assert [r["custom_id"] for r in results] == ids  # nothing lost
    assert results[0] == first[0]  # done before the restart: kept as it was
    running = results[1]
    if grace_s > 1:
        assert running["response"]["status_code"] == 200
    else:
        assert_item_error(running, "interrupted")
    assert statuses(done)[2:] == [200, 200]  # pending ones ran on B
    assert fake.per_marker() == Counter(ids)  # no item ran twice
    assert fake.peak == 1
    counts = done["request_counts"]
    assert counts["total"] == 4 and counts["completed"] + counts["failed"] == 4


async def test_finished_batch_results_survive_restart(config_factory: ConfigFactory,
                                                      fake_openai: FakeOpenAI,
                                                      aiohttp_server: Server) -> None:
    config = make_config(config_factory, fake_openai)
    server_a = await start_server(aiohttp_server, config)
    _, _, sync_batch = await post_batch(server_a, [chat_item("s0"), chat_item("s1", model="x/y"),
                                                   {"custom_id": "s2", "url": "/nope",
                                                    "body": {}}])
    _, _, async_batch = await post_batch(server_a, [chat_item("a0")], mode="async")
    async_done = await wait_until(server_a, async_batch["id"])
    await server_a.close()

    server_b = await start_server(aiohttp_server, config)
    for before in (sync_batch, async_done):
        status, after = await get_batch(server_b, before["id"])
        assert status == 200
        assert after["status"] == "completed"
        assert after["results"] == before["results"]
        assert after["request_counts"] == before["request_counts"]
        assert after["created_at"] == before["created_at"]
        async with aiohttp.ClientSession() as session, session.get(
                url_of(server_b, f"/api/v1/batch/{before['id']}/results"),
                headers={**auth(), "Accept": "application/x-ndjson"}) as response:
            lines = [json.loads(line) for line in (await response.text()).splitlines()]
        assert lines == before["results"]
        status, _, body = await request(server_b, "GET", f"/api/v1/batch/{before['id']}",
                                        key=BOB_KEY)
        assert status == 404 and body["error"]["code"] == "batch_not_found"
    # Nothing ran again on B.
    assert len(fake_openai.requests) == 2


async def test_cancel_survives_restart(config_factory: ConfigFactory,
                                       aiohttp_server: Server) -> None:
    fake = await serve_fake(aiohttp_server, TrackingOpenAI(delay_s=0.5))
    config = make_config(config_factory, fake, batch={"max_concurrency": 1},
                         server={"shutdown_grace_s": 5})
    server_a = await start_server(aiohttp_server, config)
    _, _, created = await post_batch(server_a, [chat_item(f"k{i}") for i in range(4)],
                                     mode="async")
    batch_id = created["id"]
    await wait_for(lambda: len(fake.requests) == 1)  # k0 is running
    status, _, _ = await request(server_a, "POST", f"/api/v1/batch/{batch_id}/cancel")
    assert status == 200
    await server_a.close()  # k0 finishes within the grace period

    server_b = await start_server(aiohttp_server, config)
    done = await wait_until(server_b, batch_id)
    await asyncio.sleep(0.1)
    assert len(fake.requests) == 1  # the cancelled items never ran
    assert done["status"] == "cancelled"
    assert done["results"][0]["response"]["status_code"] == 200
    for result in done["results"][1:]:
        assert_item_error(result, "batch_cancelled")


async def test_abandoned_sync_batch_is_not_resumed(config_factory: ConfigFactory,
                                                   aiohttp_server: Server) -> None:
    fake = await serve_fake(aiohttp_server, TrackingOpenAI(delay_s=0.4))
    config = make_config(config_factory, fake, batch={"max_concurrency": 1},
                         server={"shutdown_grace_s": 5})
    server_a = await start_server(aiohttp_server, config)
    items = [chat_item(f"s{i}") for i in range(4)]
    timeout = aiohttp.ClientTimeout(total=0.6)
    with pytest.raises(asyncio.TimeoutError):
        async with aiohttp.ClientSession(timeout=timeout) as session, session.post(
                url_of(server_a, "/api/v1/batch"), headers=auth(), json={"requests": items}):
            pass
    # The client went away while s1 ran: the handler is cancelled, so is s1's upstream call.
    await asyncio.sleep(0.5)
    assert len(fake.requests) == 2
    await server_a.close()

    await start_server(aiohttp_server, config)
    await asyncio.sleep(1.2)  # room for B to (wrongly) run s2 and s3
    assert len(fake.requests) == 2, fake.per_marker()


async def test_batch_of_a_removed_key_is_closed_on_restart(config_factory: ConfigFactory,
                                                          aiohttp_server: Server) -> None:
    """Resume with the batch's key gone: its pending items are marked, never silently lost."""
    fake = await serve_fake(aiohttp_server, TrackingOpenAI(delay_s=0.4))
    config = make_config(config_factory, fake, batch={"max_concurrency": 1},
                         server={"shutdown_grace_s": 5})
    server_a = await start_server(aiohttp_server, config)
    _, _, created = await post_batch(server_a, [chat_item(f"g{i}") for i in range(3)],
                                     mode="async")
    await wait_for(lambda: len(fake.requests) == 1)
    await server_a.close()  # g0 finishes; g1 and g2 stay pending

    without_alice = config_factory(
        providers={"openai": openai_provider(fake)}, models=models(),
        keys={"bob": {"key_sha256": sha256(BOB_KEY)}}, batch={"max_concurrency": 1})
    server_b = await start_server(aiohttp_server, without_alice)
    await asyncio.sleep(0.2)
    await server_b.close()
    assert len(fake.requests) == 1
    db = sqlite3.connect(without_alice.storage.sqlite_path)
    try:
        (status,) = db.execute("SELECT status FROM batches WHERE id = ?",
                               (created["id"],)).fetchone()
        rows = db.execute("SELECT custom_id, state, result FROM batch_items WHERE batch_id = ? "
                          "ORDER BY idx", (created["id"],)).fetchall()
    finally:
        db.close()
    assert status == "completed"
    assert [(cid, state) for cid, state, _ in rows] == [("g0", "done"), ("g1", "done"),
                                                       ("g2", "done")]
    results = [json.loads(result) for _, _, result in rows]
    assert results[0]["response"]["status_code"] == 200
    for result in results[1:]:
        assert_item_error(result, "interrupted")


async def test_drain_stops_starting_batch_items(config_factory: ConfigFactory,
                                                aiohttp_server: Server) -> None:
    """SIGTERM semantics as `serve` has them (web.run_app's shutdown_timeout = grace): a
    draining proxy starts no new batch item and is done within the grace period."""
    grace = 1.0
    fake = await serve_fake(aiohttp_server, TrackingOpenAI(delay_s=0.8))
    config = make_config(config_factory, fake, batch={"max_concurrency": 1},
                         server={"shutdown_grace_s": grace})
    runner = web.AppRunner(create_app(config), shutdown_timeout=grace,
                           handler_cancellation=True)
    await runner.setup()
    cleaned = False
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}"
        status, _, _ = await post_batch(base, [chat_item(f"d{i}") for i in range(3)],
                                        mode="async")
        assert status == 202
        await wait_for(lambda: len(fake.requests) == 1)  # d0 is running
        fake.then(Behaviour(delay_s=0.95))  # an ordinary request in flight during the drain
        plain = asyncio.create_task(request(base, "POST", "/api/v1/chat/completions",
                                            json_body=chat_item("plain")["body"]))
        await wait_for(lambda: len(fake.requests) == 2)
        started = time.monotonic()
        cleaned = True
        await runner.cleanup()
        elapsed = time.monotonic() - started
        status, _, _ = await plain
        assert status == 200  # the in-flight request finished
        assert fake.per_marker() == Counter({"d0": 1, "plain": 1})  # no item started
        assert elapsed <= grace + 0.25
    finally:
        if not cleaned:
            await runner.cleanup()
