"""Security — keys, leaks, isolation, routing, headers, client address, CORS.

Secrets are planted (unique client keys, provider keys, a provider header, prompt text)
and every output channel is grepped for them: response bodies and headers (errors
included), the logs at DEBUG (in-process records rendered by the proxy's own formatters,
and the real `serve` process's stdout), /metrics, /providers, /health, /generation, and
the bytes of the SQLite files. Then: keys only ever compared as hashes, one constant-time
comparison for known and unknown keys alike (counted, not timed); per-key isolation of
/generation, /batch, /auth/key and /credits; X-AnyRouter-Provider confined to the
model's routes; no request field can move the proxy's connection (a trap upstream must
stay untouched); hop-by-hop and client-identifying headers never reach an upstream;
X-Forwarded-For believed only from trusted proxies; CORS off by default, exact when on.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from anyrouter_proxy.config.loader import load_config
from anyrouter_proxy.config.model import Config
from anyrouter_proxy.logs import ACCESS, JsonFormatter, TextFormatter
from anyrouter_proxy.server.protocol import answer_protocol_errors_as_envelopes
from tests.conftest import ConfigFactory, Proxy, anthropic_provider, openai_provider, sha256
from tests.fakes import ANSWER, Behaviour, FakeAnthropic, FakeOpenAI
from tests.net import free_port

StartProxy = Callable[[Config], Awaitable[Proxy]]

GPT = "openai/gpt-4o-mini"
CLAUDE = "anthropic/claude"
EMBED = "openai/text-embedding-3-small"
CHAT_PATH = "/api/v1/chat/completions"
MESSAGES_PATH = "/api/v1/messages"


def planted(label: str) -> str:
    """A unique, recognisable secret for one test run."""
    return f"{label}-{os.urandom(12).hex()}"


class Secrets:
    def __init__(self) -> None:
        self.alice = planted("sk-ar-alice-PLANTED")
        self.bob = planted("sk-ar-bob-PLANTED")
        self.unknown = planted("sk-ar-unknown-PLANTED")
        self.openai = planted("sk-provider-openai-PLANTED")
        self.anthropic = planted("sk-provider-anthropic-PLANTED")
        self.dead = planted("sk-provider-dead-PLANTED")
        self.org = planted("org-header-PLANTED")
        self.prompt = planted("prompt-text-PLANTED")

    def client_keys(self) -> dict[str, str]:
        # A presented unknown key may leave its first 8 characters in the audit trail
        # (`key_prefix`); nothing after them.
        return {"alice key": self.alice, "bob key": self.bob,
                "unknown key (past its prefix)": self.unknown[8:]}

    def provider_keys(self) -> dict[str, str]:
        return {"openai provider key": self.openai, "anthropic provider key": self.anthropic,
                "dead provider key": self.dead, "provider header": self.org}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_absent(channels: dict[str, bytes | str], secrets: dict[str, str]) -> None:
    leaks = []
    for channel, content in channels.items():
        data = content.encode("utf-8", "surrogateescape") if isinstance(content, str) \
            else content
        for what, secret in secrets.items():
            if secret.encode() in data:
                at = data.index(secret.encode())
                leaks.append(f"{what} in {channel}: ...{data[max(0, at - 120):at + 40]!r}")
    assert not leaks, "\n".join(leaks)


class Seen:
    """Every answer a client got (status, headers, body), for grepping."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.answers: list[bytes] = []

    async def call(self, method: str, path: str, key: str | None, *, body: Any = None,
                   headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        sent = {**(bearer(key) if key else {}), **(headers or {})}
        async with aiohttp.ClientSession() as session, session.request(
                method, self.proxy.url(path), json=body, headers=sent) as response:
            raw = await response.read()
            head = "".join(f"{k}: {v}\n" for k, v in response.headers.items())
            self.answers.append(f"{response.status}\n{head}\n".encode() + raw)
            return response.status, dict(response.headers), raw

    def text(self) -> bytes:
        return b"\n\n".join(self.answers)


def db_bytes(config: Config) -> bytes:
    """The database files as they are on disk (WAL included), plus a full text dump."""
    path = Path(config.storage.sqlite_path)
    raw = b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
                   if p.exists())
    db = sqlite3.connect(path)
    try:
        dump = "\n".join(db.iterdump()).encode("utf-8", "surrogateescape")
    finally:
        db.close()
    return raw + b"\n" + dump


def rendered_logs(records: Iterable[logging.LogRecord]) -> str:
    """Every record as the proxy's formatters write it. aiohttp's own access log is the
    test server's (the real `serve` disables it), so it is left out."""
    json_format, text_format = JsonFormatter(), TextFormatter()
    lines = []
    for record in records:
        if record.name == "aiohttp.access":
            continue
        lines.append(json_format.format(record))
        lines.append(str(getattr(record, "fields", "")))
        lines.append(record.getMessage() if record.args else str(record.msg))
        lines.append(text_format.format(logging.makeLogRecord(record.__dict__)))
    return "\n".join(lines)


# -- fixtures ------------------------------------------------------------------------------------

@pytest.fixture
def secrets() -> Secrets:
    return Secrets()


def secure_config(config_factory: ConfigFactory, secrets: Secrets, openai_fake: FakeOpenAI,
                  anthropic_fake: FakeAnthropic, **server: Any) -> Config:
    dead = {"kind": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1",
            "api_key": secrets.dead, "timeouts": {"connect_s": 1}}
    return config_factory(
        providers={"openai": openai_provider(openai_fake, api_key=secrets.openai,
                                             headers={"OpenAI-Organization": secrets.org}),
                   "anthropic": anthropic_provider(anthropic_fake, api_key=secrets.anthropic),
                   "dead": dead},
        models={GPT: {"pricing": {"prompt": 0.15, "completion": 0.6},
                      "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]},
                CLAUDE: {"pricing": {"prompt": 3, "completion": 15},
                         "routes": [{"provider": "anthropic", "model": "claude-x"}]},
                EMBED: {"pricing": {"prompt": 0.02},
                        "routes": [{"provider": "openai", "model": "text-embedding-3-small"}]},
                "dead/model": {"pricing": {"prompt": 1, "completion": 2},
                               "routes": [{"provider": "dead", "model": "m"}]}},
        keys={"alice": {"key_sha256": sha256(secrets.alice), "credits": 100},
              "bob": {"key_sha256": sha256(secrets.bob), "credits": 50}},
        server={"retries": 0, "log_level": "debug", **server})


@pytest.fixture
async def secure(config_factory: ConfigFactory, secrets: Secrets, fake_openai: FakeOpenAI,
                 fake_anthropic: FakeAnthropic, start_proxy: StartProxy) -> Proxy:
    proxy = await start_proxy(secure_config(config_factory, secrets, fake_openai,
                                            fake_anthropic))
    assert proxy.server.runner is not None and proxy.server.runner.server is not None
    answer_protocol_errors_as_envelopes(proxy.server.runner.server)
    return proxy


def chat(model: str = GPT, text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def exercise(seen: Seen, secrets: Secrets, fake_openai: FakeOpenAI,
                   fake_anthropic: FakeAnthropic) -> dict[str, str]:
    """Every kind of request, good and bad, with planted secrets; the generation and
    batch ids alice made."""
    alice, bob, prompt = secrets.alice, secrets.bob, secrets.prompt
    made: dict[str, str] = {}
    status, headers, _ = await seen.call("POST", CHAT_PATH, alice, body={
        **chat(text=prompt), "tools": [{"type": "function", "function": {
            "name": "lookup", "description": prompt, "parameters": {"type": "object"}}}]})
    assert status == 200
    made["chat"] = headers["X-AnyRouter-Generation-Id"]
    status, _, _ = await seen.call("POST", CHAT_PATH, alice,
                                   body={**chat(text=prompt), "stream": True})
    assert status == 200
    status, _, _ = await seen.call("POST", CHAT_PATH, alice, body=chat(CLAUDE, prompt))
    assert status == 200
    status, _, _ = await seen.call("POST", MESSAGES_PATH, None, headers={"x-api-key": alice},
                                   body={"model": CLAUDE, "max_tokens": 20, "system": prompt,
                                         "messages": [{"role": "user", "content": prompt}]})
    assert status == 200
    status, _, _ = await seen.call("POST", MESSAGES_PATH, alice, body={
        "model": GPT, "max_tokens": 20, "stream": True,
        "messages": [{"role": "user", "content": prompt}]})
    assert status == 200
    status, _, _ = await seen.call("POST", "/api/v1/embeddings", alice,
                                   body={"model": EMBED, "input": [prompt]})
    assert status == 200
    status, _, _ = await seen.call("POST", "/api/v1/completions", alice,
                                   body={"model": GPT, "prompt": prompt})
    assert status == 200
    status, _, raw = await seen.call("POST", "/api/v1/batch", alice, body={"requests": [
        {"custom_id": "one", "method": "POST", "url": "/v1/chat/completions",
         "body": chat(text=prompt)}]})
    assert status == 200
    made["batch"] = json.loads(raw)["id"]
    # Failures: unknown keys, near misses, an upstream that rejects the provider key, an
    # upstream that is down, a model that does not exist, a forbidden forced provider.
    for headers_ in (bearer(secrets.unknown), {"x-api-key": secrets.unknown},
                     bearer(alice[:-1] + ("x" if alice[-1] != "x" else "y")),
                     bearer(alice + " " + secrets.unknown), {"Authorization": alice},
                     {"Authorization": f"Basic {alice}"}):
        status, _, _ = await seen.call("POST", CHAT_PATH, None, headers=headers_,
                                       body=chat(text=prompt))
        assert status == 401
    fake_openai.then(Behaviour(status=401, body={"error": {
        "message": "Incorrect API key provided", "type": "invalid_request_error",
        "code": "invalid_api_key", "param": None}}))
    status, headers, _ = await seen.call("POST", CHAT_PATH, alice, body=chat(text=prompt))
    assert status == 502
    made["upstream 401"] = headers["X-AnyRouter-Generation-Id"]
    fake_anthropic.then(Behaviour(status=403))
    status, _, _ = await seen.call("POST", CHAT_PATH, alice, body=chat(CLAUDE, prompt))
    assert status == 502
    status, headers, _ = await seen.call("POST", CHAT_PATH, alice,
                                         body=chat("dead/model", prompt))
    assert status == 502
    made["dead"] = headers["X-AnyRouter-Generation-Id"]
    status, _, _ = await seen.call("POST", CHAT_PATH, alice, body=chat(f"no/{prompt}", prompt))
    assert status == 404
    status, _, _ = await seen.call("POST", CHAT_PATH, alice, body=chat(text=prompt),
                                   headers={"X-AnyRouter-Provider": "anthropic"})
    assert status == 400
    status, _, _ = await seen.call("POST", CHAT_PATH, alice, body={"model": GPT,
                                                                    "messages": prompt})
    assert status == 400
    # Reads, by both keys and none.
    for path in ("/api/v1/models", "/api/v1/providers", "/api/v1/credits", "/api/v1/auth/key",
                 f"/api/v1/generation/{made['chat']}", f"/api/v1/generation?id={made['dead']}",
                 f"/api/v1/generation/{made['upstream 401']}", f"/api/v1/batch/{made['batch']}",
                 f"/api/v1/models?api_key={alice}"):
        for key in (alice, bob):
            await seen.call("GET", path, key)
    for path in ("/health", "/api/v1/health", "/metrics"):
        await seen.call("GET", path, None)
    return made


# -- keys are hashes -----------------------------------------------------------------------------

def test_config_holds_only_key_hashes(config_factory: ConfigFactory, secrets: Secrets,
                                      tmp_path: Path) -> None:
    config = config_factory(keys={"alice": {"key_sha256": sha256(secrets.alice)}})
    assert config.path is not None
    assert secrets.alice not in config.path.read_text()
    assert all(key.key_sha256 == sha256(secrets.alice) for key in config.keys.values())
    # A plaintext key in the config is refused, not silently used.
    data = yaml.safe_load(config.path.read_text())
    for field in ("key", "api_key", "secret"):
        data["keys"]["alice"] = {field: secrets.alice}
        path = tmp_path / f"plaintext-{field}.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(Exception) as caught:
            load_config(path, environ={})
        assert secrets.alice not in str(caught.value)  # the error names the field only


async def test_keys_are_compared_once_in_constant_time_as_hashes(
        secure: Proxy, secrets: Secrets, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown, near-miss and valid keys take the same path: exactly one
    hmac.compare_digest of two 64-hex sha256 digests, never of the key itself."""
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    near_miss = secrets.alice[:-1] + ("0" if secrets.alice[-1] != "0" else "1")
    cases = {"unknown": (secrets.unknown, 401), "near miss": (near_miss, 401),
             "prefix": (secrets.alice[:-4], 401), "alice": (secrets.alice, 200),
             "bob": (secrets.bob, 200), "long": ("k" * 4000, 401),
             "non-ascii": ("ключ-🔑", 401)}
    seen = Seen(secure)
    for name, (key, status) in cases.items():
        calls.clear()
        got, _, _ = await seen.call("GET", "/api/v1/auth/key", None,
                                    headers={"x-api-key": key})
        assert got == status, name
        assert len(calls) == 1, (name, calls)
        a, b = calls[0]
        for side in (a, b):
            text = side.decode() if isinstance(side, bytes) else side
            assert len(text) == 64 and all(c in "0123456789abcdef" for c in text), (name, side)
        assert key not in (a, b)
        assert b == hashlib.sha256(key.encode()).hexdigest()
    # The same through the gateway directly, with no HTTP layer in between.
    for key in (secrets.unknown, near_miss):
        calls.clear()
        with pytest.raises(Exception, match="Invalid API key"):
            secure.gateway.authenticate(key)
        assert len(calls) == 1


# -- nothing leaks -------------------------------------------------------------------------------

async def test_planted_secrets_never_leave(secure: Proxy, secrets: Secrets,
                                           fake_openai: FakeOpenAI,
                                           fake_anthropic: FakeAnthropic,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen = Seen(secure)
    await exercise(seen, secrets, fake_openai, fake_anthropic)
    await secure.flush()
    _, _, metrics = await seen.call("GET", "/metrics", None)
    logs = rendered_logs(caplog.records)
    assert "request" in logs and "alice" in logs  # the channel is really captured
    db = db_bytes(secure.config)
    assert b"auth_failed" in db and b"alice" in db
    # Client keys: nowhere at all, not even echoed to their own owner.
    everything = {"responses": seen.text(), "logs": logs, "metrics": metrics, "database": db}
    assert_absent(everything, secrets.client_keys())
    # Provider keys and the provider's secret header: never to a client, a log, a metric.
    assert_absent(everything, secrets.provider_keys())
    # Prompt (and completion) text: not in logs (at the default level, info) or metrics.
    info_logs = rendered_logs(r for r in caplog.records if r.levelno >= logging.INFO)
    assert_absent({"logs": info_logs, "metrics": metrics},
                  {"prompt": secrets.prompt, "completion": ANSWER})
    # And the upstreams did get what they should: the planted provider credentials.
    assert fake_openai.requests[0].headers["Authorization"] == f"Bearer {secrets.openai}"
    assert fake_openai.requests[0].headers["OpenAI-Organization"] == secrets.org
    assert fake_anthropic.requests[0].headers["x-api-key"] == secrets.anthropic


@pytest.mark.parametrize("level", ["info", "debug"])
async def test_serve_process_logs_and_database_hold_no_secret(
        config_factory: ConfigFactory, secrets: Secrets, fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic, tmp_path: Path, level: str,
        request: pytest.FixtureRequest) -> None:
    """The real `anyrouter-proxy serve`: its stdout/stderr and its SQLite files hold no
    key, and its output no prompt or completion, after good and bad requests."""
    config = secure_config(config_factory, secrets, fake_openai, fake_anthropic,
                           log_format="json", log_level=level)
    assert config.path is not None
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "anyrouter_proxy", "serve", "--config", str(config.path),
            "--port", str(port), stdout=out, stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            while True:
                assert proc.returncode is None, log.read_text()[-3000:]
                try:
                    async with session.get(base + "/health") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)

        class Remote:
            def url(self, path: str) -> str:
                return base + path

        seen = Seen(Remote())  # type: ignore[arg-type]
        await exercise(seen, secrets, fake_openai, fake_anthropic)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
    output = log.read_bytes()
    assert b'"event"' in output or b"request" in output  # access lines were written
    channels = {"serve output": output, "database": db_bytes(config),
                "responses": seen.text()}
    assert_absent(channels, {**secrets.client_keys(), **secrets.provider_keys()})
    assert_absent({"serve output": output}, {"prompt": secrets.prompt, "completion": ANSWER})


async def test_upstream_401_error_names_the_provider_not_its_key(
        secure: Proxy, secrets: Secrets, fake_openai: FakeOpenAI) -> None:
    seen = Seen(secure)
    fake_openai.then(Behaviour(status=401))
    status, headers, raw = await seen.call("POST", CHAT_PATH, secrets.alice, body=chat())
    assert status == 502
    error = json.loads(raw)["error"]
    assert error["type"] == "upstream_error" and "openai" in error["message"]
    gen_id = headers["X-AnyRouter-Generation-Id"]
    for path in (f"/api/v1/generation/{gen_id}", "/api/v1/providers", "/api/v1/health",
                 "/api/v1/auth/key", "/api/v1/credits", "/api/v1/models"):
        status, _, _ = await seen.call("GET", path, secrets.alice)
        assert status == 200, path
    await seen.call("GET", "/metrics", None)
    assert_absent({"answers": seen.text()}, secrets.provider_keys())


@pytest.mark.parametrize("status", [400, 404, 422, 500, 503])
async def test_upstream_echoing_the_provider_key_does_not_leak_it(
        secure: Proxy, secrets: Secrets, fake_openai: FakeOpenAI, status: int) -> None:
    echo = f"bad request with headers Authorization: Bearer {secrets.openai} " \
           f"OpenAI-Organization: {secrets.org}"
    body: Any = {"error": {"message": echo, "type": "invalid_request_error"}} \
        if status < 500 else echo
    fake_openai.then(Behaviour(status=status, body=body))
    seen = Seen(secure)
    got, _, _ = await seen.call("POST", CHAT_PATH, secrets.alice, body=chat())
    assert got >= 400
    assert_absent({"answer": seen.text()}, secrets.provider_keys())


async def test_mid_stream_error_echoing_the_provider_key_does_not_leak_it(
        secure: Proxy, secrets: Secrets, fake_openai: FakeOpenAI,
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def echo_error(self: FakeOpenAI, request: Any, body: Any, behaviour: Any, base: Any,
                         chat_: bool) -> Any:
        from aiohttp import web
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        first = {**base, "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": "x"}, "finish_reason": None}]}
        await response.write(b"data: " + json.dumps(first).encode() + b"\n\n")
        await response.write(b'data: {"error": {"message": "key ' + secrets.openai.encode()
                             + b' is over quota"}}\n\n')
        return response

    monkeypatch.setattr(FakeOpenAI, "_stream", echo_error)
    seen = Seen(secure)
    status, _, raw = await seen.call("POST", CHAT_PATH, secrets.alice,
                                     body={**chat(), "stream": True})
    assert status == 200 and b'"error"' in raw
    assert_absent({"stream": raw}, secrets.provider_keys())


async def test_invented_model_ids_do_not_reach_metrics_or_logs(
        secure: Proxy, secrets: Secrets, caplog: pytest.LogCaptureFixture) -> None:
    """A client-chosen string is never a metric label or a log field (cardinality, leaks)."""
    caplog.set_level(logging.DEBUG)
    seen = Seen(secure)
    invented = planted("model-PLANTED")
    for key in (secrets.alice, secrets.unknown):
        await seen.call("POST", CHAT_PATH, key, body=chat(invented))
        await seen.call("POST", MESSAGES_PATH, key, body={"model": invented, "max_tokens": 5,
                                                         "messages": [{"role": "user",
                                                                       "content": "x"}]})
    _, _, metrics = await seen.call("GET", "/metrics", None)
    assert_absent({"metrics": metrics, "logs": rendered_logs(caplog.records)},
                  {"invented model": invented})


async def test_metrics_token_with_non_utf8_header_is_401(
        config_factory: ConfigFactory, secrets: Secrets, fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(secure_config(config_factory, secrets, fake_openai,
                                            fake_anthropic, metrics_token="metrics-secret"))
    port = proxy.server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 b"Authorization: Bearer \xff\xfe\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.split(b" ", 2)[1] == b"401", answer[:300]


async def test_metrics_token_is_required_when_set(
        config_factory: ConfigFactory, secrets: Secrets, fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(secure_config(config_factory, secrets, fake_openai,
                                            fake_anthropic, metrics_token="metrics-secret"))
    seen = Seen(proxy)
    for headers in ({}, bearer("wrong"), bearer(secrets.alice), {"Authorization": "Bearer "},
                    {"Authorization": "metrics-secret"}):
        status, _, raw = await seen.call("GET", "/metrics", None, headers=headers)
        assert status == 401, headers
        assert json.loads(raw)["error"]["type"] == "authentication_error"
    status, _, _ = await seen.call("GET", "/metrics", None, headers=bearer("metrics-secret"))
    assert status == 200
    assert b"metrics-secret" not in seen.text()


# -- isolation between keys ----------------------------------------------------------------------

async def test_generation_batch_key_and_credits_are_isolated(
        secure: Proxy, secrets: Secrets, fake_openai: FakeOpenAI) -> None:
    seen = Seen(secure)
    alice, bob = secrets.alice, secrets.bob
    status, headers, _ = await seen.call("POST", CHAT_PATH, alice, body=chat())
    assert status == 200
    gen_id = headers["X-AnyRouter-Generation-Id"]
    fake_openai.then(Behaviour(delay_s=0.3))
    custom_id = planted("custom-id")
    status, _, raw = await seen.call("POST", "/api/v1/batch", alice, body={"mode": "async",
                                     "requests": [{"custom_id": custom_id, "method": "POST",
                                                   "url": "/v1/chat/completions",
                                                   "body": chat()}]})
    assert status == 202
    batch_id = json.loads(raw)["id"]
    await secure.flush()

    # /generation: the owner sees it, the other key gets exactly what a random id gets.
    for path in (f"/api/v1/generation/{gen_id}", f"/api/v1/generation?id={gen_id}",
                 f"/v1/generation/{gen_id}"):
        status, _, raw = await seen.call("GET", path, alice)
        assert status == 200 and json.loads(raw)["data"]["id"] == gen_id
        status, _, raw = await seen.call("GET", path, bob)
        _, _, random_raw = await seen.call("GET", path.replace(gen_id, "gen-" + "0" * 24), bob)
        assert status == 404
        error = json.loads(raw)["error"]
        assert error["code"] == "generation_not_found"
        assert json.loads(raw)["error"]["message"].replace(gen_id, "ID") == \
            json.loads(random_raw)["error"]["message"].replace("gen-" + "0" * 24, "ID")
        assert b"alice" not in raw
    # /batch: bob can neither read nor cancel alice's batch.
    for method, path in (("GET", f"/api/v1/batch/{batch_id}"),
                         ("GET", f"/api/v1/batch/{batch_id}/results"),
                         ("POST", f"/api/v1/batch/{batch_id}/cancel")):
        status, _, raw = await seen.call(method, path, bob)
        assert status == 404, (method, path, raw)
        assert json.loads(raw)["error"]["code"] == "batch_not_found"
        assert b"alice" not in raw and custom_id.encode() not in raw
    deadline = time.monotonic() + 10
    while True:
        status, _, raw = await seen.call("GET", f"/api/v1/batch/{batch_id}", alice)
        assert status == 200
        batch = json.loads(raw)
        if batch["status"] in ("completed", "cancelled", "failed"):
            break
        assert time.monotonic() < deadline, batch
        await asyncio.sleep(0.05)
    assert batch["status"] == "completed", batch  # bob's cancel did not touch it
    await secure.flush()
    # /auth/key and /credits: each key sees itself only.
    status, _, raw = await seen.call("GET", "/api/v1/auth/key", alice)
    alice_info = json.loads(raw)["data"]
    status, _, raw = await seen.call("GET", "/api/v1/key", bob)
    bob_info = json.loads(raw)["data"]
    assert (alice_info["label"], bob_info["label"]) == ("alice", "bob")
    assert (alice_info["limit"], bob_info["limit"]) == (100, 50)
    assert alice_info["usage"] > 0 and bob_info["usage"] == 0
    _, _, raw = await seen.call("GET", "/api/v1/credits", bob)
    assert json.loads(raw)["data"] == {"total_credits": 50, "total_usage": 0, "budget": None}
    _, _, raw = await seen.call("GET", "/api/v1/credits", alice)
    assert json.loads(raw)["data"]["total_usage"] == alice_info["usage"] > 0
    assert_absent({"answers": seen.text()}, secrets.client_keys())


# -- routing stays inside the config -----------------------------------------------------------

async def test_forced_provider_cannot_leave_the_models_routes(
        secure: Proxy, secrets: Secrets, fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic) -> None:
    seen = Seen(secure)
    for model, path, body_of in ((GPT, CHAT_PATH, chat),
                                 (CLAUDE, MESSAGES_PATH, lambda m: {
                                     "model": m, "max_tokens": 5,
                                     "messages": [{"role": "user", "content": "x"}]}),
                                 (CLAUDE, "/api/v1/messages/count_tokens", lambda m: {
                                     "model": m, "messages": [{"role": "user",
                                                               "content": "x"}]})):
        other = "anthropic" if model == GPT else "openai"
        for forced in (other, "dead", "nope", "../openai", "openai ", "OPENAI",
                       "http://127.0.0.1:1/v1", fake_openai.base_url):  # type: ignore[attr-defined]
            if forced.strip() == ("openai" if model == GPT else "anthropic"):
                continue
            before = (len(fake_openai.requests), len(fake_anthropic.requests))
            status, _, raw = await seen.call("POST", path, secrets.alice, body=body_of(model),
                                             headers={"X-AnyRouter-Provider": forced})
            assert status == 400, (model, forced, raw)
            error = json.loads(raw)["error"]
            assert (error["code"], error["param"]) == ("provider_not_available",
                                                       "X-AnyRouter-Provider"), error
            assert (len(fake_openai.requests), len(fake_anthropic.requests)) == before
    # The model's own provider is allowed.
    status, headers, _ = await seen.call("POST", CHAT_PATH, secrets.alice, body=chat(),
                                         headers={"X-AnyRouter-Provider": "openai"})
    assert status == 200 and headers["X-AnyRouter-Provider"] == "openai"


@pytest.fixture
async def trap(aiohttp_server: Any) -> FakeOpenAI:
    """An upstream nobody configured: if anything reaches it, a request steered the proxy."""
    fake = FakeOpenAI("trap")
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url("/v1"))  # type: ignore[attr-defined]
    return fake


async def test_no_request_field_changes_where_the_proxy_connects(
        secure: Proxy, secrets: Secrets, fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic, trap: FakeOpenAI) -> None:
    url = trap.base_url  # type: ignore[attr-defined]
    steering: dict[str, Any] = {
        "base_url": url, "api_base": url, "url": url + "/chat/completions", "endpoint": url,
        "baseURL": url, "host": url, "proxy": url, "api_key": "sk-attacker",
        "extra_headers": {"Host": url, "X-Steer": "1"}, "headers": {"Host": url},
        "extra_body": {"base_url": url}, "extra_query": {"url": url},
        "provider": {"base_url": url, "order": ["openai"], "url": url},
        "route": {"base_url": url}, "transforms": [url], "custom_llm_provider": url,
        "litellm_params": {"api_base": url},
    }
    seen = Seen(secure)
    requests = [
        (CHAT_PATH, {**chat(), **steering}),
        (CHAT_PATH, {**chat(), **steering, "stream": True}),
        (CHAT_PATH, {**chat(CLAUDE), **steering}),
        (MESSAGES_PATH, {"model": CLAUDE, "max_tokens": 5, **steering,
                         "messages": [{"role": "user", "content": "x"}]}),
        (MESSAGES_PATH, {"model": GPT, "max_tokens": 5, **steering,
                         "messages": [{"role": "user", "content": "x"}]}),
        ("/api/v1/embeddings", {"model": EMBED, "input": "x", **steering}),
        ("/api/v1/completions", {"model": GPT, "prompt": "x", **steering}),
    ]
    for path, body in requests:
        status, _, raw = await seen.call("POST", path, secrets.alice, body=body, headers={
            "Host": "127.0.0.1:1", "X-Forwarded-Host": url, "X-Original-URL": url,
            "X-Rewrite-URL": url})
        assert status == 200, (path, raw)
    # Model ids that look like URLs are just unknown models.
    for model in (url, f"{url}/chat/completions", "openai/../../trap", f"openai@{url}"):
        status, _, _ = await seen.call("POST", CHAT_PATH, secrets.alice, body=chat(model))
        assert status == 404
    status, _, raw = await seen.call("POST", "/api/v1/batch", secrets.alice, body={"requests": [
        {"custom_id": "steer", "method": "POST", "url": url + "/chat/completions",
         "body": chat()},
        {"custom_id": "steer2", "method": "POST", "url": "/v1/chat/completions",
         "body": {**chat(), **steering}}]})
    assert status == 200
    assert trap.requests == [], [r.path for r in trap.requests]
    assert fake_openai.requests and fake_anthropic.requests
    for recorded in fake_openai.requests:
        assert recorded.path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
        assert recorded.headers["Authorization"] == f"Bearer {secrets.openai}"
        assert "X-Steer" not in recorded.headers
        assert url not in recorded.headers.get("Host", "")
    for recorded in fake_anthropic.requests:
        assert recorded.path == "/v1/messages"
        assert recorded.headers["x-api-key"] == secrets.anthropic
        assert "X-Steer" not in recorded.headers


HOP_AND_CLIENT_HEADERS = {
    "Cookie": "session=PLANTED-cookie",
    "X-Forwarded-For": "198.51.100.77",
    "X-Forwarded-Host": "planted-forwarded-host.example",
    "X-Forwarded-Proto": "planted-proto",
    "X-Real-IP": "198.51.100.78",
    "Forwarded": "for=198.51.100.79;host=planted-forwarded.example",
    "Proxy-Authorization": "Basic UExBTlRFRC1wcm94eS1hdXRo",
    "Proxy-Connection": "keep-alive-planted",
    "Connection": "keep-alive, X-Planted-Hop",
    "X-Planted-Hop": "PLANTED-hop-by-hop",
    "Keep-Alive": "timeout=99, planted=1",
    "TE": "trailers, planted",
    "Upgrade": "planted-websocket",
    "User-Agent": "PLANTED-user-agent/1.0 secret",
    "Referer": "https://planted-referer.example/secret",
    "Origin": "https://planted-origin.example",
    "X-AnyRouter-Trace-Id": "PLANTED-trace",
    "X-AnyRouter-Provider": "",
    "OpenAI-Organization": "org-PLANTED-client",
    "OpenAI-Project": "proj-PLANTED-client",
    "Via": "1.1 planted-via",
}


@pytest.mark.parametrize("auth_header", ["Authorization", "x-api-key"])
async def test_client_headers_are_not_forwarded_upstream(
        secure: Proxy, secrets: Secrets, fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic, auth_header: str) -> None:
    seen = Seen(secure)
    credential = f"Bearer {secrets.alice}" if auth_header == "Authorization" else secrets.alice
    headers = {**HOP_AND_CLIENT_HEADERS, auth_header: credential}
    if auth_header == "Authorization":
        headers["X-Api-Key"] = secrets.bob  # a second credential, never forwarded either
    for path, body in ((CHAT_PATH, chat()), (CHAT_PATH, {**chat(), "stream": True}),
                       (CHAT_PATH, chat(CLAUDE)),
                       (MESSAGES_PATH, {"model": CLAUDE, "max_tokens": 5,
                                        "messages": [{"role": "user", "content": "x"}]}),
                       (MESSAGES_PATH, {"model": GPT, "max_tokens": 5,
                                        "messages": [{"role": "user", "content": "x"}]}),
                       ("/api/v1/messages/count_tokens",
                        {"model": CLAUDE, "messages": [{"role": "user", "content": "x"}]}),
                       ("/api/v1/embeddings", {"model": EMBED, "input": "x"})):
        status, _, raw = await seen.call("POST", path, None, body=body, headers={
            k: v for k, v in headers.items() if v})
        assert status == 200, (path, raw)
    recorded = [*fake_openai.requests, *fake_anthropic.requests]
    assert len(recorded) == 7
    planted_values = {name: value for name, value in HOP_AND_CLIENT_HEADERS.items() if value}
    planted_values.update(alice=secrets.alice, bob=secrets.bob)
    for request in recorded:
        names = {name.lower() for name in request.headers}
        sent = "\n".join(f"{k}: {v}" for k, v in request.headers.items())
        for what, value in planted_values.items():
            assert value not in sent, f"{what} reached {request.path}:\n{sent}"
        assert not names & {"cookie", "x-forwarded-for", "x-forwarded-host", "x-real-ip",
                            "forwarded", "proxy-authorization", "x-planted-hop", "via",
                            "referer", "origin", "x-anyrouter-trace-id", "openai-project"}
    for request in fake_openai.requests:
        assert request.headers["Authorization"] == f"Bearer {secrets.openai}"
        assert "x-api-key" not in {n.lower() for n in request.headers}
    for request in fake_anthropic.requests:
        assert request.headers["x-api-key"] == secrets.anthropic
        assert "authorization" not in {n.lower() for n in request.headers}


async def test_upstream_cookies_are_not_kept_for_later_requests(
        config_factory: ConfigFactory, secrets: Secrets, fake_openai: FakeOpenAI,
        start_proxy: StartProxy) -> None:
    """The upstream session is shared by every client: a provider's Set-Cookie must not
    ride along on later requests (another key's among them) nor reach the client."""
    provider = openai_provider(fake_openai, api_key=secrets.openai)
    # A host name, not an address: cookie jars ignore cookies set by bare IP addresses.
    provider["base_url"] = provider["base_url"].replace("127.0.0.1", "localhost")
    secure = await start_proxy(config_factory(
        providers={"openai": provider},
        models={GPT: {"routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
        keys={"alice": {"key_sha256": sha256(secrets.alice)},
              "bob": {"key_sha256": sha256(secrets.bob)}}))
    fake_openai.then(Behaviour(headers={"Set-Cookie": f"session={secrets.prompt}; Path=/"}),
                     Behaviour(headers={"Set-Cookie": f"other={secrets.prompt}; Path=/v1"}))
    seen = Seen(secure)
    for key, body in ((secrets.alice, chat()), (secrets.bob, {**chat(), "stream": True}),
                      (secrets.bob, chat())):
        status, headers, raw = await seen.call("POST", CHAT_PATH, key, body=body)
        assert status == 200, raw
        assert "set-cookie" not in {name.lower() for name in headers}
    assert len(fake_openai.requests) == 3
    for request in fake_openai.requests:
        assert "cookie" not in {name.lower() for name in request.headers}, request.headers


# -- the client address --------------------------------------------------------------------------

async def client_seen(config_factory: ConfigFactory, start_proxy: StartProxy,
                      fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture,
                      trusted: list[str] | None, forwarded: str | None,
                      extra: dict[str, str] | None = None) -> tuple[Any, Any]:
    """(access-log client, audit client) for one good and one failed request."""
    server: dict[str, Any] = {}
    if trusted is not None:
        server["trusted_proxies"] = trusted
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models={GPT: {"routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
        server=server))
    caplog.clear()
    caplog.set_level(logging.INFO, logger=ACCESS)
    headers = {**({"X-Forwarded-For": forwarded} if forwarded is not None else {}),
               **(extra or {})}
    from tests.conftest import ALICE_KEY
    seen = Seen(proxy)
    status, _, _ = await seen.call("POST", CHAT_PATH, ALICE_KEY, body=chat(), headers=headers)
    assert status == 200
    status, _, _ = await seen.call("POST", CHAT_PATH, "sk-wrong", body=chat(), headers=headers)
    assert status == 401
    await proxy.flush()
    access = [r for r in caplog.records if r.name == ACCESS]
    clients = [getattr(r, "fields", {}).get("client") for r in access]
    assert len(clients) == 2 and clients[0] == clients[1], clients
    db = sqlite3.connect(proxy.config.storage.sqlite_path)
    try:
        details = [json.loads(d) for (d,) in db.execute(
            "SELECT detail FROM audit WHERE event = 'auth_failed'")]
    finally:
        db.close()
    assert len(details) == 1
    return clients[0], details[0]["client"]


@pytest.mark.parametrize(("trusted", "forwarded", "extra", "expected"), [
    (None, None, None, "127.0.0.1"),
    (None, "203.0.113.7", None, "127.0.0.1"),  # not trusted: ignored
    ([], "203.0.113.7", None, "127.0.0.1"),
    (["10.0.0.0/8"], "203.0.113.7", None, "127.0.0.1"),  # the peer is not that proxy
    (["127.0.0.1"], "203.0.113.7", None, "203.0.113.7"),
    (["127.0.0.0/8"], "203.0.113.7", None, "203.0.113.7"),
    (["127.0.0.1"], "6.6.6.6, 203.0.113.7", None, "203.0.113.7"),  # forged left part
    (["127.0.0.1", "10.0.0.0/8"], "6.6.6.6, 203.0.113.7, 10.1.2.3", None, "203.0.113.7"),
    (["127.0.0.1"], "203.0.113.7, 127.0.0.1", None, "203.0.113.7"),
    (["127.0.0.1"], "  ", None, "127.0.0.1"),
    (["127.0.0.1"], "2001:db8::7", None, "2001:db8::7"),
    (["127.0.0.1"], None, {"Forwarded": "for=198.51.100.1", "X-Real-IP": "198.51.100.2"},
     "127.0.0.1"),  # only X-Forwarded-For is read
])
async def test_x_forwarded_for_is_believed_only_from_trusted_proxies(
        config_factory: ConfigFactory, start_proxy: StartProxy, fake_openai: FakeOpenAI,
        caplog: pytest.LogCaptureFixture, trusted: list[str] | None, forwarded: str | None,
        extra: dict[str, str] | None, expected: str) -> None:
    logged, audited = await client_seen(config_factory, start_proxy, fake_openai, caplog,
                                        trusted, forwarded, extra)
    assert (logged, audited) == (expected, expected)


async def test_forwarded_garbage_is_bounded_and_never_an_error(
        config_factory: ConfigFactory, start_proxy: StartProxy, fake_openai: FakeOpenAI,
        caplog: pytest.LogCaptureFixture) -> None:
    forged = "<script>alert(1)</script>" + "A" * 5000
    logged, audited = await client_seen(config_factory, start_proxy, fake_openai, caplog,
                                        ["127.0.0.1"], forged)
    assert logged == audited
    assert isinstance(logged, str) and len(logged) <= 64


async def test_forwarded_for_with_invalid_utf8_still_logs_the_request(
        config_factory: ConfigFactory, start_proxy: StartProxy, fake_openai: FakeOpenAI,
        caplog: pytest.LogCaptureFixture) -> None:
    from tests.conftest import ALICE_KEY
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models={GPT: {"routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
        server={"trusted_proxies": ["127.0.0.1"]}))
    caplog.set_level(logging.INFO, logger=ACCESS)
    body = json.dumps(chat()).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(f"POST {CHAT_PATH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 f"Authorization: Bearer {ALICE_KEY}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n".encode()
                 + b"X-Forwarded-For: 203.0.113.\xff\xfe\r\n\r\n" + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.split(b" ", 2)[1] == b"200", answer[:300]
    access = [r for r in caplog.records if r.name == ACCESS]
    assert len(access) == 1
    line = json.loads(JsonFormatter().format(access[0]))  # what `serve` writes to stdout
    assert line["status"] == 200
    assert isinstance(line["client"], str) and line["client"].isascii()


# -- CORS ----------------------------------------------------------------------------------------

def cors_names(headers: dict[str, str]) -> list[str]:
    return [name for name in headers if name.lower().startswith("access-control-")]


async def test_cors_is_off_by_default(secure: Proxy, secrets: Secrets) -> None:
    seen = Seen(secure)
    origin = {"Origin": "https://app.example"}
    for method, path, key, body in (("POST", CHAT_PATH, secrets.alice, chat()),
                                    ("POST", CHAT_PATH, None, chat()),
                                    ("GET", "/api/v1/models", secrets.alice, None),
                                    ("GET", "/health", None, None)):
        status, headers, _ = await seen.call(method, path, key, body=body, headers=origin)
        assert not cors_names(headers), (path, headers)
    status, headers, raw = await seen.call("OPTIONS", CHAT_PATH, None, headers={
        **origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert status == 405
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(raw)["error"]["code"] == "method_not_allowed"
    assert not cors_names(headers)


@pytest.fixture
async def cors_proxy(config_factory: ConfigFactory, secrets: Secrets, fake_openai: FakeOpenAI,
                     fake_anthropic: FakeAnthropic, start_proxy: StartProxy) -> Proxy:
    return await start_proxy(secure_config(
        config_factory, secrets, fake_openai, fake_anthropic,
        cors={"allow_origins": ["https://app.example"], "max_age_s": 600}))


async def test_cors_preflight_for_an_allowed_origin(cors_proxy: Proxy, secrets: Secrets) -> None:
    seen = Seen(cors_proxy)
    for path in (CHAT_PATH, MESSAGES_PATH, "/api/v1/models", "/v1/embeddings"):
        status, headers, _ = await seen.call("OPTIONS", path, None, headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert status == 204, path
        assert headers["Access-Control-Allow-Origin"] == "https://app.example"
        allowed = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
        assert {"authorization", "content-type", "x-api-key"} <= allowed
        assert "POST" in headers["Access-Control-Allow-Methods"]
        assert headers["Access-Control-Max-Age"] == "600"
        assert "Origin" in headers.get("Vary", "")
        assert "Access-Control-Allow-Credentials" not in headers
    # The real requests carry the allow header too, errors and streams included.
    for key, body, expected in ((secrets.alice, chat(), 200), (None, chat(), 401),
                                (secrets.alice, {**chat(), "stream": True}, 200)):
        status, headers, _ = await seen.call("POST", CHAT_PATH, key, body=body,
                                             headers={"Origin": "https://app.example"})
        assert status == expected
        assert headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "X-AnyRouter-Generation-Id" in headers.get("Access-Control-Expose-Headers", "") \
            or status == 401


@pytest.mark.parametrize("origin", ["https://evil.example", "https://app.example.evil.example",
                                    "https://evil.example/https://app.example", "null",
                                    "http://app.example", "https://APP.example.", "*", ""])
async def test_cors_nothing_for_another_origin(cors_proxy: Proxy, secrets: Secrets,
                                               origin: str) -> None:
    seen = Seen(cors_proxy)
    status, headers, raw = await seen.call("OPTIONS", CHAT_PATH, None, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST"})
    assert status == 405
    assert json.loads(raw)["error"]["code"] == "method_not_allowed"
    assert not cors_names(headers), headers
    status, headers, _ = await seen.call("POST", CHAT_PATH, secrets.alice, body=chat(),
                                         headers={"Origin": origin})
    assert status == 200
    assert not cors_names(headers), headers


async def test_cors_wildcard(config_factory: ConfigFactory, secrets: Secrets,
                             fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic,
                             start_proxy: StartProxy) -> None:
    proxy = await start_proxy(secure_config(config_factory, secrets, fake_openai,
                                            fake_anthropic, cors={"allow_origins": ["*"]}))
    seen = Seen(proxy)
    status, headers, _ = await seen.call("OPTIONS", CHAT_PATH, None, headers={
        "Origin": "https://any.example", "Access-Control-Request-Method": "POST"})
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in headers
    status, headers, _ = await seen.call("GET", "/api/v1/models", secrets.alice,
                                         headers={"Origin": "https://any.example"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
