"""Hostile input over real sockets.

Garbage of every kind — malformed, truncated, deeply nested and invalid-UTF-8 JSON, wrong
types in every field, a 100 MB body, a slow-drip body, huge and repeated headers, header
injection through X-AnyRouter-Trace-Id — is answered with the right 4xx error envelope
(JSON content type), and the proxy serves a normal request right after each one.

Two routes per endpoint: one that *translates* (the gateway validates the body itself, so a
wrong type is its 400 and the upstream gets nothing) and one that *passes through* (the
upstream judges the body: the fake answers 400 and the proxy hands that on as an envelope,
never a 5xx of its own). In-process proxies get the protocol-error envelopes the real
server installs (`answer_protocol_errors_as_envelopes`); the 100 MB test runs the real
`anyrouter-proxy serve` process so its memory can be read from /proc.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from anyrouter_proxy.config.model import Config
from anyrouter_proxy.server.protocol import answer_protocol_errors_as_envelopes
from tests.conftest import (
    ALICE_KEY,
    ConfigFactory,
    Proxy,
    anthropic_provider,
    auth,
    openai_provider,
    sha256,
)
from tests.fakes import ANSWER, Behaviour, FakeAnthropic, FakeOpenAI
from tests.net import free_port

StartProxy = Callable[[Config], Awaitable[Proxy]]

GPT = "openai/gpt-4o-mini"  # an openai-kind route
CLAUDE = "anthropic/claude"  # an anthropic-kind route
CHAT_PATH = "/api/v1/chat/completions"
MESSAGES_PATH = "/api/v1/messages"
USER = [{"role": "user", "content": "hi"}]
MAX_BODY = 1024 * 1024
BODY_TIMEOUT_S = 1.0


# -- fakes that judge a body the way a real API does -----------------------------------------

class JudgingOpenAI(FakeOpenAI):
    """FakeOpenAI, but a body it cannot make sense of is its 400, as with the real API."""

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        try:
            return await super()._generate(request, chat=chat)
        except (AttributeError, TypeError, KeyError, IndexError):
            return web.json_response({"error": {"message": "fake: invalid body",
                                                "type": "invalid_request_error",
                                                "code": None, "param": None}}, status=400)


class JudgingAnthropic(FakeAnthropic):
    async def _messages(self, request: web.Request) -> web.StreamResponse:
        try:
            return await super()._messages(request)
        except (AttributeError, TypeError, KeyError, IndexError):
            return web.json_response({"type": "error", "error": {
                "type": "invalid_request_error", "message": "fake: invalid body"}}, status=400)


UPSTREAM_400_OPENAI = Behaviour(status=400, body={"error": {
    "message": "upstream says: bad field", "type": "invalid_request_error", "code": None,
    "param": None}})
UPSTREAM_400_ANTHROPIC = Behaviour(status=400, body={"type": "error", "error": {
    "type": "invalid_request_error", "message": "upstream says: bad field"}})


class Hostile:
    """The proxy under attack, its two fakes, and the checks every test repeats."""

    def __init__(self, proxy: Proxy, openai_fake: JudgingOpenAI,
                 anthropic_fake: JudgingAnthropic) -> None:
        self.proxy = proxy
        self.openai = openai_fake
        self.anthropic = anthropic_fake

    @property
    def port(self) -> int:
        port = self.proxy.server.port
        assert port is not None
        return port

    def upstream_requests(self) -> int:
        return len(self.openai.requests) + len(self.anthropic.requests)

    async def assert_serving(self) -> None:
        """A normal request on each route succeeds (and the fakes' scripts are reset)."""
        self.openai.script.clear()
        self.anthropic.script.clear()
        async with aiohttp.ClientSession() as session:
            for model in (GPT, CLAUDE):
                async with session.post(self.proxy.url(CHAT_PATH), headers=auth(),
                                        json={"model": model, "messages": USER}) as response:
                    assert response.status == 200, await response.text()
                    body = await response.json()
                    assert body["choices"][0]["message"]["content"] == ANSWER


async def serve_fake(aiohttp_server: Any, fake: FakeOpenAI | FakeAnthropic) -> None:
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url("/v1"))  # type: ignore[union-attr]


@pytest.fixture
async def hostile(config_factory: ConfigFactory, aiohttp_server: Any,
                  start_proxy: StartProxy) -> Hostile:
    openai_fake, anthropic_fake = JudgingOpenAI("openai"), JudgingAnthropic("anthropic")
    await serve_fake(aiohttp_server, openai_fake)
    await serve_fake(aiohttp_server, anthropic_fake)
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(openai_fake),
                   "anthropic": anthropic_provider(anthropic_fake)},
        models={GPT: {"routes": [{"provider": "openai", "model": "gpt-4o-mini"}]},
                CLAUDE: {"routes": [{"provider": "anthropic", "model": "claude-x"}]}},
        server={"max_body_bytes": MAX_BODY, "body_timeout_s": BODY_TIMEOUT_S,
                "retries": 0, "sse_keepalive": False}))
    assert proxy.server.runner is not None and proxy.server.runner.server is not None
    answer_protocol_errors_as_envelopes(proxy.server.runner.server)
    return Hostile(proxy, openai_fake, anthropic_fake)


# -- helpers -----------------------------------------------------------------------------------

STATUS_TYPES = {401: "authentication_error", 402: "insufficient_credits",
                403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


def assert_envelope(status: int, content_type: str, body: bytes, expected_status: int | None,
                    code: str | None = None, *, param: str | None = None,
                    anthropic: bool = False) -> dict[str, Any]:
    assert content_type.split(";")[0].strip() == "application/json", (status, body[:300])
    data = json.loads(body)
    assert isinstance(data, dict) and isinstance(data.get("error"), dict), body[:300]
    error = data["error"]
    assert set(error) >= {"message", "type", "code", "param"}, error
    assert isinstance(error["message"], str) and error["message"]
    if expected_status is not None:
        assert status == expected_status, (status, body[:300])
    assert 400 <= status < 500, (status, body[:300])
    assert error["type"] == STATUS_TYPES.get(status, "invalid_request_error"), error
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    if anthropic:
        assert data.get("type") == "error"
    return data


async def post_raw(hostile: Hostile, path: str, data: bytes | Any, *,
                   headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as session, session.post(
            hostile.proxy.url(path), data=data,
            headers={**auth(), "Content-Type": "application/json", **(headers or {})}
            ) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.read()


async def post_json(hostile: Hostile, path: str, body: Any) -> tuple[int, str, bytes]:
    return await post_raw(hostile, path, json.dumps(body).encode())


class RawResponse:
    def __init__(self, status: int, header_lines: list[str], body: bytes) -> None:
        self.status = status
        self.header_lines = header_lines
        self.body = body

    def header(self, name: str) -> str | None:
        for line in self.header_lines:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    @property
    def content_type(self) -> str:
        return self.header("Content-Type") or ""


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    response = RawResponse(status, [line for line in lines[1:] if line], b"")
    length = response.header("Content-Length")
    if length is not None:
        response.body = await reader.readexactly(int(length))
    else:
        response.body = await reader.read()
    return response


async def raw_exchange(port: int, request: bytes, timeout_s: float = 10.0) -> RawResponse:
    """Bytes exactly as given (what a normal client refuses to send), the answer parsed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            return await read_response(reader)
    finally:
        writer.close()


def http_request(path: str, body: bytes = b"", headers: list[str] | None = None,
                 method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1",
             f"Authorization: Bearer {ALICE_KEY}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", "Connection: close", *(headers or [])]
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


def valid_chat(model: str = GPT) -> bytes:
    return json.dumps({"model": model, "messages": USER}).encode()


# -- malformed, truncated, nested, invalid UTF-8 -----------------------------------------------

VALID = valid_chat()
MALFORMED: dict[str, bytes] = {
    "empty": b"",
    "whitespace": b"  \n\t ",
    "not json": b"model=gpt&messages=hi",
    "single quotes": b"{'model': 'openai/gpt-4o-mini'}",
    "trailing comma": b'{"model": "openai/gpt-4o-mini", "messages": [],}',
    "unquoted key": b'{model: "openai/gpt-4o-mini"}',
    "NaN": b'{"model": "openai/gpt-4o-mini", "temperature": NaN}',
    "two documents": VALID + VALID,
    "garbage after": VALID + b"garbage",
    "comment": b'{"model": "openai/gpt-4o-mini" /* hi */}',
    "null byte": b"\x00" + VALID,
    "bom": b"\xef\xbb\xbf" + VALID,
    "lone surrogate escape": b'{"model": "\\ud800", "messages": []}',
    "huge number": b'{"model": "openai/gpt-4o-mini", "max_tokens": 1e999}',
    "array": b"[" + VALID + b"]",
    "string": b'"hello"',
    "number": b"42",
    "null": b"null",
    "true": b"true",
    "deep array": b"[" * 100_000,
    "deep array closed": b"[" * 100_000 + b"]" * 100_000,
    "deep object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "deep in messages": b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", '
                        b'"content": ' + b"[" * 50_000 + b"]" * 50_000 + b"}]}",
    "invalid utf-8": b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", '
                     b'"content": "\xff\xfe\xc3\x28"}]}',
    "overlong utf-8": b'{"model": "\xc0\xaf"}',
    "utf-16": VALID.decode().encode("utf-16"),
    "latin-1 in string": b'{"model": "caf\xe9"}',
}
MALFORMED.update({f"truncated at {n}": VALID[:n] for n in (1, 10, len(VALID) // 2,
                                                         len(VALID) - 1)})


@pytest.mark.parametrize("path", [CHAT_PATH, MESSAGES_PATH])
@pytest.mark.parametrize("name", sorted(MALFORMED))
async def test_malformed_json_is_400_invalid_json(hostile: Hostile, path: str, name: str) -> None:
    started = time.monotonic()
    status, content_type, body = await post_raw(hostile, path, MALFORMED[name])
    assert time.monotonic() - started < 5
    assert_envelope(status, content_type, body, 400, "invalid_json",
                    anthropic=path == MESSAGES_PATH)
    assert hostile.upstream_requests() == 0
    await hostile.assert_serving()


async def test_nesting_orjson_reads_but_cannot_write_is_refused_not_500(hostile: Hostile) -> None:
    """Depth 255..1024 parses (orjson.loads allows 1024 levels) but orjson.dumps refuses
    more than 254: a passthrough must still not turn it into a 500."""
    deep = "[" * 400 + "]" * 400
    raw = ('{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi", '
           f'"extra": {deep}}}]}}').encode()
    status, content_type, body = await post_raw(hostile, CHAT_PATH, raw)
    assert status < 500, body
    assert_envelope(status, content_type, body, 400)
    await hostile.assert_serving()


# -- wrong types in every field ------------------------------------------------------------------

def chat(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": GPT, "messages": USER}
    for name, value in fields.items():
        if value is ABSENT:
            body.pop(name, None)
        else:
            body[name] = value
    return body


ABSENT = object()
# field -> (values of the wrong type, what to build the body from)
CHAT_WRONG: dict[str, list[Any]] = {
    "model": [5, 1.5, True, ["openai/gpt-4o-mini"], {"id": "openai/gpt-4o-mini"}, "", ABSENT,
              None],
    "messages": ["hi", 5, True, {}, {"role": "user", "content": "hi"}, [], None, ABSENT],
    "messages[i]": [[5], ["hi"], [None], [[]], [True], [{"role": "user", "content": "hi"}, 7]],
    "role": [5, None, ["user"], {}, True, "wizard", ""],
    "content": [5, True, {"text": "hi"}, [5], [None], [{"type": 5}], [{"type": "text"}],
                [{"type": "text", "text": 5}], [{"type": "image_url", "image_url": 5}]],
    "stream": ["true", 1, 0, [], {}, "false"],
    "stream_options": ["yes", 5, [], True],
    "max_tokens": ["10", 1.5, [], {}, True, -1, 0],
    "temperature": ["hot", [], {}, True],
    "tools": [{}, "search", 5, [5], ["f"], [{"type": "function", "function": 5}],
              [{"type": "function", "function": {"name": 5}}]],
    "tool_choice": [5, [], {"type": 5}, "sometimes", {"type": "function", "function": 5}],
    "n": ["2", 1.5, [], {}, True],
    "provider": ["openai", 5, [], True, {"order": "openai"}, {"only": [5]},
                {"allow_fallbacks": "yes"}, {"sort": []}, {"sort": "cheapest"}],
    "models": ["openai/gpt-4o-mini", 5, [5], {}, [[]], [""], True],
}
# Rejected by the gateway itself whatever the route (the upstream never sees them).
GATEWAY_CHECKED = {"model", "messages", "stream", "stream_options", "provider", "models",
                   "max_tokens", "n"}


def chat_case(field: str, value: Any, model: str) -> dict[str, Any]:
    if field == "messages[i]":
        return chat(model=model, messages=value)
    if field == "role":
        message = {"content": "hi"} if value is ABSENT else {"role": value, "content": "hi"}
        return chat(model=model, messages=[message])
    if field == "content":
        return chat(model=model, messages=[{"role": "user", "content": value}])
    if field == "model":
        return chat(model=value)
    return chat(model=model, **{field: value})


async def assert_refused(hostile: Hostile, path: str, body: dict[str, Any], *,
                         passthrough: bool, gateway_checked: bool, field: str) -> None:
    fake = hostile.openai if (path == CHAT_PATH) == passthrough else hostile.anthropic
    before = hostile.upstream_requests()
    fake.then(UPSTREAM_400_OPENAI if fake is hostile.openai else UPSTREAM_400_ANTHROPIC)
    status, content_type, raw = await post_json(hostile, path, body)
    context = f"{field}={body!r:.200} -> {status} {raw[:300]!r}"
    assert status < 500, context
    assert_envelope(status, content_type, raw, 400, anthropic=path == MESSAGES_PATH)
    reached = hostile.upstream_requests() - before
    if gateway_checked or not passthrough:
        # Translation (or the gateway's own checks): refused before anything goes upstream,
        # naming the field where there is one.
        assert reached == 0, context
        error = json.loads(raw)["error"]
        if field not in ("model", "messages", "messages[i]"):
            assert error["param"] is not None, context
    await hostile.assert_serving()


@pytest.mark.parametrize("route", ["translated", "passthrough"])
@pytest.mark.parametrize("field", sorted(CHAT_WRONG))
async def test_chat_wrong_types(hostile: Hostile, field: str, route: str) -> None:
    model = GPT if route == "passthrough" else CLAUDE
    for value in CHAT_WRONG[field]:
        body = chat_case(field, value, model)
        await assert_refused(hostile, CHAT_PATH, body, passthrough=route == "passthrough",
                             gateway_checked=field in GATEWAY_CHECKED, field=field)


def messages_body(model: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": 50, "messages": USER}
    for name, value in fields.items():
        if value is ABSENT:
            body.pop(name, None)
        else:
            body[name] = value
    return body


MESSAGES_WRONG: dict[str, list[Any]] = {
    "model": [5, True, [CLAUDE], {"id": CLAUDE}, "", None, ABSENT],
    "messages": ["hi", 5, {}, [], None, ABSENT, [5], ["hi"], [None],
                 [{"role": 5, "content": "hi"}], [{"role": "user", "content": 5}],
                 [{"role": "user", "content": [5]}]],
    "max_tokens": ["50", 1.5, [], {}, True, None, ABSENT, -1, 0],
    "system": [5, True, {}, [5], [{"type": "image"}], [{"type": "text", "text": 5}]],
    "tools": [{}, "search", 5, [5], [{"name": 5}], [{"name": "f", "input_schema": 5}]],
    "thinking": ["on", 5, [], True, {"type": 5},
                 {"type": "enabled", "budget_tokens": "many"}],
}
MESSAGES_GATEWAY_CHECKED = {"model", "messages", "max_tokens"}


@pytest.mark.parametrize("route", ["translated", "passthrough"])
@pytest.mark.parametrize("field", sorted(MESSAGES_WRONG))
async def test_messages_wrong_types(hostile: Hostile, field: str, route: str) -> None:
    model = CLAUDE if route == "passthrough" else GPT
    for value in MESSAGES_WRONG[field]:
        body = messages_body(CLAUDE if field == "model" else model)
        if value is ABSENT:
            del body[field]
        else:
            body[field] = value
        # The gateway checks the types of these itself (max_tokens: a positive integer);
        # the items of a non-empty messages list are the upstream's to judge.
        gateway_checked = field in MESSAGES_GATEWAY_CHECKED and not (
            field == "messages" and isinstance(value, list) and value)
        await assert_refused(hostile, MESSAGES_PATH, body, passthrough=route == "passthrough",
                             gateway_checked=gateway_checked, field=field)


async def test_deeply_nested_tool_arguments_are_a_400(hostile: Hostile) -> None:
    body = chat(model=CLAUDE, messages=[
        *USER, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "f", "arguments": "[" * 60_000}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"}])
    status, content_type, raw = await post_json(hostile, CHAT_PATH, body)
    assert_envelope(status, content_type, raw, 400,
                    param="messages[1].tool_calls[0].function.arguments")
    await hostile.assert_serving()


NULLABLE_TOOL = {"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"x": {"type": ["string", "null"]}}}}}


@pytest.mark.parametrize("shape", ["plain", "message type list", "nullable tool schema"])
async def test_prompt_estimate_cannot_be_zeroed_by_an_odd_shape(
        config_factory: ConfigFactory, aiohttp_server: Any, start_proxy: StartProxy,
        shape: str, request: pytest.FixtureRequest) -> None:
    """Credits are checked on the prompt estimate before anything goes upstream:
    an unhashable "type" anywhere in the prompt (a hostile `"type": []` on a message, or a
    perfectly ordinary JSON Schema `"type": ["string", "null"]` in a tool) must not make a
    huge prompt look free."""
    fake = JudgingOpenAI("openai")
    await serve_fake(aiohttp_server, fake)
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake)},
        models={GPT: {"pricing": {"prompt": 10, "completion": 10},
                      "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
        keys={"alice": {"key_sha256": sha256(ALICE_KEY), "credits": 0.01}}))
    huge = "word " * 6000  # ~10000 estimated tokens: $0.10 at $10/M, over the $0.01 left
    async with aiohttp.ClientSession() as session:
        body: dict[str, Any] = {"model": GPT, "max_tokens": 10,
                                "messages": [{"role": "user", "content": huge}]}
        if shape == "message type list":
            body["messages"][0]["type"] = []
        elif shape == "nullable tool schema":
            body["tools"] = [NULLABLE_TOOL]
        async with session.post(proxy.url(CHAT_PATH), headers=auth(), json=body) as response:
            assert response.status == 402, await response.text()
    assert fake.requests == []


# -- a 100 MB body -------------------------------------------------------------------------------


class Served:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
async def served(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                 tmp_path: Path) -> AsyncIterator[Served]:
    """The real `anyrouter-proxy serve` process (protocol envelopes installed by its runner)."""
    config = config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models={GPT: {"routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
        server={"max_body_bytes": 1024 * 1024, "body_timeout_s": BODY_TIMEOUT_S})
    assert config.path is not None
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "anyrouter_proxy", "serve", "--config", str(config.path),
            "--port", str(port), stdout=out, stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = Served(proc, port, log)
    try:
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            while True:
                assert proc.returncode is None, server.output()
                try:
                    async with session.get(server.url("/health")) as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, server.output()
                await asyncio.sleep(0.05)
        yield server
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def served_chat_ok(server: Served) -> None:
    async with aiohttp.ClientSession() as session, session.post(
            server.url(CHAT_PATH), headers=auth(),
            json={"model": GPT, "messages": USER}) as response:
        assert response.status == 200, await response.text()


HUNDRED_MB = 100 * 1024 * 1024
PIECE = b"x" * (256 * 1024)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
async def test_100mb_body_with_content_length_is_413_without_reading_it(served: Served) -> None:
    rss_before = served.rss_kib()
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    started = time.monotonic()
    try:
        head = (f"POST {CHAT_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE_KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {HUNDRED_MB}\r\n\r\n")
        writer.write(head.encode() + b'{"model": "' + PIECE)
        await writer.drain()
        sent = len(PIECE)

        async def feed() -> None:  # keep sending, a few MB at most, until the answer comes
            nonlocal sent
            with_error = (ConnectionError, OSError)
            try:
                while sent < 4 * 1024 * 1024:
                    writer.write(PIECE)
                    await writer.drain()
                    sent += len(PIECE)
            except with_error:
                pass

        feeder = asyncio.ensure_future(feed())
        async with asyncio.timeout(5):
            response = await read_response(reader)
        elapsed = time.monotonic() - started
        feeder.cancel()
    finally:
        writer.close()
    assert_envelope(response.status, response.content_type, response.body, 413,
                    "request_too_large")
    assert elapsed < 3
    grown_mib = (served.rss_kib() - rss_before) / 1024
    assert grown_mib < 30, f"RSS grew by {grown_mib:.0f} MiB"
    await served_chat_ok(served)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
async def test_100mb_chunked_body_is_413_at_the_limit(served: Served) -> None:
    """No Content-Length: the proxy counts as it reads and stops at max_body_bytes (1 MiB)."""
    rss_before = served.rss_kib()
    sent = 0
    peak_rss = rss_before

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent, peak_rss
        yield b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "'
        while sent < HUNDRED_MB:
            yield PIECE
            sent += len(PIECE)
            if sent % (8 * 1024 * 1024) == 0:
                peak_rss = max(peak_rss, served.rss_kib())

    started = time.monotonic()
    status, content_type, raw = 0, "", b""
    async with aiohttp.ClientSession() as session:
        try:
            async with session.post(served.url(CHAT_PATH), data=body(), headers={
                    **auth(), "Content-Type": "application/json"}) as response:
                status, content_type = response.status, response.headers["Content-Type"]
                raw = await response.read()
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError,
                aiohttp.ClientPayloadError):
            pytest.fail(f"connection cut without an answer after {sent} bytes")
    elapsed = time.monotonic() - started
    assert_envelope(status, content_type, raw, 413, "request_too_large")
    assert elapsed < 15
    grown_mib = (max(peak_rss, served.rss_kib()) - rss_before) / 1024
    assert grown_mib < 40, f"RSS grew by {grown_mib:.0f} MiB while {sent} bytes were sent"
    await served_chat_ok(served)


def bomb_of(expanded: int, wbits: int) -> bytes:
    """A compressed body (gzip: wbits 31, deflate: 15) that inflates to `expanded` bytes of
    JSON whitespace (~1000:1)."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, wbits)
    parts = [compressor.compress(b'{"model": "openai/gpt-4o-mini", "messages": [')]
    block = b" " * (1024 * 1024)
    parts.extend(compressor.compress(block) for _ in range(expanded // len(block)))
    parts.append(compressor.compress(b"]}") + compressor.flush())
    return b"".join(parts)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_bomb_is_413_at_the_limit_without_inflating_it(
        served: Served, encoding: str) -> None:
    """Content-Length counts compressed bytes: the limit must hold for what it inflates to."""
    bomb = bomb_of(128 * 1024 * 1024, 31 if encoding == "gzip" else 15)
    rss_before = served.rss_kib()
    started = time.monotonic()
    async with aiohttp.ClientSession() as session, session.post(
            served.url(CHAT_PATH), data=io.BytesIO(bomb), headers={
                **auth(), "Content-Type": "application/json",
                "Content-Encoding": encoding}) as response:
        status, content_type = response.status, response.headers["Content-Type"]
        raw = await response.read()
    assert time.monotonic() - started < 10
    assert_envelope(status, content_type, raw, 413, "request_too_large")
    grown_mib = (served.rss_kib() - rss_before) / 1024
    assert grown_mib < 40, f"RSS grew by {grown_mib:.0f} MiB"
    await served_chat_ok(served)


async def test_body_over_limit_in_process_is_413_quickly(hostile: Hostile) -> None:
    started = time.monotonic()
    status, content_type, raw = await post_raw(
        hostile, CHAT_PATH, io.BytesIO(b'{"model": "' + b"x" * (4 * MAX_BODY) + b'"}'))
    assert_envelope(status, content_type, raw, 413, "request_too_large")
    assert time.monotonic() - started < 3
    assert hostile.upstream_requests() == 0
    await hostile.assert_serving()


# -- slow drip -----------------------------------------------------------------------------------

async def drip(port: int, head: bytes, body: bytes, interval_s: float, *,
               budget_s: float = 6.0, wait_close: bool = False
               ) -> tuple[RawResponse, float, float | None]:
    """Send the head, then the body a byte at a time; return the answer, when it came, and
    (`wait_close`) when the server closed the connection (None: still open at the budget)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(head)
    await writer.drain()

    async def trickle() -> None:
        try:
            for byte in body:
                await asyncio.sleep(interval_s)
                writer.write(bytes([byte]))
                await writer.drain()
        except (ConnectionError, OSError):
            pass

    trickler = asyncio.ensure_future(trickle())
    try:
        async with asyncio.timeout(budget_s):
            response = await read_response(reader)
        answered = time.monotonic() - started
        closed: float | None = None
        if not wait_close:
            return response, answered, closed
        try:
            async with asyncio.timeout(budget_s):
                while await reader.read(1024):
                    pass
            closed = time.monotonic() - started
        except TimeoutError:
            pass
        return response, answered, closed
    finally:
        trickler.cancel()
        writer.close()


async def test_slow_drip_body_is_cut_off_with_408(hostile: Hostile) -> None:
    body = valid_chat()
    head = http_request(CHAT_PATH, body)[: -len(body)]
    response, answered, _ = await drip(hostile.port, head, body, 0.2)
    assert_envelope(response.status, response.content_type, response.body, 408,
                    "request_timeout")
    assert BODY_TIMEOUT_S * 0.8 <= answered < BODY_TIMEOUT_S + 1.5, answered
    assert hostile.upstream_requests() == 0
    await hostile.assert_serving()


async def test_slow_drip_chunked_body_is_cut_off_with_408(hostile: Hostile) -> None:
    async def body() -> AsyncIterator[bytes]:
        for byte in valid_chat():
            await asyncio.sleep(0.2)
            yield bytes([byte])

    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        try:
            async with session.post(hostile.proxy.url(CHAT_PATH), data=body(), headers={
                    **auth(), "Content-Type": "application/json"}) as response:
                status, content_type = response.status, response.headers["Content-Type"]
                raw = await response.read()
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
            pytest.fail(f"no 408 answer: {exc!r}")
    assert time.monotonic() - started < BODY_TIMEOUT_S + 2
    assert_envelope(status, content_type, raw, 408, "request_timeout")
    await hostile.assert_serving()


async def test_slow_drip_connection_is_closed_after_the_408(hostile: Hostile) -> None:
    body = valid_chat()
    head = http_request(CHAT_PATH, body)[: -len(body)]
    response, answered, closed = await drip(hostile.port, head, body, 0.2, budget_s=4,
                                             wait_close=True)
    assert response.status == 408
    assert closed is not None and closed - answered < 1.0, (answered, closed)


# -- headers: huge, repeated, injected -------------------------------------------------------

async def assert_protocol_refusal(hostile: Hostile, request: bytes,
                                  statuses: tuple[int, ...] = (400, 431)) -> RawResponse:
    response = await raw_exchange(hostile.port, request)
    assert response.status in statuses, (response.status, response.body[:300])
    assert_envelope(response.status, response.content_type, response.body, None)
    await hostile.assert_serving()
    return response


async def test_20kb_header_is_a_4xx_envelope(hostile: Hostile) -> None:
    await assert_protocol_refusal(hostile, http_request(CHAT_PATH, VALID,
                                                        [f"X-Big: {'a' * 20_000}"]))


async def test_20kb_header_name_is_a_4xx_envelope(hostile: Hostile) -> None:
    await assert_protocol_refusal(hostile, http_request(CHAT_PATH, VALID,
                                                        [f"X-{'a' * 20_000}: 1"]))


async def test_huge_request_line_is_a_4xx_envelope(hostile: Hostile) -> None:
    await assert_protocol_refusal(
        hostile, http_request(CHAT_PATH + "?" + "q" * 20_000, VALID), (400, 414, 431))


async def test_200_repeated_headers_are_a_4xx_envelope(hostile: Hostile) -> None:
    await assert_protocol_refusal(hostile, http_request(
        CHAT_PATH, VALID, [f"X-Repeat: {i}" for i in range(200)]))


async def test_many_large_headers_are_a_4xx_envelope(hostile: Hostile) -> None:
    """Each under the per-field limit, 1 MB together."""
    await assert_protocol_refusal(hostile, http_request(
        CHAT_PATH, VALID, [f"X-H{i}: {'v' * 8000}" for i in range(125)]))


@pytest.mark.parametrize("header", ["Content-Length: 5", "Transfer-Encoding: chunked"])
async def test_conflicting_framing_headers_are_refused(hostile: Hostile, header: str) -> None:
    """A second Content-Length, or Content-Length with chunked: request smuggling."""
    await assert_protocol_refusal(hostile, http_request(CHAT_PATH, VALID, [header]))


@pytest.mark.parametrize("name", ["Authorization", "X-AnyRouter-Trace-Id", "X-AnyRouter-Provider"])
async def test_repeated_control_headers_never_fail_open(hostile: Hostile, name: str) -> None:
    """Two copies of a header the gateway acts on: refused, or the first copy wins — never a
    5xx, and never a wrong key let in."""
    values = {"Authorization": ["Bearer wrong-key", f"Bearer {ALICE_KEY}"],
              "X-AnyRouter-Trace-Id": ["first", "second"],
              "X-AnyRouter-Provider": ["nope", "openai"]}[name]
    request = http_request(CHAT_PATH, VALID, [f"{name}: {v}" for v in values])
    if name == "Authorization":  # only the repeated copies, not http_request's own
        request = request.replace(f"Authorization: Bearer {ALICE_KEY}\r\n".encode(), b"", 1)
    response = await raw_exchange(hostile.port, request)
    assert response.status < 500, response.body[:300]
    if name == "Authorization":
        assert response.status == 401
        assert_envelope(response.status, response.content_type, response.body, 401)
    elif name == "X-AnyRouter-Provider":
        assert response.status == 400
    elif response.status == 200:
        assert response.header("X-AnyRouter-Trace-Id") == "first"
    await hostile.assert_serving()


INJECTIONS: dict[str, bytes] = {
    "bare LF": b"X-AnyRouter-Trace-Id: abc\nX-Injected: yes",
    "bare CR": b"X-AnyRouter-Trace-Id: abc\rX-Injected: yes",
    "CR CR LF": b"X-AnyRouter-Trace-Id: abc\r\r\nX-Injected: yes",
    "NUL": b"X-AnyRouter-Trace-Id: abc\x00X-Injected: yes",
    "obs-fold": b"X-AnyRouter-Trace-Id: abc\r\n X-Injected: yes",
    "encoded CRLF": b"X-AnyRouter-Trace-Id: abc%0d%0aX-Injected: yes",
    "tab": b"X-AnyRouter-Trace-Id: abc\tX-Injected: yes",
    "DEL": b"X-AnyRouter-Trace-Id: abc\x7fX-Injected",
    "ESC": b"X-AnyRouter-Trace-Id: \x1b[31mred",
    "utf-8": "X-AnyRouter-Trace-Id: trace-é-✓".encode(),
    "latin-1": b"X-AnyRouter-Trace-Id: caf\xe9",
    "invalid utf-8": b"X-AnyRouter-Trace-Id: \xff\xfe",
    "129 chars": b"X-AnyRouter-Trace-Id: " + b"t" * 129,
    "8 KB": b"X-AnyRouter-Trace-Id: " + b"t" * 8000,
    "empty": b"X-AnyRouter-Trace-Id: ",
    "spaces only": b"X-AnyRouter-Trace-Id:    ",
}


@pytest.mark.parametrize("name", sorted(INJECTIONS))
async def test_trace_id_injection(hostile: Hostile, name: str) -> None:
    head = http_request(CHAT_PATH, VALID)[: -len(VALID) - 2]  # keep the final CRLF out
    request = head + INJECTIONS[name] + b"\r\n\r\n" + VALID
    response = await raw_exchange(hostile.port, request)
    names = [line.partition(":")[0].strip().lower() for line in response.header_lines]
    assert "x-injected" not in names, response.header_lines
    echoed = response.header("X-AnyRouter-Trace-Id")
    if name == "encoded CRLF" and response.status == 200:
        assert echoed == "abc%0d%0aX-Injected: yes"  # printable ASCII: kept as text
    else:
        data = assert_envelope(response.status, response.content_type, response.body, 400)
        assert echoed is None
        if data["error"]["param"] is not None:  # the app saw it (the parser may refuse first)
            assert data["error"]["param"] == "X-AnyRouter-Trace-Id"
        elif name in ("129 chars", "utf-8", "latin-1", "invalid utf-8", "tab", "empty",
                      "spaces only"):  # the HTTP parser lets these through to the app
            pytest.fail(f"{name}: 400 without param from {response.body[:200]!r}")
    assert hostile.upstream_requests() == 0 or response.status == 200
    await hostile.assert_serving()


async def test_trace_id_of_128_printable_chars_is_echoed(hostile: Hostile) -> None:
    trace = "".join(chr(33 + i % 94) for i in range(128))
    response = await raw_exchange(hostile.port, http_request(
        CHAT_PATH, VALID, [f"X-AnyRouter-Trace-Id: {trace}"]))
    assert response.status == 200
    assert response.header("X-AnyRouter-Trace-Id") == trace


async def test_invalid_utf8_in_auth_header_is_401(hostile: Hostile) -> None:
    request = http_request(CHAT_PATH, VALID).replace(
        f"Bearer {ALICE_KEY}".encode(), b"Bearer \xff\xfe\x80key", 1)
    response = await raw_exchange(hostile.port, request)
    assert_envelope(response.status, response.content_type, response.body, 401,
                    "invalid_api_key")
    await hostile.assert_serving()


async def test_garbage_request_line_is_a_4xx_envelope(hostile: Hostile) -> None:
    for garbage in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # TLS hello
                    b"GET\r\n\r\n", b"POST /api/v1/chat/completions HTTP/9.9\r\n\r\n",
                    b"P\x00ST / HTTP/1.1\r\n\r\n"):
        response = await raw_exchange(hostile.port, garbage)
        assert response.status < 500 or response.status == 505, response.status
        if response.status < 500:
            assert_envelope(response.status, response.content_type, response.body, None)
        await hostile.assert_serving()


# -- Content-Type --------------------------------------------------------------------------------

@pytest.mark.parametrize(("content_type", "accepted"), [
    (None, True),  # curl --data-binary without -H: the body is still JSON
    ("application/json", True),
    ("application/json; charset=utf-8", True),
    ("Application/JSON", True),
    ("text/plain", False),
    ("application/x-www-form-urlencoded", False),  # curl -d's default
    ("multipart/form-data; boundary=x", False),
    ("application/xml", False),
    ("application/json-patch+json", False),
    ("application/jsonl", False),  # only /batch takes JSON lines
])
async def test_content_type(hostile: Hostile, content_type: str | None, accepted: bool) -> None:
    headers = [] if content_type is None else [f"Content-Type: {content_type}"]
    request = http_request(CHAT_PATH, VALID, headers).replace(
        b"Content-Type: application/json\r\n", b"", 1)
    response = await raw_exchange(hostile.port, request)
    if accepted:
        assert response.status == 200, response.body[:300]
    else:
        assert_envelope(response.status, response.content_type, response.body, 415,
                        "unsupported_media_type")
        assert hostile.upstream_requests() == 0
    await hostile.assert_serving()


async def test_wrong_method_and_unknown_path_under_hostile_bodies(hostile: Hostile) -> None:
    for method, path, status in (("PUT", CHAT_PATH, 405), ("DELETE", MESSAGES_PATH, 405),
                                 ("POST", "/api/v1/../../etc/passwd", 404),
                                 ("POST", "/api/v1/chat/completions%00", 404),
                                 ("POST", "/" + "a/" * 2000, 404)):
        response = await raw_exchange(hostile.port, http_request(path, MALFORMED["deep array"],
                                                                 method=method))
        assert_envelope(response.status, response.content_type, response.body, status)
    await hostile.assert_serving()


async def test_hostile_batch_items_fail_alone(hostile: Hostile) -> None:
    items = [{"custom_id": "deep", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": CLAUDE, "messages": [{"role": "user", "content": 5}]}},
             {"custom_id": "junk", "method": "POST", "url": 5, "body": "x"},
             {"custom_id": "ok", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": GPT, "messages": USER}}]
    status, content_type, raw = await post_json(hostile, "/api/v1/batch", {"requests": items})
    assert status == 200, raw[:300]
    results = {r["custom_id"]: r for r in json.loads(raw)["results"]}
    assert results["deep"]["response"]["status_code"] == 400
    assert results["junk"]["error"] is not None
    assert results["ok"]["response"]["status_code"] == 200
    for bad in (b"[" * 100_000, b'{"requests": 5}', b'{"requests": "x"}', b'{"requests": {}}',
                b'{"requests": [], "mode": 7}', b'{"requests": [{}], "mode": "later"}',
                b"{}", b"null"):
        status, content_type, raw = await post_raw(hostile, "/api/v1/batch", bad)
        assert status < 500, raw[:300]
        assert_envelope(status, content_type, raw, 400)
    for items in ([5], [None], ["x"], [[]], [{"custom_id": {}, "url": [], "body": 5}]):
        status, content_type, raw = await post_json(hostile, "/api/v1/batch",
                                                    {"requests": items})
        assert status == 200, raw[:300]  # a malformed item fails alone
        result = json.loads(raw)["results"][0]
        assert result["response"] is None and result["error"]["code"], result
    await hostile.assert_serving()


# -- invalid UTF-8 in the headers the gateway reads or forwards ----------------------------------

@pytest.mark.parametrize("name", ["X-AnyRouter-Provider", "x-api-key", "anthropic-version",
                                  "anthropic-beta", "X-Forwarded-For", "Origin", "Content-Type",
                                  "Accept", "User-Agent", "Cookie", "Host"])
@pytest.mark.parametrize("path", [CHAT_PATH, MESSAGES_PATH])
async def test_invalid_utf8_in_headers(hostile: Hostile, name: str, path: str) -> None:
    body = valid_chat(CLAUDE) if path == CHAT_PATH else json.dumps(
        {"model": CLAUDE, "max_tokens": 5, "messages": USER}).encode()
    request = http_request(path, body, [f"{name}: caf\udce9-\udcff".encode(
        "utf-8", "surrogateescape").decode("latin-1")])
    if name in ("Content-Type", "Host"):  # replace, not repeat
        request = request.replace(f"{name}: ".encode(), b"X-Replaced: ", 1)
    response = await raw_exchange(hostile.port, request)
    assert response.status < 500, (response.status, response.body[:300])
    if response.status >= 400:
        assert_envelope(response.status, response.content_type, response.body, None,
                        anthropic=path == MESSAGES_PATH)
    await hostile.assert_serving()
