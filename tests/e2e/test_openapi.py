"""The OpenAPI 3.1 document (anyrouter_proxy/openapi.json) against the running proxy.

schemathesis runs property-based tests over every operation of the
document against a live proxy, with fake OpenAI and Anthropic upstreams behind it (real
HTTP on 127.0.0.1), and checks every response:

- no 5xx other than the documented upstream ones (502/503/504);
- every error body is a valid error envelope, its type the one docs/api.md gives its status,
  with `"type": "error"` on /messages; so is every error event of a stream and the body of
  every failed batch item;
- every response matches the document: status code, content type, headers, body schema
  (event streams event by event);
- the documented headers: X-RateLimit-* on authenticated answers, Retry-After on 429,
  X-AnyRouter-Generation-Id on proxied requests (and it is the body's id); streams end with
  their normal end or an error event.

Then deterministic tests drive the answers random input cannot reach (upstream failures,
limits, credits, disabled and expired keys, slow bodies, mid-stream failures, batches) and
hold each against the same document and checks.

The proxy runs in a background thread with its own event loop (schemathesis tests are
synchronous and call it over HTTP), served as `anyrouter-proxy serve` serves it (handler
cancellation, protocol errors as envelopes). ANYROUTER_OPENAPI_EXAMPLES raises the number
of generated examples for a deeper local run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import yaml
from aiohttp import web
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import CheckContext, Response
from schemathesis.core.failures import Failure
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import anyrouter_proxy
from anyrouter_proxy.config.loader import load_config
from anyrouter_proxy.server.app import API_PREFIXES, create_app
from anyrouter_proxy.server.protocol import answer_protocol_errors_as_envelopes
from tests.conftest import ALICE_KEY, BOB_KEY, PROVIDER_KEY, sha256
from tests.fakes import Behaviour, FakeAnthropic, FakeOpenAI

DOCUMENT_PATH = Path(anyrouter_proxy.__file__).parent / "openapi.json"
DOCUMENT: dict[str, Any] = json.loads(DOCUMENT_PATH.read_text())
# Per operation and generation phase.
MAX_EXAMPLES = int(os.environ.get("ANYROUTER_OPENAPI_EXAMPLES", "20"))

CAROL_KEY = "sk-ar-test-carol-disabled-0123456789abcdef01"
DAVE_KEY = "sk-ar-test-dave-expired-0123456789abcdef0123"
ERIN_KEY = "sk-ar-test-erin-one-a-minute-0123456789abcd"
FRANK_KEY = "sk-ar-test-frank-tiny-budget-0123456789abc"
METRICS_TOKEN = "metrics-token-0123456789"
MAX_BODY_BYTES = 1_000_000
BODY_TIMEOUT_S = 1.0

# Models of the test config that generated bodies name half the time, so that requests
# get past model lookup and reach the fake upstreams. (scripted/* are the deterministic
# tests' own: random requests never consume their fakes' scripts.)
CHAT_MODELS = ["openai/gpt-4o-mini", "anthropic/claude-sonnet-4", "openai/gpt-3.5-turbo",
               "openai/gpt-4-0314"]
EMBEDDING_MODELS = ["openai/text-embedding-3-small", "anthropic/claude-sonnet-4"]
MODELS_BY_PATH = {"/chat/completions": CHAT_MODELS, "/completions": CHAT_MODELS,
                  "/embeddings": EMBEDDING_MODELS, "/messages": CHAT_MODELS,
                  "/messages/count_tokens": CHAT_MODELS, "/responses": CHAT_MODELS}
BATCH_URLS = {"/v1/chat/completions": CHAT_MODELS, "/api/v1/completions": CHAT_MODELS,
              "/embeddings": EMBEDDING_MODELS, "/v1/messages": CHAT_MODELS,
              "/v1/responses": CHAT_MODELS}

# The error type of each status (docs/api.md).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               402: "insufficient_credits", 403: "permission_error", 404: "not_found_error",
               405: "invalid_request_error", 408: "invalid_request_error",
               410: "invalid_request_error", 413: "invalid_request_error",
               415: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error", 500: "server_error", 502: "upstream_error",
               503: "service_unavailable", 504: "timeout_error"}
UPSTREAM_STATUSES = frozenset({502, 503, 504})
PROXIED_PATHS = frozenset({"/chat/completions", "/completions", "/embeddings", "/messages",
                           "/responses"})
RESPONSES_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})
OPENAI_STREAM_PATHS = frozenset({"/chat/completions", "/completions"})
UNAUTHENTICATED_PATHS = frozenset({"/health", "/openapi.json", "/metrics"})

SECRETS = (PROVIDER_KEY, ALICE_KEY, BOB_KEY, CAROL_KEY, DAVE_KEY, ERIN_KEY)

# Ids of generations and batches the run has made: reads ask for them half the time.
SEEN: dict[str, list[str]] = {"generation": [], "batch": []}


def auth(key: str = ALICE_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- the live proxy ------------------------------------------------------------------------


def full_config(workdir: Path, urls: dict[str, str]) -> dict[str, Any]:
    circuit = {"failures": 1000, "cooldown_s": 1}
    gpt = [{"provider": "openai", "model": "gpt-4o-mini"}]

    def provider(kind: str, url: str, **extra: Any) -> dict[str, Any]:
        return {"kind": kind, "base_url": url + "/v1", "api_key": PROVIDER_KEY,
                "circuit": circuit, **extra}

    return {
        "version": 1,
        "server": {"retries": 0, "max_body_bytes": MAX_BODY_BYTES,
                   "body_timeout_s": BODY_TIMEOUT_S, "sse_keepalive_interval_s": 0.3,
                   "default_limits": {"requests_per_minute": 1_000_000}},
        "storage": {"sqlite_path": str(workdir / "usage.db"), "flush_interval_s": 0.02},
        "providers": {
            "openai": provider("openai", urls["openai"]),
            "anthropic": provider("anthropic", urls["anthropic"]),
            "scripted": provider("openai", urls["scripted"]),
            "scripted-anthropic": provider("anthropic", urls["scripted-anthropic"]),
            "slow": provider("openai", urls["scripted"],
                             timeouts={"first_byte_s": 0.5, "connect_s": 1}),
            "nokey": {**provider("openai", urls["openai"]), "api_key": ""},
        },
        "models": {
            "openai/gpt-4o-mini": {
                "name": "GPT-4o mini", "context_length": 128000,
                "pricing": {"prompt": 0.15, "completion": 0.6, "cached_prompt": 0.075},
                "routes": gpt},
            "openai/text-embedding-3-small": {
                "pricing": {"prompt": 0.02},
                "routes": [{"provider": "openai", "model": "text-embedding-3-small"}]},
            "anthropic/claude-sonnet-4": {
                "pricing": {"prompt": 3, "completion": 15, "reasoning": 15},
                "routes": [{"provider": "anthropic", "model": "claude-sonnet-4-x"}]},
            "openai/gpt-3.5-turbo": {
                "deprecated": {"since": "2024-01-01", "sunset": "2099-12-31",
                               "successor": "openai/gpt-4o-mini"},
                "routes": gpt},
            "openai/gpt-4-0314": {
                "deprecated": {"since": "2023-01-01", "sunset": "2024-06-01",
                               "successor": "openai/gpt-4o-mini"},
                "routes": gpt},
            "scripted/gpt": {"pricing": {"prompt": 1, "completion": 2},
                             "routes": [{"provider": "scripted", "model": "gpt-x"}]},
            "scripted/claude": {"pricing": {"prompt": 1, "completion": 2},
                                "routes": [{"provider": "scripted-anthropic",
                                            "model": "claude-x"}]},
            "slow/gpt": {"routes": [{"provider": "slow", "model": "gpt-slow"}]},
            "nokey/gpt": {"routes": [{"provider": "nokey", "model": "gpt-x"}]},
        },
        "keys": {
            "alice": {"key_sha256": sha256(ALICE_KEY)},
            "bob": {"key_sha256": sha256(BOB_KEY), "credits": 0.000001,
                    "models": ["scripted/*"]},
            "carol": {"key_sha256": sha256(CAROL_KEY), "disabled": True},
            "dave": {"key_sha256": sha256(DAVE_KEY), "expires_at": "2020-01-01T00:00:00Z"},
            "erin": {"key_sha256": sha256(ERIN_KEY), "limits": {"requests_per_minute": 1}},
            "frank": {"key_sha256": sha256(FRANK_KEY), "models": ["scripted/*"],
                      "budget": {"usd": 0.000001, "period": "day"}},
        },
    }


def unavailable_config(workdir: Path, urls: dict[str, str]) -> dict[str, Any]:
    """Only a provider without credentials (/health is 503), and a metrics token."""
    return {"version": 1,
            "server": {"metrics_token": METRICS_TOKEN},
            "storage": {"sqlite_path": str(workdir / "usage.db")},
            "providers": {"nokey": {"kind": "openai", "base_url": urls["openai"] + "/v1",
                                    "api_key": ""}},
            "models": {"nokey/gpt": {"routes": [{"provider": "nokey", "model": "gpt-x"}]}},
            "keys": {"alice": {"key_sha256": sha256(ALICE_KEY)}}}


class LiveProxy:
    """Fake upstreams and the proxy, served from one event loop in a background thread."""

    def __init__(self, workdir: Path,
                 make_config: Callable[[Path, dict[str, str]], dict[str, Any]]) -> None:
        self.workdir = workdir
        self.make_config = make_config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-proxy",
                                       daemon=True)
        self.runners: list[web.AppRunner] = []
        self.root = ""
        self.scripted = FakeOpenAI("scripted")
        self.scripted_anthropic = FakeAnthropic("scripted-anthropic")

    @property
    def api(self) -> str:
        return self.root + "/api/v1"

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()

    async def _serve(self, app: web.Application, *, envelopes: bool = False) -> str:
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        if envelopes:
            assert runner.server is not None
            answer_protocol_errors_as_envelopes(runner.server)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def _start(self) -> None:
        urls = {"openai": await self._serve(FakeOpenAI("openai").app()),
                "anthropic": await self._serve(FakeAnthropic("anthropic").app()),
                "scripted": await self._serve(self.scripted.app()),
                "scripted-anthropic": await self._serve(self.scripted_anthropic.app())}
        path = self.workdir / "routes.yaml"
        path.write_text(yaml.safe_dump(self.make_config(self.workdir, urls), sort_keys=False))
        self.root = await self._serve(create_app(load_config(path, environ={})),
                                      envelopes=True)

    async def _stop(self) -> None:
        """Stop the proxy (it drains and closes its usage log), then the upstreams; what is
        left is cancelled, as asyncio.run would. The first failure is raised at the end."""
        failures: list[BaseException] = []
        for runner in reversed(self.runners):  # the proxy first, then its upstreams
            try:
                await runner.cleanup()
            except Exception as exc:
                failures.append(exc)
        current = asyncio.current_task()
        rest = [task for task in asyncio.all_tasks() if task is not current]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        await self.loop.shutdown_asyncgens()
        if failures:
            raise failures[0]


class ErrorLog(logging.Handler):
    """What the proxy logs at ERROR (an unhandled exception is logged there)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    logger = logging.getLogger("anyrouter_proxy")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, error_log: ErrorLog) -> Iterator[LiveProxy]:
    proxy = LiveProxy(tmp_path_factory.mktemp("openapi"), full_config)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


# -- the document --------------------------------------------------------------------------


def test_served_document_is_the_packaged_one(live: LiveProxy) -> None:
    """GET /api/v1/openapi.json (and /v1/openapi.json) needs no key and serves this very
    document."""
    for base in (live.api, live.root + "/v1"):
        response = requests.get(base + "/openapi.json", timeout=10)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json() == DOCUMENT


def test_document_is_valid_openapi_3_1() -> None:
    """Valid against the OpenAPI 3.1 meta-schema (the one schemathesis ships); every schema
    a valid JSON Schema 2020-12; every $ref resolves."""
    from jsonschema import Draft202012Validator
    from schemathesis.specs.openapi.definitions import OPENAPI_31

    assert DOCUMENT["openapi"].startswith("3.1.")
    assert DOCUMENT["info"]["version"] == anyrouter_proxy.__version__
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in Draft202012Validator(OPENAPI_31).iter_errors(DOCUMENT)]
    assert errors == []
    for component in DOCUMENT["components"]["schemas"].values():
        Draft202012Validator.check_schema(component)
    refs: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.add(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(DOCUMENT)
    for ref in refs:
        assert ref.startswith("#/"), ref
        target: Any = DOCUMENT
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]


def test_document_covers_every_route(live: LiveProxy) -> None:
    """Every route the app serves under /api/v1 (and /v1, and /metrics) is in the document
    with its method, and the document has nothing the app does not serve."""
    app = create_app(load_config(live.workdir / "routes.yaml", environ={}))
    by_prefix: dict[str, set[tuple[str, str]]] = {prefix: set() for prefix in API_PREFIXES}
    root: set[tuple[str, str]] = set()
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        path = route.resource.canonical
        if path == "/" or path.startswith("/dashboard"):
            continue  # the HTML dashboard (and / redirecting there): pages, not the API
        for name in ("{model_id}", "{gen_id}", "{batch_id}", "{response_id}"):
            path = path.replace(name, "{id}")
        for prefix in API_PREFIXES:
            if path.startswith(prefix + "/"):
                by_prefix[prefix].add((route.method, path[len(prefix):]))
                break
        else:
            root.add((route.method, path))
    documented = {(method.upper(), path) for path, item in DOCUMENT["paths"].items()
                  for method in item if method in {"get", "post", "put", "patch", "delete"}}
    at_root = {(method.upper(), path) for path, item in DOCUMENT["paths"].items()
               for method in item if method in {"get", "post"}
               if {"url": "/"} in item.get("servers", [])}
    for prefix, served in by_prefix.items():
        assert served == documented - {("GET", "/metrics")}, prefix
    assert root == at_root == {("GET", "/health"), ("GET", "/metrics")}
    assert [s["url"] for s in DOCUMENT["servers"]] == list(API_PREFIXES)
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header",
                                 "name": "x-api-key"}


# -- contract checks------------------------------------------------------------------------


class SpecViolation(Failure):
    """A documented promise the response breaks (the document alone cannot say it)."""

    def __init__(self, operation: str, message: str) -> None:
        self.operation = operation
        self.title = "API contract violation"
        self.message = message
        self.code = "spec_violation"
        self.case_id = None

    @property
    def _unique_key(self) -> str:
        return self.message


def envelope_problems(body: Any, status: int | None, *, anthropic: bool) -> list[str]:
    """What keeps `body` from being the error envelope of an error with `status`
    (None: a stream's error event, which has no status of its own)."""
    if not isinstance(body, dict):
        return [f"the body is not a JSON object: {body!r:.200}"]
    error = body.get("error")
    if not isinstance(error, dict):
        return [f"no 'error' object: {body!r:.200}"]
    problems = [f"'error.{name}' is missing" for name in ("message", "type", "code", "param")
                if name not in error]
    if not isinstance(error.get("message"), str) or not error.get("message"):
        problems.append(f"'error.message' is not a non-empty string: {error.get('message')!r}")
    if not isinstance(error.get("code"), str) or not error.get("code"):
        problems.append(f"'error.code' is not a non-empty string: {error.get('code')!r}")
    if error.get("param") is not None and not isinstance(error["param"], str):
        problems.append(f"'error.param' is neither null nor a string: {error['param']!r}")
    if "metadata" in error and not isinstance(error["metadata"], dict):
        problems.append(f"'error.metadata' is not an object: {error['metadata']!r}")
    if status is None:
        if error.get("type") not in set(ERROR_TYPES.values()):
            problems.append(f"'error.type' {error.get('type')!r} is not a documented error type")
    else:
        expected = ERROR_TYPES.get(status, "invalid_request_error" if status < 500
                                   else "upstream_error")
        if error.get("type") != expected:
            problems.append(f"'error.type' is {error.get('type')!r}; docs/api.md gives "
                            f"{expected!r} for {status}")
    if anthropic and body.get("type") != "error":
        problems.append("no top-level \"type\": \"error\" on /messages")
    return problems


def sse_events(text: str) -> list[tuple[str, str]]:
    """(event, data) of each event; comment lines skipped."""
    events: list[tuple[str, str]] = []
    name, data = "message", []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line:
            if data:
                events.append((name, "\n".join(data)))
            name, data = "message", []
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
    if data:
        events.append((name, "\n".join(data)))
    return events


def stream_problems(path: str, text: str, gen_id: str | None) -> list[str]:
    """Keep-alive comments only before the first event; a stream ends with its
    normal end or an error event, never silently; error events carry the envelope; OpenAI
    chunks carry the generation id."""
    problems: list[str] = []
    lines = text.replace("\r\n", "\n").split("\n")
    first_data = next((i for i, line in enumerate(lines) if line.startswith("data:")), None)
    if first_data is not None and any(line.startswith(":") for line in lines[first_data:]):
        problems.append("an SSE comment after the first event")
    events = sse_events(text)
    if not events:
        return [*problems, "an empty event stream"]
    if path in OPENAI_STREAM_PATHS:
        if events[-1][1] != "[DONE]":
            problems.append(f"the stream does not end with data: [DONE] ({events[-1]!r:.200})")
        for n, (_, data) in enumerate(events[:-1]):
            if data == "[DONE]":
                problems.append("data: [DONE] before the end of the stream")
                continue
            chunk = json.loads(data)
            if isinstance(chunk, dict) and "error" in chunk:
                problems += envelope_problems(chunk, None, anthropic=False)
                if n != len(events) - 2:
                    problems.append("an event other than [DONE] after the error event")
            elif not isinstance(chunk, dict) or chunk.get("id") != gen_id:
                problems.append(f"chunk {data!r:.100} does not carry the generation id "
                                f"{gen_id!r}")
    elif path == "/responses":
        problems += responses_stream_problems(events, gen_id)
    else:
        if events[-1][0] not in ("message_stop", "error"):
            problems.append(f"the stream ends with {events[-1][0]!r}, not message_stop or error")
        for n, (name, data) in enumerate(events):
            if name == "error":
                problems += envelope_problems(json.loads(data), None, anthropic=True)
                if n != len(events) - 1:
                    problems.append("events after the error event")
    return problems


def responses_stream_problems(events: list[tuple[str, str]], gen_id: str | None) -> list[str]:
    """A Responses stream: response.created first, a lifecycle end last, sequence numbers
    0, 1, ..., every event named by its type, the generation id as the response id, and a
    failure's error carrying the envelope's fields."""
    problems: list[str] = []
    data = [json.loads(payload) for _, payload in events]
    if [d.get("sequence_number") for d in data] != list(range(len(data))):
        problems.append("sequence numbers are not 0, 1, ...")
    if any(name != d.get("type") for (name, _), d in zip(events, data, strict=True)):
        problems.append("an event whose name is not its type")
    if data[0].get("type") != "response.created":
        problems.append(f"the stream starts with {data[0].get('type')!r}")
    if data[-1].get("type") not in RESPONSES_ENDS:
        problems.append(f"the stream ends with {data[-1].get('type')!r}")
    for d in data:
        response = d.get("response")
        if isinstance(response, dict) and response.get("id") != gen_id:
            problems.append(f"{d['type']} names {response.get('id')!r}, not {gen_id!r}")
    if data[-1].get("type") == "response.failed":
        error = data[-1]["response"].get("error") or {}
        problems += [f"response.failed without error.{name}" for name in
                     ("message", "type", "code", "param") if name not in error]
    return problems


def spec_checks(ctx: CheckContext, response: Response, case: schemathesis.Case) -> None:
    """Promises the document alone cannot express."""
    status = response.status_code
    path = case.operation.path
    headers = {name.lower(): values[0] for name, values in response.headers.items()}
    content_type = headers.get("content-type", "")
    problems: list[str] = []
    if status >= 500 and status not in UPSTREAM_STATUSES:
        problems.append(f"a {status}: the only 5xx allowed here are the upstream ones "
                        f"(502/503/504)")
    body: Any = None
    if content_type.startswith("application/json"):
        try:
            body = json.loads(response.content)
        except ValueError as exc:
            problems.append(f"a JSON content type with a body that is not JSON: {exc}")
    if status >= 400:
        if not content_type.startswith("application/json"):
            problems.append(f"an error with content type {content_type!r}, not JSON")
        elif not (path == "/health" and status == 503):
            problems += envelope_problems(body, status, anthropic=path.startswith("/messages"))
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    param = error.get("param") if isinstance(error, dict) else None
    # Answers no handler gave (no route, wrong method) looked at no key.
    routed = code not in ("route_not_found", "method_not_allowed")
    authenticated = (path not in UNAUTHENTICATED_PATHS and routed and status != 401
                     and code != "key_disabled" and param != "X-AnyRouter-Trace-Id")
    if authenticated:
        missing = [name for name in ("x-ratelimit-limit", "x-ratelimit-remaining",
                                     "x-ratelimit-reset") if name not in headers]
        if missing:
            problems.append(f"an authenticated answer without {', '.join(missing)}")
    if status == 429 and not headers.get("retry-after", "").isdigit():
        problems.append("a 429 without Retry-After (seconds)")
    # A proxied request whose body was read carries its generation id, failures included;
    # chat/completions and completions use it as the body's id.
    body_read = status < 400 or (authenticated and status not in (408, 415)
                                 and code not in ("invalid_json", "request_too_large"))
    gen_id = headers.get("x-anyrouter-generation-id")
    if path in PROXIED_PATHS and body_read:
        if not gen_id or not gen_id.startswith("gen-"):
            problems.append(f"a proxied request answered {status} {code} without "
                            f"X-AnyRouter-Generation-Id")
        elif status == 200 and path in (*OPENAI_STREAM_PATHS, "/responses") \
                and isinstance(body, dict) and body.get("id") != gen_id:
            problems.append(f"the body's id {body.get('id')!r} is not the generation id "
                            f"{gen_id}")
        if status == 200 and gen_id:
            SEEN["generation"].append(gen_id)
    if status == 200 and content_type.startswith("text/event-stream"):
        problems += stream_problems(path, response.content.decode("utf-8"), gen_id)
    if path == "/batch" and status in (200, 202) and isinstance(body, dict):
        SEEN["batch"].append(str(body.get("id")))
    if path.startswith("/batch") and isinstance(body, dict):  # each item an ordinary answer
        sent = case.body.get("requests") if isinstance(case.body, dict) else case.body
        urls = {item["custom_id"]: str(item.get("url")) for item in sent
                if isinstance(item, dict) and isinstance(item.get("custom_id"), str)
                } if isinstance(sent, list) else {}
        for result in body.get("results") or body.get("data") or []:
            answer = result.get("response") if isinstance(result, dict) else None
            item_status = answer.get("status_code") if isinstance(answer, dict) else None
            if not isinstance(item_status, int) or item_status < 400:
                continue
            label = f"batch item {result.get('custom_id')!r}"
            if item_status >= 500 and item_status not in UPSTREAM_STATUSES:
                problems.append(f"{label} answered {item_status}: {answer.get('body')!r:.300}")
            item_body = answer.get("body")
            url = urls.get(result.get("custom_id"))  # unknown for GET: lenient then
            anthropic = url.rstrip("/").endswith("/messages") if url is not None else \
                isinstance(item_body, dict) and "type" in item_body
            problems += [f"{label}: {p}" for p in
                         envelope_problems(item_body, item_status, anthropic=anthropic)]
    # No key ever appears in an answer: the provider's, the caller's or another key's.
    answer = response.content + repr(sorted(response.headers.items())).encode()
    problems += [f"the answer contains the secret {secret[:12]}..." for secret in SECRETS
                 if secret.encode() in answer]
    if problems:
        raise SpecViolation(case.operation.label, "\n".join(problems))


CONFORMANCE = [status_code_conformance, content_type_conformance,
               response_headers_conformance, response_schema_conformance]


# -- schemathesis: the schema and its generation hooks ----------------------------------

schema = schemathesis.openapi.from_dict(DOCUMENT)


@schemathesis.serializer("application/x-ndjson", "application/jsonl")
def ndjson(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    """JSON lines: one batch item per line (the document gives the body as the array)."""
    items = value if isinstance(value, list) else [value]
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def _with_model(body: Any, models: list[str], rng: random.Random) -> Any:
    # Hypothesis' simplest draw is 0.0: it steers (shrinking keeps a real model).
    if not isinstance(body, dict) or rng.random() >= 0.6:
        return body
    body = {**body, "model": rng.choice(models)}
    if rng.random() < 0.7:
        body.pop("models", None)
    if rng.random() < 0.7:
        body.pop("provider", None)
    return body


def _steer(path: str, body: Any, rng: random.Random) -> Any:
    if path in MODELS_BY_PATH:
        return _with_model(body, MODELS_BY_PATH[path], rng)
    if path == "/batch":
        items = body.get("requests") if isinstance(body, dict) else body
        if isinstance(items, list):
            steered = []
            for item in items:
                if isinstance(item, dict) and rng.random() < 0.6:
                    url = rng.choice(list(BATCH_URLS))
                    item = {**item, "url": url,
                            "body": _with_model(item.get("body"), BATCH_URLS[url], rng)}
                steered.append(item)
            return {**body, "requests": steered} if isinstance(body, dict) else steered
    return body


def _path_of(context: schemathesis.HookContext) -> str:
    return context.operation.path if context.operation is not None else ""


@schema.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    """Most bodies name a real model (and batch items a real endpoint), so that requests
    reach routing and the fake upstreams, not only model lookup."""
    path = _path_of(context)
    return st.randoms(use_true_random=False).map(lambda rng: _steer(path, body, rng))


@schema.hook
def flatmap_headers(context: schemathesis.HookContext,
                    headers: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    """A forced provider is mostly left out or one of the config's (a random one is 400)."""
    if not isinstance(headers, dict) or "X-AnyRouter-Provider" not in headers:
        return st.just(headers)

    def steer(rng: random.Random) -> dict[str, Any]:
        roll = rng.random()
        if roll < 0.5:
            return {k: v for k, v in headers.items() if k != "X-AnyRouter-Provider"}
        if roll < 0.8:
            return {**headers, "X-AnyRouter-Provider": rng.choice(["openai", "anthropic"])}
        return headers

    return st.randoms(use_true_random=False).map(steer)


def _seen_id(values: dict[str, Any], kind: str, rng: random.Random) -> dict[str, Any]:
    if SEEN[kind] and rng.random() < 0.5:
        return {**values, "id": rng.choice(SEEN[kind])}
    return values


@schema.hook
def flatmap_path_parameters(context: schemathesis.HookContext,
                            path_parameters: dict[str, Any] | None
                            ) -> st.SearchStrategy[Any]:
    """Reads of generations and batches ask for ids this run made, half the time."""
    path = _path_of(context)
    kind = "generation" if path.startswith(("/generation", "/responses")) else \
        "batch" if path.startswith("/batch/") else None
    if kind is None or not isinstance(path_parameters, dict):
        return st.just(path_parameters)
    return st.randoms(use_true_random=False).map(
        lambda rng: _seen_id(path_parameters, kind, rng))


@schema.hook
def flatmap_query(context: schemathesis.HookContext,
                  query: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    if _path_of(context) != "/generation" or not isinstance(query, dict):
        return st.just(query)
    return st.randoms(use_true_random=False).map(
        lambda rng: _seen_id(query, "generation", rng))


# -- deterministic: what random input cannot reach -------------------------------------------


def exchange(live: LiveProxy, session: requests.Session, path: str, method: str = "POST", *,
             body: Any = None, key: str | None = ALICE_KEY,
             headers: dict[str, str] | None = None,
             path_parameters: dict[str, Any] | None = None,
             query: dict[str, Any] | None = None) -> Response:
    """One request through schemathesis, its answer held against the document and docs/api.md."""
    operation = schema[path][method]
    kwargs: dict[str, Any] = {}
    if body is not None:
        kwargs.update(body=body, media_type="application/json")
    case = operation.Case(path_parameters=path_parameters, query=query, **kwargs)
    sent = {**(auth(key) if key else {}), **(headers or {})}
    response = case.call(base_url=live.api, session=session, headers=sent, timeout=20)
    case.validate_response(response, checks=CONFORMANCE, additional_checks=[spec_checks],
                           headers=sent)
    return response


def error_of(response: Response) -> dict[str, Any]:
    error = json.loads(response.content)["error"]
    assert isinstance(error, dict)
    return error


CHAT = {"model": "scripted/gpt", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "scripted/claude", "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(("behaviour", "status", "code"), [
    (Behaviour(status=500), 502, "upstream_error"),
    (Behaviour(status=401), 502, "upstream_error"),
    (Behaviour(status=200, body="<html>not json</html>"), 502, "upstream_invalid_response"),
    (Behaviour(status=429, headers={"Retry-After": "7"}), 429, "upstream_rate_limited"),
    (Behaviour(status=400, body={"error": {"message": "temperature is too hot",
                                           "type": "invalid_request_error",
                                           "code": "invalid_value", "param": "temperature"}}),
     400, "invalid_value"),
    (Behaviour(status=404), 404, "not_found"),
    (Behaviour(status=413), 413, "request_too_large"),
    (Behaviour(status=422), 422, "invalid_request"),
], ids=["500", "401", "html", "429", "400", "404", "413", "422"])
@pytest.mark.parametrize("path", ["/chat/completions", "/messages"])
def test_upstream_failures_match_the_document(live: LiveProxy, session: requests.Session,
                                              path: str, behaviour: Behaviour, status: int,
                                              code: str) -> None:
    """Upstream 400/404/413/422 passed on with their status and message; 401/403
    and 5xx become 502; 429 keeps its Retry-After; an unparseable answer is 502."""
    live.scripted.then(behaviour)
    body = CHAT if path == "/chat/completions" else {**MESSAGES, "model": "scripted/gpt"}
    response = exchange(live, session, path, body=body)
    assert response.status_code == status
    error = error_of(response)
    assert error["code"] == code
    assert error["metadata"]["provider_name"] == "scripted"
    if status == 429:
        assert response.headers["retry-after"] == ["7"]
    if code == "invalid_value":
        assert (error["message"], error["param"]) == ("temperature is too hot", "temperature")


def test_upstream_timeout_is_504(live: LiveProxy, session: requests.Session) -> None:
    live.scripted.then(Behaviour(delay_s=3))
    response = exchange(live, session, "/chat/completions", body={**CHAT, "model": "slow/gpt"})
    assert response.status_code == 504
    assert error_of(response)["code"] == "upstream_timeout"


@pytest.mark.parametrize(("behaviour", "ends_with_error"), [
    (Behaviour(), False),
    (Behaviour(first_event_delay_s=1.0), False),  # keep-alive comments, then the events
    (Behaviour(error_event_after=2), True),
    (Behaviour(no_done=True), True),
    (Behaviour(drop_after=2), True),
], ids=["normal", "keepalive", "error-event", "no-done", "dropped"])
def test_chat_streams_match_the_document(live: LiveProxy, session: requests.Session,
                                         behaviour: Behaviour, ends_with_error: bool) -> None:
    """Every event a valid chunk with the generation id, keep-alive only before the first
    event, and the end either [DONE] or the error envelope then [DONE]."""
    live.scripted.then(behaviour)
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    response = exchange(live, session, "/chat/completions", body=body)
    assert response.status_code == 200
    text = response.content.decode()
    events = sse_events(text)
    assert events[-1][1] == "[DONE]"
    assert ("error" in json.loads(events[-2][1])) is ends_with_error
    if behaviour.first_event_delay_s:
        assert text.startswith(": ANYROUTER PROCESSING")


def test_stream_that_never_starts_ends_with_an_error_event(live: LiveProxy,
                                                           session: requests.Session) -> None:
    """Keep-alive committed the 200; the first event never came: a 504-type error event."""
    live.scripted.then(Behaviour(first_event_delay_s=3))
    body = {**CHAT, "model": "slow/gpt", "stream": True}
    response = exchange(live, session, "/chat/completions", body=body)
    assert response.status_code == 200
    events = sse_events(response.content.decode())
    assert [json.loads(events[0][1])["error"]["type"], events[1][1]] == ["timeout_error",
                                                                          "[DONE]"]


RESPONSES = {"model": "scripted/gpt", "input": "hi"}


@pytest.mark.parametrize(("model", "behaviour", "last"), [
    ("scripted/gpt", Behaviour(), "response.completed"),
    ("scripted/gpt", Behaviour(drop_after=2), "response.failed"),
    ("scripted/gpt", Behaviour(error_event_after=2), "response.failed"),
    ("slow/gpt", Behaviour(first_event_delay_s=3), "response.failed"),
], ids=["normal", "dropped", "error-event", "never-starts"])
def test_responses_streams_match_the_document(live: LiveProxy, session: requests.Session,
                                              model: str, behaviour: Behaviour,
                                              last: str) -> None:
    """response.created first, numbered events, and a lifecycle end: a failure after the
    200 (keep-alive comments included) is response.failed with the error's fields."""
    live.scripted.then(behaviour)
    response = exchange(live, session, "/responses",
                        body={**RESPONSES, "model": model, "stream": True})
    assert response.status_code == 200
    events = sse_events(response.content.decode())
    assert events[0][0] == "response.created" and events[-1][0] == last


def test_stored_responses_match_the_document(live: LiveProxy,
                                             session: requests.Session) -> None:
    made = exchange(live, session, "/responses", body=RESPONSES)
    response_id = json.loads(made.content)["id"]
    ids = {"id": response_id}
    got = exchange(live, session, "/responses/{id}", "GET", path_parameters=ids)
    assert json.loads(got.content) == json.loads(made.content)
    items = exchange(live, session, "/responses/{id}/input_items", "GET",
                     path_parameters=ids, query={"order": "asc", "limit": 1})
    assert json.loads(items.content)["data"][0]["content"][0]["text"] == "hi"
    bad = exchange(live, session, "/responses/{id}/input_items", "GET", path_parameters=ids,
                   query={"limit": 500})
    assert (bad.status_code, error_of(bad)["param"]) == (400, "limit")
    theirs = exchange(live, session, "/responses/{id}", "GET", key=BOB_KEY,
                      path_parameters=ids)
    assert (theirs.status_code, error_of(theirs)["code"]) == (404, "response_not_found")
    deleted = exchange(live, session, "/responses/{id}", "DELETE", path_parameters=ids)
    assert json.loads(deleted.content) == {"id": response_id, "object": "response",
                                           "deleted": True}
    again = exchange(live, session, "/responses", body={**RESPONSES,
                                                        "previous_response_id": response_id})
    assert (again.status_code, error_of(again)["param"]) == (404, "previous_response_id")


@pytest.mark.parametrize(("behaviour", "last"), [
    (Behaviour(), "message_stop"),
    (Behaviour(error_event_after=3), "error"),
    (Behaviour(no_done=True), "error"),
], ids=["normal", "error-event", "no-message-stop"])
def test_messages_streams_match_the_document(live: LiveProxy, session: requests.Session,
                                             behaviour: Behaviour, last: str) -> None:
    live.scripted_anthropic.then(behaviour)
    response = exchange(live, session, "/messages", body={**MESSAGES, "stream": True})
    assert response.status_code == 200
    events = sse_events(response.content.decode())
    assert events[-1][0] == last
    assert json.loads(events[0][1])["message"]["model"] == "scripted/claude"


def test_messages_upstream_error_is_an_anthropic_envelope(live: LiveProxy,
                                                          session: requests.Session) -> None:
    live.scripted_anthropic.then(Behaviour(status=529))
    response = exchange(live, session, "/messages", body=MESSAGES)
    assert response.status_code == 502
    assert json.loads(response.content)["type"] == "error"


@pytest.mark.parametrize(("key", "path", "method", "body", "status", "code"), [
    (None, "/chat/completions", "POST", CHAT, 401, "missing_api_key"),
    ("sk-nope", "/models", "GET", None, 401, "invalid_api_key"),
    (DAVE_KEY, "/credits", "GET", None, 401, "key_expired"),
    (DAVE_KEY, "/messages", "POST", MESSAGES, 401, "key_expired"),
    (CAROL_KEY, "/auth/key", "GET", None, 403, "key_disabled"),
    (CAROL_KEY, "/chat/completions", "POST", CHAT, 403, "key_disabled"),
    (BOB_KEY, "/chat/completions", "POST", CHAT, 402, "insufficient_credits"),
    (FRANK_KEY, "/messages", "POST", MESSAGES, 402, "budget_exceeded"),
    (BOB_KEY, "/embeddings", "POST", {"model": "openai/text-embedding-3-small", "input": "x"},
     403, "model_not_allowed"),
    (ALICE_KEY, "/chat/completions", "POST", {**CHAT, "model": "nokey/gpt"}, 503,
     "no_provider_available"),
    (ALICE_KEY, "/completions", "POST", {"model": "openai/gpt-4-0314", "prompt": "x"}, 410,
     "model_sunset"),
    (ALICE_KEY, "/completions", "POST", {"model": "scripted/claude", "prompt": "x"}, 400,
     "provider_not_available"),
    (ALICE_KEY, "/messages/count_tokens", "POST", {**MESSAGES, "model": "nope/nope"}, 404,
     "model_not_found"),
], ids=["missing-key", "invalid-key", "expired-read", "expired-messages", "disabled-read",
        "disabled-chat", "credits", "budget", "allow-list", "no-provider", "sunset",
        "no-route-kind", "unknown-model"])
def test_gateway_errors_match_the_document(live: LiveProxy, session: requests.Session,
                                           key: str | None, path: str, method: str,
                                           body: Any, status: int, code: str) -> None:
    response = exchange(live, session, path, method, body=body, key=key)
    assert (response.status_code, error_of(response)["code"]) == (status, code)


@pytest.mark.parametrize("path", ["/credits", "/auth/key"])
def test_budget_reads_match_the_document(live: LiveProxy, session: requests.Session,
                                         path: str) -> None:
    response = exchange(live, session, path, "GET", key=FRANK_KEY)
    budget = json.loads(response.content)["data"]["budget"]
    assert (budget["usd"], budget["period"]) == (0.000001, "day")
    alice = exchange(live, session, path, "GET")
    assert json.loads(alice.content)["data"]["budget"] is None


def test_rate_limited_is_429_with_retry_after(live: LiveProxy,
                                              session: requests.Session) -> None:
    first = exchange(live, session, "/embeddings", key=ERIN_KEY,
                     body={"model": "openai/text-embedding-3-small", "input": "x"})
    assert first.status_code == 200
    second = exchange(live, session, "/embeddings", key=ERIN_KEY,
                      body={"model": "openai/text-embedding-3-small", "input": "x"})
    assert (second.status_code, error_of(second)["code"]) == (429, "rate_limited")
    assert second.headers["x-ratelimit-remaining"] == ["0"]
    read = exchange(live, session, "/models", "GET", key=ERIN_KEY)  # reads still answer
    assert read.status_code == 200


def test_body_errors_match_the_document(live: LiveProxy, session: requests.Session) -> None:
    too_large = session.post(live.api + "/chat/completions", headers=auth(),
                             data=b"x" * (MAX_BODY_BYTES + 1), timeout=20)
    wrong_type = session.post(live.api + "/chat/completions", data=b"a=b", timeout=20,
                              headers={**auth(), "Content-Type": "text/plain"})
    for response, status, code in ((too_large, 413, "request_too_large"),
                                   (wrong_type, 415, "unsupported_media_type")):
        assert response.status_code == status
        assert response.json()["error"]["code"] == code
        operation = schema["/chat/completions"]["POST"]
        operation.Case(body=CHAT).validate_response(
            response, checks=CONFORMANCE, additional_checks=[spec_checks])


def test_slow_body_is_408(live: LiveProxy) -> None:
    """A body that does not arrive within server.body_timeout_s: 408 in the envelope."""
    host, port = live.root.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + ALICE_KEY.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        started = time.monotonic()
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
    assert time.monotonic() - started < BODY_TIMEOUT_S + 5
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert b"content-type: application/json" in head.lower()
    envelope = json.loads(body)
    assert envelope_problems(envelope, 408, anthropic=False) == []
    assert envelope["error"]["code"] == "request_timeout"


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("DELETE", "/api/v1/models", 405, "method_not_allowed"),
    ("GET", "/api/v1/chat/completions", 405, "method_not_allowed"),
    ("GET", "/api/v1/nothing-here", 404, "route_not_found"),
    ("POST", "/api/v2/chat/completions", 404, "route_not_found"),
    ("GET", "/v1/messages/count_tokens", 405, "method_not_allowed"),
])
def test_unknown_paths_and_methods_are_envelopes(live: LiveProxy, method: str, path: str,
                                                 status: int, code: str) -> None:
    response = requests.request(method, live.root + path, headers=auth(), timeout=10)
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("application/json")
    envelope = response.json()
    assert envelope_problems(envelope, status, anthropic="/messages" in path) == []
    assert envelope["error"]["code"] == code
    if status == 405:
        assert response.headers["Allow"]


def test_model_ids_with_slashes_and_deprecation_headers(live: LiveProxy,
                                                        session: requests.Session) -> None:
    plain = exchange(live, session, "/models/{id}", "GET",
                     path_parameters={"id": "openai/gpt-3.5-turbo"})  # sent as openai%2F...
    raw = session.get(live.api + "/models/openai/gpt-3.5-turbo", headers=auth(), timeout=10)
    assert plain.status_code == raw.status_code == 200
    assert json.loads(plain.content) == raw.json()
    assert raw.headers["Deprecation"].startswith("@")
    assert raw.headers["Link"] == '</api/v1/models/openai/gpt-4o-mini>; rel="successor-version"'
    listed = {m["id"] for m in json.loads(exchange(live, session, "/models", "GET").content)[
        "data"]}
    assert "openai/gpt-4-0314" not in listed  # past its sunset
    count = json.loads(exchange(live, session, "/models/count", "GET").content)
    assert count == {"data": {"count": len(listed)}}
    sunset = exchange(live, session, "/models/{id}", "GET",
                      path_parameters={"id": "openai/gpt-4-0314"})
    assert sunset.status_code == 200


def test_generations_and_batches_are_the_callers_own(live: LiveProxy,
                                                     session: requests.Session) -> None:
    made = exchange(live, session, "/chat/completions", body=CHAT,
                    headers={"X-AnyRouter-Trace-Id": "trace-123"})
    assert made.headers["x-anyrouter-trace-id"] == ["trace-123"]
    gen_id = made.headers["x-anyrouter-generation-id"][0]
    mine = exchange(live, session, "/generation/{id}", "GET", path_parameters={"id": gen_id})
    by_query = exchange(live, session, "/generation", "GET", query={"id": gen_id})
    assert json.loads(mine.content) == json.loads(by_query.content)
    assert json.loads(mine.content)["data"]["id"] == gen_id
    assert json.loads(mine.content)["data"]["trace_id"] == "trace-123"
    theirs = exchange(live, session, "/generation/{id}", "GET", key=BOB_KEY,
                      path_parameters={"id": gen_id})
    assert (theirs.status_code, error_of(theirs)["code"]) == (404, "generation_not_found")
    batch = exchange(live, session, "/batch", body={"requests": [
        {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": CHAT}]})
    batch_id = json.loads(batch.content)["id"]
    other = exchange(live, session, "/batch/{id}", "GET", key=BOB_KEY,
                     path_parameters={"id": batch_id})
    assert (other.status_code, error_of(other)["code"]) == (404, "batch_not_found")


def test_batches_match_the_document(live: LiveProxy, session: requests.Session) -> None:
    """Items fail alone (HTTP answers with their envelope, unrunnable items with `error`);
    async batches answer 202 and report progress; results also as JSON lines."""
    items = [
        {"custom_id": "ok", "method": "POST", "url": "/v1/chat/completions", "body": CHAT},
        {"custom_id": "unknown-model", "url": "/chat/completions",
         "body": {**CHAT, "model": "nope/nope"}},
        {"custom_id": "messages-error", "url": "/api/v1/messages",
         "body": {**MESSAGES, "max_tokens": "many"}},
        {"custom_id": "stream", "url": "/v1/chat/completions", "body": {**CHAT, "stream": True}},
        {"custom_id": "bad-url", "url": "/v1/images", "body": {}},
        {"custom_id": "embeddings", "url": "/v1/embeddings",
         "body": {"model": "openai/text-embedding-3-small", "input": "x"}},
    ]
    sync = json.loads(exchange(live, session, "/batch", body={"requests": items}).content)
    by_id = {r["custom_id"]: r for r in sync["results"]}
    assert [r["custom_id"] for r in sync["results"]] == [i["custom_id"] for i in items]
    assert by_id["ok"]["response"]["status_code"] == 200
    assert by_id["unknown-model"]["response"]["status_code"] == 404
    assert by_id["messages-error"]["response"]["body"]["type"] == "error"
    assert by_id["stream"]["error"]["code"] == "streaming_not_supported"
    assert by_id["bad-url"]["error"]["code"] == "invalid_url"
    lines = b"\n".join(json.dumps(i).encode() for i in items[:2]) + b"\nnot json\n"
    started = session.post(live.api + "/batch?mode=async", data=lines, timeout=20,
                           headers={**auth(), "Content-Type": "application/x-ndjson"})
    assert started.status_code == 202
    schema["/batch"]["POST"].Case(body=[], media_type="application/x-ndjson").validate_response(
        started, checks=CONFORMANCE, additional_checks=[spec_checks])
    batch_id = started.json()["id"]
    deadline = time.monotonic() + 10
    while True:
        status = exchange(live, session, "/batch/{id}", "GET", path_parameters={"id": batch_id})
        if json.loads(status.content)["status"] == "completed" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    done = json.loads(status.content)
    assert done["status"] == "completed"
    assert done["results"][2]["error"]["code"] == "invalid_json"
    results = exchange(live, session, "/batch/{id}/results", "GET",
                       path_parameters={"id": batch_id})
    assert len(json.loads(results.content)["data"]) == 3
    as_lines = session.get(live.api + f"/batch/{batch_id}/results", timeout=10,
                           headers={**auth(), "Accept": "application/x-ndjson"})
    assert as_lines.headers["Content-Type"].startswith("application/x-ndjson")
    assert [json.loads(line)["custom_id"] for line in as_lines.text.splitlines()] == \
        ["ok", "unknown-model", None]
    cancelled = exchange(live, session, "/batch/{id}/cancel", path_parameters={"id": batch_id})
    assert json.loads(cancelled.content)["status"] == "completed"  # already finished


# -- bodies the fuzz does not generate ---------------------------------------------------


@pytest.mark.parametrize(("path", "encoding"), [
    ("/chat/completions", "gzip"), ("/messages", "deflate"), ("/batch", "gzip")])
def test_undecodable_body_is_a_400_envelope(live: LiveProxy, path: str,
                                            encoding: str) -> None:
    # Its own connection: the server closes this one after the failure.
    response = requests.post(live.api + path, data=b"this is not compressed", timeout=20,
                            headers={**auth(), "Content-Type": "application/json",
                                     "Content-Encoding": encoding})
    expect(response.status_code == 400
           and not envelope_problems(response.json(), 400, anthropic=path == "/messages"),
           response)


def expect(ok: bool, response: requests.Response) -> None:
    """Fail with the answer, without a traceback: reporting a traceback of an expected
    failure can crash pytest on CPython 3.11.7 ("AST constructor recursion depth
    mismatch" while it parses source files; CPython gh-106905)."""
    if not ok:
        pytest.fail(f"{response.status_code} {response.text:.300}", pytrace=False)


def with_deep_metadata(body: dict[str, Any], depth: int = 300) -> bytes:
    """`body` plus a `metadata` of `depth` nested arrays, as JSON text (built as text: no
    deep Python structure, which pytest and hypothesis would walk when reporting)."""
    return json.dumps(body)[:-1].encode() + b', "metadata": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(("path", "body"), [
    ("/chat/completions", CHAT),
    ("/embeddings", {"model": "openai/text-embedding-3-small", "input": "x"}),
    ("/messages", MESSAGES),
    pytest.param("/messages/count_tokens", MESSAGES),
], ids=["chat", "embeddings", "messages", "count_tokens"])
def test_deeply_nested_body_is_not_a_500(live: LiveProxy, session: requests.Session,
                                         path: str, body: dict[str, Any]) -> None:
    """Nesting orjson can read (1024) but not write (254): forwarded or a 400, never 500."""
    response = session.post(live.api + path, data=with_deep_metadata(body), timeout=20,
                            headers={**auth(), "Content-Type": "application/json"})
    status = response.status_code
    expect(status == 200 or (status == 400 and not envelope_problems(
        response.json(), 400, anthropic="messages" in path)), response)


def test_deeply_nested_batch_item_fails_alone(live: LiveProxy,
                                              session: requests.Session) -> None:
    deep = with_deep_metadata({"custom_id": "deep", "url": "/v1/chat/completions",
                               "body": CHAT})
    ok = json.dumps({"custom_id": "ok", "url": "/v1/chat/completions", "body": CHAT})
    response = session.post(live.api + "/batch", timeout=20,
                            data=b'{"requests": [' + ok.encode() + b", " + deep + b"]}",
                            headers={**auth(), "Content-Type": "application/json"})
    expect(response.status_code == 200
           and response.json()["results"][0]["response"]["status_code"] == 200, response)


# -- schemathesis over every operation (the last test of the live proxy) -----------------


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_conforms(case: schemathesis.Case, live: LiveProxy, session: requests.Session,
                      error_log: ErrorLog) -> None:
    base = live.root if case.operation.path == "/metrics" else live.api
    if case.operation.path == "/models/{id}" and (case.path_parameters or {}).get("id") == "count":
        # Not a model id: /models/count is the count (the document says so).
        response = session.get(base + "/models/count", headers=auth(), timeout=20)
        assert isinstance(response.json()["data"]["count"], int)
        return
    before = len(error_log.records)
    case.call_and_validate(base_url=base, session=session, headers=auth(), timeout=20,
                           checks=[*CONFORMANCE, ignored_auth], additional_checks=[spec_checks])
    if case.operation.path == "/health":  # also at the root, for load balancers
        case.call_and_validate(base_url=live.root, session=session, timeout=20,
                               checks=CONFORMANCE, additional_checks=[spec_checks])
    logged = [record.getMessage() for record in error_log.records[before:]]
    assert not logged, f"the proxy logged errors: {logged}"


def test_health_503_and_metrics_token_match_the_document(tmp_path: Path) -> None:
    """No provider can serve: /health (also at the root) is 503 with the error envelope. With
    server.metrics_token, /metrics needs it (401 envelope otherwise)."""
    proxy = LiveProxy(tmp_path, unavailable_config)
    proxy.start()
    try:
        for url in (proxy.api + "/health", proxy.root + "/health"):
            response = requests.get(url, timeout=10)
            assert response.status_code == 503
            body = response.json()
            assert body["status"] == "unavailable"
            assert body["providers"]["nokey"]["status"] == "no_credentials"
            assert envelope_problems(body, 503, anthropic=False) == []
            schema["/health"]["GET"].Case().validate_response(
                response, checks=CONFORMANCE, additional_checks=[spec_checks])
        metrics = schema["/metrics"]["GET"]
        for headers, status in (({}, 401), (auth(), 401),
                                ({"Authorization": f"Bearer {METRICS_TOKEN}"}, 200)):
            response = requests.get(proxy.root + "/metrics", headers=headers, timeout=10)
            assert response.status_code == status
            metrics.Case().validate_response(response, checks=CONFORMANCE,
                                             additional_checks=[spec_checks])
    finally:
        proxy.stop()
