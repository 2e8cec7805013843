"""auth -> model -> limits -> route -> exchange -> upstream -> usage/metrics.

`Gateway` is the request path without HTTP server details: handlers hand it a parsed
`ProxyRequest` and get back an `Answer` (whole body) or a `StreamSession` (relayed by
the server). Pre-stream failures raise `ProxyError`; after the first streamed byte,
failures become a final error event in the client's dialect.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import fnmatch
import hashlib
import hmac
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .accounting import Books, Ledger
from .config.model import Config, KeyConfig, ModelConfig
from .credits import CreditLedger, estimate_prompt_tokens, worst_case_cost
from .errors import (
    AuthenticationFailed,
    Gone,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ProxyError,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
    error_for_status,
)
from .providers.anthropic import anthropic_headers
from .providers.base import CallContext, Exchange, StreamTranslator
from .providers.registry import exchange_for
from .ratelimit import Limiter
from .routing import Target, resolve_targets
from .sse import SSEDecoder, encode_event
from .types import CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES, Attempt, GenerationRecord, Usage
from .upstream import Upstream, UpstreamResponse

log = logging.getLogger(__name__)

PASSTHROUGH_STATUSES = frozenset({400, 404, 413, 422})  # the request's fault: returned as is
_DUMMY_DIGEST = "0" * 64
Write = Callable[[bytes], Awaitable[None]]


def new_generation_id() -> str:
    return "gen-" + os.urandom(12).hex()


@dataclass(slots=True)
class ProxyRequest:
    endpoint: str
    body: dict[str, Any]
    key: KeyConfig
    trace_id: str | None = None
    forced_provider: str | None = None
    gen_id: str = field(default_factory=new_generation_id)
    client_headers: dict[str, str] = field(default_factory=dict)  # anthropic-version, -beta


@dataclass(slots=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]


class Gateway:
    def __init__(self, config: Config, *, http: Upstream, mock: Upstream, limiter: Limiter,
                 credits: CreditLedger, ledger: Ledger,
                 draw: Callable[[], float] = random.random) -> None:
        self.config = config
        self.http = http
        self.mock = mock
        self.limiter = limiter
        self.credits = credits
        self.ledger = ledger
        self._draw = draw

    def reconfigure(self, config: Config) -> None:
        self.limiter.reconfigure(config)
        self.config = config  # one assignment: requests in flight keep the config they had

    # -- authentication -------------------------------------------------------------

    def authenticate(self, token: str | None, trace_id: str | None = None) -> KeyConfig:
        if not token:
            raise AuthenticationFailed(
                "Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
                code="missing_api_key")
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
        key = self.config.keys_by_hash.get(digest)
        # Known and unknown keys take the same path: one constant-time comparison.
        matched = hmac.compare_digest(key.key_sha256 if key else _DUMMY_DIGEST, digest)
        if key is None or not matched:
            self.ledger.store.audit("auth_failed", trace_id=trace_id,
                                    detail={"key_prefix": token[:8]})
            raise AuthenticationFailed("Invalid API key", code="invalid_api_key")
        if key.disabled:
            self.ledger.store.audit("key_disabled", key_name=key.name, trace_id=trace_id)
            raise PermissionDenied(f"Key {key.name} is disabled", code="key_disabled")
        if key.expires_at is not None and key.expires_at <= dt.datetime.now(dt.UTC):
            self.ledger.store.audit("key_expired", key_name=key.name, trace_id=trace_id)
            raise AuthenticationFailed(f"Key {key.name} expired at {key.expires_at.isoformat()}",
                                       code="key_expired")
        return key

    # -- models ----------------------------------------------------------------------

    def model_for(self, key: KeyConfig, model_id: Any, config: Config | None = None
                  ) -> ModelConfig:
        config = config or self.config
        if not isinstance(model_id, str) or not model_id:
            raise InvalidRequest("'model' is required and must be a string", param="model")
        model = config.models.get(model_id)
        if model is None:
            raise NotFound(f"Model {model_id} does not exist", code="model_not_found",
                           param="model")
        if key.models is not None and not any(fnmatch.fnmatchcase(model_id, p)
                                              for p in key.models):
            raise PermissionDenied(f"Key {key.name} is not allowed to use model {model_id}",
                                   code="model_not_allowed", param="model")
        deprecated = model.deprecated
        if deprecated is not None and deprecated.sunset is not None \
                and dt.date.today() >= deprecated.sunset:
            successor = f"; use {deprecated.successor}" if deprecated.successor else ""
            raise Gone(f"Model {model_id} was retired on {deprecated.sunset.isoformat()}"
                       f"{successor}", param="model",
                       metadata={"successor": deprecated.successor})
        return model

    # -- proxying --------------------------------------------------------------------

    async def proxy(self, req: ProxyRequest) -> Answer | StreamSession:
        config = self.config
        body = req.body
        model = self.model_for(req.key, body.get("model"), config)
        stream = _validate(req.endpoint, body)
        if stream and req.endpoint == EMBEDDINGS:
            raise InvalidRequest("Embeddings cannot be streamed", param="stream")
        targets = resolve_targets(model, config.providers, forced=req.forced_provider,
                                  draw=self._draw)
        if req.forced_provider:
            self.ledger.store.audit("forced_provider", key_name=req.key.name,
                                    trace_id=req.trace_id,
                                    detail={"provider": req.forced_provider, "model": model.id})
        books = self._open_books(req, model, stream, config)
        headers = {"X-AnyRouter-Generation-Id": req.gen_id, **deprecation_headers(model)}
        try:
            if stream:
                return await self._open_stream(req, model, targets, books, headers)
            return await self._complete(req, model, targets, books, headers)
        except asyncio.CancelledError:
            books.close(cancelled=True)
            raise
        except ProxyError as exc:
            books.close(error=exc)
            raise
        except BaseException as exc:
            books.close(error=UpstreamError(f"internal failure: {type(exc).__name__}",
                                            code="internal_error", status=500))
            raise

    async def count_tokens(self, req: ProxyRequest) -> Answer:
        """POST /messages/count_tokens: passed to the first Anthropic route (free upstream,
        so it is not a generation); models without one get the local estimate."""
        config = self.config
        model = self.model_for(req.key, req.body.get("model"), config)
        targets = resolve_targets(model, config.providers, forced=req.forced_provider,
                                  draw=self._draw)
        for target in targets:
            if target.provider.kind != "anthropic":
                continue
            ctx = CallContext(req.gen_id, model.id, int(time.time()), target.provider,
                              target.route, False, False, config.server.default_max_tokens,
                              req.client_headers)
            body = {**req.body, "model": target.route.model}
            response = await self.http.send(target.provider, "/messages/count_tokens",
                                            orjson.dumps(body), anthropic_headers(ctx))
            try:
                raw = await response.read()
            finally:
                response.close()
            if response.status >= 400:
                raise upstream_failure(ctx, response.status, raw, response.headers)
            return Answer(200, raw, {"X-AnyRouter-Provider": target.provider.id})
        estimate = {"input_tokens": estimate_prompt_tokens(req.body), "estimated": True}
        return Answer(200, orjson.dumps(estimate), {})

    def _open_books(self, req: ProxyRequest, model: ModelConfig, stream: bool,
                    config: Config) -> Books:
        body = req.body
        prompt_tokens = estimate_prompt_tokens(body)
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        max_tokens = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else None
        tokens = prompt_tokens + (max_tokens or model.max_output_tokens
                                  or config.server.default_max_tokens)
        if req.endpoint == EMBEDDINGS:
            tokens, max_tokens = prompt_tokens, 0
        store, metrics = self.ledger.store, self.ledger.metrics
        try:
            admission = self.limiter.admit(req.key, model.id, tokens)
        except RateLimited as exc:
            metrics.rejected(req.key.name, "rate_limited")
            store.audit("rate_limited", key_name=req.key.name, trace_id=req.trace_id,
                        detail={"model": model.id, **(exc.metadata or {})})
            raise
        try:
            cost = worst_case_cost(model, prompt_tokens, max_tokens,
                                   config.server.default_max_tokens)
            reservation = self.credits.reserve(req.key, cost)
        except ProxyError:
            admission.release()
            metrics.rejected(req.key.name, "insufficient_credits")
            store.audit("insufficient_credits", key_name=req.key.name, trace_id=req.trace_id,
                        detail={"model": model.id})
            raise
        record = GenerationRecord(id=req.gen_id, created_at=time.time(), key_name=req.key.name,
                                  endpoint=req.endpoint, model=model.id, trace_id=req.trace_id,
                                  streamed=stream)
        return Books(self.ledger, record, model, admission, reservation, prompt_tokens)

    def _contexts(self, req: ProxyRequest, model: ModelConfig, targets: list[Target],
                  stream: bool) -> AsyncIterator[tuple[CallContext, Exchange]]:
        """The targets that can take this request now, as (context, exchange)."""
        include_usage = False
        if stream:
            options = req.body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
        created = int(time.time())
        default_max_tokens = self.config.server.default_max_tokens

        async def generate() -> AsyncIterator[tuple[CallContext, Exchange]]:
            for target in targets:
                exchange = exchange_for(req.endpoint, target.provider.kind)
                if exchange is None:
                    continue
                yield CallContext(req.gen_id, model.id, created, target.provider, target.route,
                                  stream, include_usage, default_max_tokens,
                                  req.client_headers), exchange

        return generate()

    async def _send(self, ctx: CallContext, exchange: Exchange, body: dict[str, Any],
                    books: Books) -> UpstreamResponse:
        call = exchange.build(body, ctx)
        upstream = self.mock if ctx.provider.kind == "mock" else self.http
        record = books.record
        record.provider, record.upstream_model = ctx.provider.id, ctx.route.model
        started = time.perf_counter()
        try:
            response = await upstream.send(ctx.provider, call.path, orjson.dumps(call.body),
                                           call.headers)
        except ProxyError as exc:
            status = "timeout" if isinstance(exc, UpstreamTimeout) else "error"
            record.attempts.append(Attempt(ctx.provider.id, status, _ms_since(started)))
            raise
        if response.status >= 400:
            try:
                raw = await response.read()
            finally:
                response.close()
            record.attempts.append(Attempt(ctx.provider.id, response.status, _ms_since(started)))
            raise upstream_failure(ctx, response.status, raw, response.headers)
        record.attempts.append(Attempt(ctx.provider.id, response.status, _ms_since(started)))
        return response

    async def _complete(self, req: ProxyRequest, model: ModelConfig, targets: list[Target],
                        books: Books, headers: dict[str, str]) -> Answer:
        failures: list[ProxyError] = []
        async for ctx, exchange in self._contexts(req, model, targets, stream=False):
            response: UpstreamResponse | None = None
            try:
                response = await self._send(ctx, exchange, req.body, books)
                raw = await response.read()
                try:
                    data = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    raise UpstreamError(
                        f"Provider {ctx.provider.id} sent an invalid response: not JSON",
                        code="upstream_invalid_response",
                        metadata={"provider_name": ctx.provider.id}) from None
                reply = exchange.reply(data, ctx)
            except ProxyError as exc:
                if not _should_fail_over(exc):
                    raise
                failures.append(exc)
                _mark_last_attempt(books, exc)
                continue
            finally:
                if response is not None:
                    response.close()
            books.record.upstream_id = reply.upstream_id
            books.record.finish_reason = reply.finish_reason
            cost = books.close(usage=reply.usage)
            usage = reply.body.get("usage")
            if isinstance(usage, dict):
                usage["cost"] = cost
            headers["X-AnyRouter-Provider"] = ctx.provider.id
            return Answer(200, orjson.dumps(reply.body), headers)
        raise final_error(model, failures)

    async def _open_stream(self, req: ProxyRequest, model: ModelConfig, targets: list[Target],
                           books: Books, headers: dict[str, str]) -> StreamSession:
        failures: list[ProxyError] = []
        async for ctx, exchange in self._contexts(req, model, targets, stream=True):
            response: UpstreamResponse | None = None
            chunks: AsyncIterator[bytes] | None = None
            try:
                deadline = asyncio.get_running_loop().time() + ctx.provider.timeouts.first_byte_s
                response = await self._send(ctx, exchange, req.body, books)
                chunks = aiter(response.chunks())
                translator = exchange.translator(ctx)
                decoder = SSEDecoder()
                try:
                    async with asyncio.timeout_at(deadline):
                        first, failure = await _first_output(chunks, decoder, translator)
                except TimeoutError:
                    raise UpstreamTimeout(
                        f"Provider {ctx.provider.id} timed out waiting for the first event",
                        metadata={"provider_name": ctx.provider.id}) from None
            except ProxyError as exc:
                await _discard(response, chunks)
                if not _should_fail_over(exc):
                    raise
                failures.append(exc)
                _mark_last_attempt(books, exc)
                continue
            except BaseException:
                await _discard(response, chunks)
                raise
            assert response is not None and chunks is not None
            books.first_token()
            headers["X-AnyRouter-Provider"] = ctx.provider.id
            return StreamSession(req.endpoint, headers, books, response, chunks, decoder,
                                 translator, first, failure)
        raise final_error(model, failures)


class StreamSession:
    """An opened upstream stream whose first client-bound bytes are ready."""

    def __init__(self, endpoint: str, headers: dict[str, str], books: Books,
                 response: UpstreamResponse, chunks: AsyncIterator[bytes],
                 decoder: SSEDecoder, translator: StreamTranslator, first: list[bytes],
                 failure: ProxyError | None = None) -> None:
        self.endpoint = endpoint
        self.headers = headers
        self._books = books
        self._response = response
        self._chunks = chunks
        self._decoder = decoder
        self._translator = translator
        self._pending = first
        self._failure = failure  # already happened, after the first events

    async def relay(self, write: Write) -> None:
        """Write the whole stream; always ends with the normal end or an error event."""
        translator, books = self._translator, self._books
        events = len(self._pending)
        try:
            await write(b"".join(self._pending))
            if self._failure is not None:
                raise self._failure
            async for chunk in self._chunks:
                out, failure = _translate(chunk, self._decoder, translator)
                if out:
                    events += len(out)
                    await write(b"".join(out))
                if failure is not None:
                    raise failure
            tail = translator.finish()
            # The row is queued before the last bytes go out, so a client that reads
            # /generation right after the stream finds it.
            self._fill_record()
            books.close(usage=translator.usage, completion_estimate=events)
            await write(b"".join(tail))
        except ProxyError as exc:
            self._fill_record()
            books.close(error=exc, usage=translator.usage, completion_estimate=events)
            await write(stream_error_event(self.endpoint, exc))
        except (asyncio.CancelledError, ConnectionError):
            self._fill_record()
            books.close(cancelled=True, usage=translator.usage, completion_estimate=events)
            raise
        finally:
            await _discard(self._response, self._chunks)

    async def abandon(self) -> None:
        """The client went away before the relay began."""
        self._fill_record()
        self._books.close(cancelled=True, usage=self._translator.usage)
        await _discard(self._response, self._chunks)

    def _fill_record(self) -> None:
        record = self._books.record
        record.upstream_id = self._translator.upstream_id
        record.finish_reason = self._translator.finish_reason


def _translate(chunk: bytes, decoder: SSEDecoder, translator: StreamTranslator
               ) -> tuple[list[bytes], ProxyError | None]:
    """Client bytes for one upstream read, and the failure that cut it short, if any:
    events before a failure in the same read still reach the client."""
    out: list[bytes] = []
    try:
        for event in decoder.feed(chunk):
            out.extend(translator.feed(event))
    except ProxyError as exc:
        return out, exc
    return out, None


async def _first_output(chunks: AsyncIterator[bytes], decoder: SSEDecoder,
                        translator: StreamTranslator) -> tuple[list[bytes], ProxyError | None]:
    async for chunk in chunks:
        out, failure = _translate(chunk, decoder, translator)
        if failure is not None and not out:
            raise failure
        if out:
            return out, failure
    return translator.finish(), None  # raises: the stream ended before any event


async def _discard(response: UpstreamResponse | None,
                   chunks: AsyncIterator[bytes] | None) -> None:
    if chunks is not None:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    if response is not None:
        response.close()


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _mark_last_attempt(books: Books, exc: ProxyError) -> None:
    """An attempt that got a 200 but then failed is recorded by what went wrong."""
    attempts = books.record.attempts
    if attempts and attempts[-1].status == 200:
        attempts[-1].status = "timeout" if isinstance(exc, UpstreamTimeout) else exc.code


def _validate(endpoint: str, body: dict[str, Any]) -> bool:
    """Shape checks the gateway itself relies on; upstreams validate the rest."""
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    if endpoint in (CHAT, MESSAGES):
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    elif endpoint == COMPLETIONS and "prompt" not in body:
        raise InvalidRequest("'prompt' is required", param="prompt")
    elif endpoint == EMBEDDINGS and "input" not in body:
        raise InvalidRequest("'input' is required", param="input")
    if endpoint == MESSAGES and not isinstance(body.get("max_tokens"), int):
        raise InvalidRequest("'max_tokens' is required and must be an integer",
                             param="max_tokens")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object", param="stream_options")
    return stream


def _should_fail_over(exc: ProxyError) -> bool:
    return exc.status not in PASSTHROUGH_STATUSES


def upstream_failure(ctx: CallContext, status: int, raw: bytes,
                     headers: Any) -> ProxyError:
    """An upstream error answer, as the error the client (or failover) sees."""
    provider = ctx.provider.id
    message, code, param = _upstream_error_fields(raw)
    meta = {"provider_name": provider, "provider_status": status}
    if status in PASSTHROUGH_STATUSES:
        return error_for_status(status, message or f"Provider {provider} rejected the request",
                                code=code, param=param, metadata=meta)
    if status in (401, 403):
        return UpstreamError(f"Provider {provider} rejected the gateway's credentials "
                             f"({status}); check its api_key", metadata=meta)
    if status == 429:
        retry_after = headers.get("Retry-After") if headers is not None else None
        extra = {"Retry-After": retry_after} if retry_after and retry_after.isdigit() else None
        return RateLimited(f"Provider {provider} is rate limiting the gateway",
                           code="upstream_rate_limited", metadata=meta, headers=extra)
    detail = f": {message}" if message else ""
    return UpstreamError(f"Provider {provider} failed with status {status}{detail}",
                         metadata=meta)


def _upstream_error_fields(raw: bytes) -> tuple[str | None, str | None, str | None]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw[:300].decode("utf-8", "replace").strip()
        return (text or None), None, None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        message, code, param = error.get("message"), error.get("code"), error.get("param")
        return (str(message) if message else None,
                code if isinstance(code, str) else None,
                param if isinstance(param, str) else None)
    if isinstance(error, str):
        return error, None, None
    return None, None, None


def final_error(model: ModelConfig, failures: list[ProxyError]) -> ProxyError:
    """One error that says what was tried (SPEC §5, issue 'Routing and resilience')."""
    if not failures:
        return ServiceUnavailable(f"No provider is available for model {model.id} right now")
    if len(failures) == 1:
        return failures[0]
    tried = ", ".join(
        f"{(f.metadata or {}).get('provider_name', '?')} ({f.status} {f.code})"
        for f in failures)
    meta = {"attempts": [(f.metadata or {}).get("provider_name") for f in failures]}
    if all(isinstance(f, RateLimited) for f in failures):
        return RateLimited(f"Every provider of {model.id} is rate limiting: {tried}",
                           code="upstream_rate_limited", metadata=meta,
                           headers=failures[-1].headers)
    if all(isinstance(f, UpstreamTimeout) for f in failures):
        return UpstreamTimeout(f"Every provider of {model.id} timed out: {tried}", metadata=meta)
    return UpstreamError(f"Every provider of {model.id} failed: {tried}", metadata=meta)


def deprecation_headers(model: ModelConfig) -> dict[str, str]:
    deprecated = model.deprecated
    if deprecated is None:
        return {}
    since = dt.datetime.combine(deprecated.since, dt.time(), dt.UTC)
    headers = {"Deprecation": f"@{int(since.timestamp())}"}
    if deprecated.sunset is not None:
        sunset = dt.datetime.combine(deprecated.sunset, dt.time(), dt.UTC)
        headers["Sunset"] = email.utils.format_datetime(sunset, usegmt=True)
    if deprecated.successor:
        headers["Link"] = f'</api/v1/models/{deprecated.successor}>; rel="successor-version"'
    return headers


def stream_error_event(endpoint: str, exc: ProxyError) -> bytes:
    """The final event of a stream that failed, in the client's dialect (SPEC §5)."""
    envelope = exc.envelope()
    if endpoint == MESSAGES:
        return encode_event(orjson.dumps({"type": "error", **envelope}), "error")
    return encode_event(orjson.dumps(envelope)) + b"data: [DONE]\n\n"


def usage_of(books: Books) -> Usage:
    return books.record.usage
