"""auth -> model -> limits -> route -> exchange -> upstream -> usage/metrics.

`Gateway` is the request path without HTTP server details: handlers hand it a parsed
`ProxyRequest` and get back an `Answer` (whole body) or a `StreamSession` (relayed by
the server). Pre-stream failures raise `ProxyError`, after failover and retries.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fnmatch
import functools
import hashlib
import hmac
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from .accounting import Books, Ledger
from .billed_extras import NO_EXTRAS, Extras, check_extras
from .config.model import Config, KeyConfig, ModelConfig, Pricing, ProviderConfig, is_metered
from .config.wildcards import resolve_model
from .deprecation import deprecation_headers, endpoint_headers, is_sunset
from .errors import (
    AuthenticationFailed,
    Gone,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ProxyError,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)
from .failures import (
    counts_against_health,
    final_error,
    retry_after_s,
    should_fail_over,
    slow_answer,
    upstream_failure,
    worth_retrying,
)
from .fan_out import gather_bounded
from .health import BreakerPolicy, HealthBoard
from .ids import new_generation_id
from .limits.connection_shares import SHARE_SKIP, ConnectionShares, Share, share_exhausted
from .limits.quota import NOTHING_HELD, Held, Quota
from .output_cap import OutputCap, cap_upstream_body, output_cap
from .pricing import estimate_prompt_tokens, worst_case_cost
from .providers.aws_auth import AwsAuth
from .providers.base import (
    CallContext,
    Exchange,
    FanOut,
    StreamTranslator,
    UpstreamCall,
    as_fan_out,
)
from .providers.google_auth import VERTEX, GoogleTokens
from .providers.registry import exchange_for, stream_decoder, token_counter_for
from .responses_turn import Turn, prepare_turn
from .routing import (
    Target,
    fallback_models,
    parse_prefs,
    resolve_targets,
    routing_fields_go_upstream,
)
from .storage.responses import ResponseStore
from .stream_session import StreamSession, discard, first_output
from .types import (
    CANCELLED,
    CHAT,
    COMPLETIONS,
    DROPPED,
    EMBEDDINGS,
    ENDPOINT_PATHS,
    MESSAGES,
    RESPONSES,
    Attempt,
    GenerationRecord,
    Usage,
)
from .upstream import Upstream, UpstreamResponse

log = logging.getLogger(__name__)

_DUMMY_DIGEST = "0" * 64
T = TypeVar("T")


@dataclass(slots=True)
class ProxyRequest:
    endpoint: str
    body: dict[str, Any]
    key: KeyConfig
    trace_id: str | None = None
    forced_provider: str | None = None
    gen_id: str = field(default_factory=new_generation_id)
    client_headers: dict[str, str] = field(default_factory=dict)  # anthropic-version, -beta
    record: GenerationRecord | None = None  # its usage row, once it has one
    extras: Extras = NO_EXTRAS  # what it may be billed beyond tokens, once checked
    turn: Turn | None = None  # Responses: the conversation turn (what to keep)


@dataclass(slots=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]


def breaker_policies(config: Config) -> dict[str, BreakerPolicy]:
    return {pid: BreakerPolicy(p.circuit_failures, p.circuit_cooldown_s)
            for pid, p in config.providers.items()}


class Gateway:
    def __init__(self, config: Config, *, http: Upstream, mock: Upstream, quota: Quota,
                 ledger: Ledger,
                 draw: Callable[[], float] = random.random,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.config = config
        self.http = http
        self.mock = mock
        self.quota = quota
        self.ledger = ledger
        self.responses = ResponseStore(ledger.store)
        self.board = HealthBoard(breaker_policies(config))
        self.shares = ConnectionShares()
        self.aws = AwsAuth(config.providers.values())  # kind bedrock's credentials
        self.google = GoogleTokens()  # kind vertex's OAuth tokens
        self._draw = draw
        self._sleep = sleep

    def reconfigure(self, config: Config) -> None:
        self.quota.reconfigure(config)
        self.board.reconfigure(breaker_policies(config))
        self.aws.reconfigure(config.providers.values())
        self.google.reconfigure(config.providers.values())
        self.config = config  # one assignment: requests in flight keep the config they had

    async def open(self) -> None:
        """Resolve provider credentials that need I/O (off the event loop) before serving."""
        await self.aws.open()

    async def close(self) -> None:
        await self.aws.close()

    def has_credentials(self, provider: ProviderConfig) -> bool:
        """Configured with credentials and, where they are looked up (the AWS chain),
        found: otherwise the provider is `no_credentials` and routing skips it."""
        return provider.has_credentials and self.aws.available(provider)

    # -- authentication -------------------------------------------------------------

    def authenticate(self, token: str | None, trace_id: str | None = None,
                     client: Callable[[], str | None] = lambda: None) -> KeyConfig:
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
                                    detail={"key_prefix": token[:8], "client": client()})
            raise AuthenticationFailed("Invalid API key", code="invalid_api_key")
        return self._usable(key, trace_id)

    def current_key(self, name: str, trace_id: str | None = None) -> KeyConfig:
        """The key called `name` in the current config, checked as `authenticate` checks
        it: for work that runs long after its request was authenticated (batch items)."""
        key = self.config.keys.get(name)
        if key is None:
            raise AuthenticationFailed(f"Key {name} no longer exists", code="invalid_api_key")
        return self._usable(key, trace_id)

    def _usable(self, key: KeyConfig, trace_id: str | None) -> KeyConfig:
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
        model = resolve_model(config, model_id)
        if model is None:
            raise NotFound(f"Model {model_id} does not exist", code="model_not_found",
                           param="model")
        if model.is_wildcard:
            raise NotFound(f"Model {model_id} is a wildcard: ask for a model under it, such "
                           f"as {model_id[:-1]}MODEL", code="model_not_found", param="model")
        if key.models is not None and not any(fnmatch.fnmatchcase(model_id, p)
                                              for p in key.models):
            raise PermissionDenied(f"Key {key.name} is not allowed to use model {model_id}",
                                   code="model_not_allowed", param="model")
        deprecated = model.deprecated
        if deprecated is not None and is_sunset(model):
            successor = f"; use {deprecated.successor}" if deprecated.successor else ""
            assert deprecated.sunset is not None
            raise Gone(f"Model {model_id} was retired on {deprecated.sunset.isoformat()}"
                       f"{successor}", param="model",
                       metadata={"successor": deprecated.successor})
        return model

    def known_model(self, body: dict[str, Any], config: Config | None = None) -> str:
        """The requested model id if the config has it: never a client's invented string
        in logs or metric labels."""
        model = body.get("model")
        return model if isinstance(model, str) and resolve_model(config or self.config, model) \
            is not None else "unknown"

    def _models_for(self, req: ProxyRequest, config: Config) -> list[ModelConfig]:
        primary = req.body.get("model")
        first = self.model_for(req.key, primary, config) if isinstance(primary, str) else None
        if first is not None and routing_fields_go_upstream(first, config.providers):
            return [first]  # `models` is the upstream's fallback list, not ours
        ids: list[Any] = fallback_models(req.body) or [primary]  # model_for: why
        return [first if first is not None and model_id == primary
                else self.model_for(req.key, model_id, config) for model_id in ids]

    def _targets(self, req: ProxyRequest, models: list[ModelConfig],
                 config: Config) -> list[Target]:
        board = self.board
        # `provider` preferences name the upstream's providers when it takes them itself.
        prefs = None if routing_fields_go_upstream(models[0], config.providers) \
            else parse_prefs(req.body.get("provider"))
        return resolve_targets(
            models, config.providers, forced=req.forced_provider,
            prefs=prefs, draw=self._draw,
            usable=self.has_credentials,
            latency=lambda pid: board.get(pid).median_latency(),
            throughput=lambda pid: board.get(pid).median_throughput())

    # -- proxying --------------------------------------------------------------------

    def endpoint_headers(self, endpoint: str) -> dict[str, str]:
        """Deprecation headers of the endpoint itself; raises 410 after its sunset."""
        path = ENDPOINT_PATHS[endpoint]
        return endpoint_headers(path, self.config.deprecations.get(path))

    async def proxy(self, req: ProxyRequest) -> Answer | StreamSession:
        config = self.config
        try:
            if req.endpoint == RESPONSES:
                req.body, req.turn = await prepare_turn(req.body, req.key, self.responses)
            endpoint_extra = self.endpoint_headers(req.endpoint)
            models = self._models_for(req, config)
            stream = _validate(req.endpoint, req.body)
            cap = output_cap(req.endpoint, req.body, model_limit=models[0].max_output_tokens,
                             default_max_tokens=config.server.default_max_tokens)
            targets = self._targets(req, models, config)
            req.extras = check_extras(req.body, req.client_headers,
                                      [t.pricing for t in targets], is_metered(req.key))
        except ProxyError as exc:
            self._refused(req, self.known_model(req.body, config), exc)
            raise
        if req.forced_provider:
            self.ledger.store.audit("forced_provider", key_name=req.key.name,
                                    trace_id=req.trace_id,
                                    detail={"provider": req.forced_provider,
                                            "model": models[0].id})
        # The first model that may answer is admitted (its model_limits included) with
        # the request; a fallback model's own limits are admitted with its attempts.
        books = await self._open_books(req, targets[0].model, targets, stream, cap)
        books.min_web_searches = req.extras.min_searches
        headers = {"X-AnyRouter-Generation-Id": req.gen_id, **endpoint_extra}
        try:
            if stream:
                return await self._try_targets(req, targets, books, headers,
                                               self._open_stream)
            return await self._try_targets(req, targets, books, headers, self._complete)
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

    def _refused(self, req: ProxyRequest, model_id: str, exc: ProxyError) -> None:
        """A proxied request refused before routing still gets its row (cost 0), so
        the generation id it was given resolves, and its metrics."""
        record = _new_record(req, model_id, req.body.get("stream") is True,
                             status_code=exc.status, error_code=exc.code,
                             usage=Usage(source="none"))
        model = resolve_model(self.config, model_id)
        record.wildcard = model.wildcard if model is not None else None
        self.ledger.store.record(record)
        self.ledger.metrics.observe(record)

    async def _open_books(self, req: ProxyRequest, model: ModelConfig, targets: list[Target],
                          stream: bool, cap: OutputCap) -> Books:
        """Admit the request's worst case (prompt estimate + every choice at its output cap)
        against the token limits and reserve its cost against the credits."""
        prompt_tokens = estimate_prompt_tokens(req.body)
        tokens = prompt_tokens + cap.total
        store, metrics = self.ledger.store, self.ledger.metrics
        try:
            admission = await self.quota.admit(req.key, model.id, tokens)
        except RateLimited as exc:
            metrics.rejected(req.key.name, "rate_limited")
            self._refused(req, model.id, exc)
            store.audit("rate_limited", key_name=req.key.name, trace_id=req.trace_id,
                        detail={"model": model.id, **(exc.metadata or {})})
            raise
        except ProxyError as exc:  # the shared state is unreachable (503): still a row
            self._refused(req, model.id, exc)
            raise
        try:
            # The dearest of the routes that may answer bounds the reservation.
            cost = worst_case_cost(_dearest(targets), prompt_tokens, cap.total) \
                + req.extras.reservation([t.pricing for t in targets], prompt_tokens)
            reservation = await self.quota.reserve(req.key, cost)
        except ProxyError as exc:
            admission.settle_tokens(0)  # refused: its token estimate goes back
            admission.release()
            reason = "budget_exceeded" if exc.code == "budget_exceeded" else \
                "insufficient_credits"
            metrics.rejected(req.key.name, reason)
            self._refused(req, model.id, exc)
            store.audit(reason, key_name=req.key.name, trace_id=req.trace_id,
                        detail={"model": model.id})
            raise
        record = _new_record(req, model.id, stream, wildcard=model.wildcard)
        books = Books(self.ledger, record, targets[0].pricing,
                      admission, reservation, prompt_tokens, cap, cost, token_estimate=tokens)
        store.journal(record, cost, prompt_tokens)  # charged at `cost` if we die now
        return books

    async def _try_targets(self, req: ProxyRequest, targets: list[Target], books: Books,
                           headers: dict[str, str],
                           attempt: Callable[[ProxyRequest, CallContext, Exchange, Books,
                                              dict[str, str]], Awaitable[T]]) -> T:
        """Failover across targets, then retry rounds with backoff over those whose
        failure may pass (never after the first byte: attempts return before it)."""
        server = self.config.server
        candidates = [(t, ex) for t in targets
                      if (ex := exchange_for(req.endpoint, t.provider.kind,
                                             native_responses=t.provider.native_responses))
                      is not None]
        if not candidates:
            raise InvalidRequest(f"No provider of model {targets[0].model.id} serves "
                                 f"{req.endpoint}", code="provider_not_available")
        include_usage = _include_usage(req.body)
        output = books.cap if books.cap is not None and books.cap.tokens else None
        created = int(time.time())
        admitted = targets[0].model.id  # whose model_limits the request's admission holds
        failures: list[ProxyError] = []
        skipped: list[str] = []
        streamed = books.record.streamed
        for round_number in range(server.retries + 1):
            again: list[tuple[Target, Exchange]] = []
            wait = 0.0
            for target, exchange in candidates:
                provider = target.provider
                health = self.board.get(provider.id)
                if not health.available(self.board.clock()):
                    skipped.append(f"{provider.id}: circuit open")
                    continue
                model_admission = await self._admit_model(req, target, admitted, books)
                if model_admission is None:
                    health.release_probe()
                    skipped.append(f"{target.model.id}: at its model_limits")
                    continue
                try:
                    share, refusal = await self._claim(provider, req.key.name,
                                                       books.prompt_estimate)
                except BaseException:  # e.g. the client left meanwhile
                    model_admission.release()
                    health.release_probe()
                    raise
                if share is None:
                    model_admission.release()
                    health.release_probe()
                    skipped.append(f"{provider.id}: {refusal}")
                    continue
                ctx = CallContext(req.gen_id, target.model.id, created, provider, target.route,
                                  books.record.streamed, include_usage,
                                  server.default_max_tokens, req.client_headers, target.pricing,
                                  output, request=req.body)
                books.pricing = target.pricing  # what this attempt costs if it answers
                books.record.model = target.model.id
                books.record.wildcard = target.model.wildcard
                # Held by the books from now on: an answer closes them within the attempt.
                books.provider_admission, books.model_admission = share, model_admission
                started = time.perf_counter()
                try:
                    result = await attempt(req, ctx, exchange, books, headers)
                except ProxyError as exc:
                    books.provider_admission = books.model_admission = None
                    share.release()
                    model_admission.release()
                    if counts_against_health(exc, streamed=streamed):
                        health.failure(self.board.clock())
                    else:
                        health.release_probe()
                    _mark_last_attempt(books, exc)
                    slow = slow_answer(exc, streamed)
                    if slow:  # abandoned upstream, maybe still billed there: the operator's
                        books.record.operator_cost += worst_case_cost(
                            target.pricing, books.prompt_estimate,
                            books.cap.total if books.cap is not None else 0)
                    if not should_fail_over(exc):
                        raise
                    failures.append(exc)
                    if slow and not server.retry_slow_answers:  # never generated twice
                        raise final_error(targets[0].model, failures, skipped) from None
                    if worth_retrying(exc):
                        again.append((target, exchange))
                        wait = max(wait, retry_after_s(exc) or 0.0)
                    continue
                except BaseException:
                    books.provider_admission = books.model_admission = None
                    share.release()
                    model_admission.release()
                    health.release_probe()
                    raise
                if not isinstance(result, StreamSession):  # a stream reports when it ends
                    usage = books.record.usage
                    health.success(self.board.clock(), _ms_since(started),
                                   tokens=usage.completion_tokens)
                headers["X-AnyRouter-Provider"] = provider.id
                headers.update(deprecation_headers(target.model))
                return result
            if not again or round_number == server.retries or wait > server.retry_after_max_s:
                break
            backoff = min(server.retry_backoff_s * 2 ** round_number, server.retry_backoff_max_s)
            await self._sleep(max(wait, backoff * (0.5 + self._draw() / 2)))
            candidates = again
        if not failures and any(reason.endswith(SHARE_SKIP) for reason in skipped):
            self.ledger.metrics.rejected(req.key.name, "connection_share")
            raise share_exhausted(req.key.name, skipped)
        raise final_error(targets[0].model, failures, skipped)

    async def _claim(self, provider: ProviderConfig, key_name: str,
                     prompt_estimate: int) -> tuple[Share | None, str]:
        """The key's place in the provider's pool, carrying the provider's own admission;
        None and the reason when the key holds its share or the provider is at its limits."""
        share = self.shares.take(provider, key_name)
        if share is None:
            return None, SHARE_SKIP
        try:
            share.admission = await self.quota.admit_provider(provider, prompt_estimate)
        except BaseException:
            share.release()
            raise
        if share.admission is None:
            share.release()
            return None, "at its limits"
        return share, ""

    async def _admit_model(self, req: ProxyRequest, target: Target, admitted: str,
                           books: Books) -> Held | None:
        """An attempt on a fallback model takes from that model's own model_limits (those
        the request's admission does not hold); None when they are exhausted. A no-op
        hold when the model is the one admitted."""
        if target.model.id == admitted:
            return NOTHING_HELD
        return await self.quota.admit_model(req.key, target.model.id, admitted,
                                            books.token_estimate)

    async def _send(self, ctx: CallContext, exchange: Exchange, body: dict[str, Any],
                    books: Books) -> UpstreamResponse:
        return await self._send_call(ctx, exchange.build(body, ctx), books)

    async def _send_call(self, ctx: CallContext, call: UpstreamCall,
                         books: Books) -> UpstreamResponse:
        if ctx.output is not None:  # whatever the exchange built, never more than reserved
            cap_upstream_body(call.path, call.body, ctx.output)
        payload = _encode_body(call.body)
        upstream = self.mock if ctx.provider.kind == "mock" else self.http
        record = books.record
        record.provider, record.upstream_model = ctx.provider.id, ctx.route.model
        headers = call.headers
        started = time.perf_counter()
        sent = False

        def went_out() -> None:
            nonlocal sent
            sent = True

        try:
            if call.signed:  # over exactly the bytes and the URL that are sent
                headers = await self.aws.sign(ctx.provider, ctx.provider.base_url + call.path,
                                              payload, headers)
            elif ctx.provider.kind == VERTEX:
                headers = await self._google_auth(ctx.provider, headers)
            response = await upstream.send(ctx.provider, call.path, payload, headers,
                                           went_out)
        except ProxyError as exc:
            status = "timeout" if isinstance(exc, UpstreamTimeout) else "error"
            record.attempts.append(Attempt(ctx.provider.id, status, _ms_since(started)))
            raise
        except asyncio.CancelledError:
            if sent:  # the upstream has it and may bill it: Books.close charges the prompt
                record.attempts.append(Attempt(ctx.provider.id, CANCELLED, _ms_since(started)))
            raise
        books.answered_ms = books.elapsed_ms()
        if response.resent:
            # The upstream closed a reused connection without answering and the request
            # went out again: it may have worked on the first one too (the operator's).
            record.attempts.append(Attempt(ctx.provider.id, DROPPED, 0.0))
            record.operator_cost += worst_case_cost(
                ctx.pricing, books.prompt_estimate,
                books.cap.total if books.cap is not None else 0)
        if response.status >= 400:
            if response.status == 401 and ctx.provider.kind == VERTEX:
                self.google.forget(ctx.provider)  # the next request gets a new token
            try:
                raw = await response.read()
            finally:
                response.close()
            record.attempts.append(Attempt(ctx.provider.id, response.status, _ms_since(started)))
            raise upstream_failure(ctx.provider, response.status, raw, response.headers)
        record.attempts.append(Attempt(ctx.provider.id, response.status, _ms_since(started)))
        return response

    async def _google_auth(self, provider: ProviderConfig,
                           headers: dict[str, str]) -> dict[str, str]:
        """The headers with a Google OAuth access token (kind vertex)."""
        return {**headers, "Authorization": f"Bearer {await self.google.bearer(provider)}"}

    async def _complete(self, req: ProxyRequest, ctx: CallContext, exchange: Exchange,
                        books: Books, headers: dict[str, str]) -> Answer:
        fan_out = as_fan_out(exchange)
        if fan_out is not None:
            reply = fan_out.reply_all(await self._fan_out(ctx, fan_out, req.body, books), ctx)
        else:
            response = await self._send(ctx, exchange, req.body, books)
            reply = exchange.reply(await _read_json(response, ctx.provider), ctx)
        books.record.upstream_id = reply.upstream_id
        books.record.finish_reason = reply.finish_reason
        cost = books.close(usage=reply.usage, completion_estimate=reply.output_tokens)
        usage = reply.body.get("usage")
        if isinstance(usage, dict) and req.endpoint != MESSAGES:
            usage["cost"] = cost
        if req.turn is not None and req.turn.store and reply.output_items is not None:
            self.responses.keep(req.gen_id, req.key.name, req.turn.input_items,
                                reply.output_items, reply.body,
                                new_items=req.turn.new_items)
        return Answer(200, orjson.dumps(reply.body), headers)

    async def _fan_out(self, ctx: CallContext, exchange: FanOut, body: dict[str, Any],
                       books: Books) -> list[Any]:
        """Every call of a fan-out exchange, at most its `concurrency` at once, answers in
        call order. Together they are one attempt of the route (one entry in the row's
        attempts): a failed call fails it, and the calls that had answered, billed upstream
        but not to the client, are counted as the operator's cost."""
        calls = exchange.build_all(body, ctx)
        attempts = books.record.attempts
        first, started = len(attempts), time.perf_counter()

        async def answer(call: UpstreamCall) -> Any:
            return await _read_json(await self._send_call(ctx, call, books), ctx.provider)

        try:
            return await gather_bounded([functools.partial(answer, call) for call in calls],
                                        exchange.concurrency)
        except asyncio.CancelledError:  # the client left: it pays for the calls sent
            sent = sum(1 for attempt in attempts[first:]
                       if attempt.status in (200, CANCELLED))
            books.prompt_estimate = math.ceil(books.prompt_estimate * sent / len(calls))
            raise
        except ProxyError as exc:
            if not slow_answer(exc, books.record.streamed):  # else all of it is counted
                answered = sum(1 for attempt in attempts[first:] if attempt.status == 200)
                books.record.operator_cost += worst_case_cost(
                    ctx.pricing, math.ceil(books.prompt_estimate * answered / len(calls)), 0)
            raise
        finally:
            tried = attempts[first:]
            if tried:
                del attempts[first:]
                status = next((a.status for a in tried if a.status != 200), 200)
                attempts.append(Attempt(ctx.provider.id, status, _ms_since(started)))

    async def _open_stream(self, req: ProxyRequest, ctx: CallContext, exchange: Exchange,
                           books: Books, headers: dict[str, str]) -> StreamSession:
        response: UpstreamResponse | None = None
        chunks: AsyncIterator[bytes] | None = None
        started = time.perf_counter()
        try:
            deadline = asyncio.get_running_loop().time() + ctx.provider.timeouts.first_byte_s
            response = await self._send(ctx, exchange, req.body, books)
            chunks = aiter(response.chunks())
            translator = exchange.translator(ctx)
            decoder = stream_decoder(ctx.provider.kind)
            try:
                async with asyncio.timeout_at(deadline):
                    first, failure = await first_output(chunks, decoder, translator)
            except TimeoutError:
                raise UpstreamTimeout(
                    f"Provider {ctx.provider.id} timed out waiting for the first event",
                    metadata={"provider_name": ctx.provider.id}) from None
        except BaseException:
            await discard(response, chunks)
            raise
        books.first_token()
        return StreamSession(req.endpoint, headers, books, response, chunks, decoder,
                             translator, first, failure,
                             StreamHealth(self.board, ctx.provider.id, started),
                             completed=self._keeper(req))

    def _keeper(self, req: ProxyRequest) -> Callable[[StreamTranslator], None] | None:
        """What keeps a streamed Responses answer once it is whole (before its end goes
        out, so that it is readable as soon as the client has it)."""
        turn = req.turn
        if turn is None or not turn.store:
            return None
        responses, key_name = self.responses, req.key.name

        def keep(translator: StreamTranslator) -> None:
            items = getattr(translator, "output_items", None)
            response = getattr(translator, "response", None)
            if isinstance(items, list) and isinstance(response, dict) and response:
                responses.keep(req.gen_id, key_name, turn.input_items, items, response,
                               new_items=turn.new_items)

        return keep

    # -- token counting ------------------------------------------------------------

    async def count_tokens(self, req: ProxyRequest) -> Answer:
        """POST /messages/count_tokens: passed to the first route whose kind counts tokens
        (Anthropic, Gemini, Vertex AI: free upstream, so it is not a generation); models
        without one get the local estimate. It takes one request from the key's limits
        (and a concurrency slot while it runs)."""
        config = self.config
        model = self.model_for(req.key, req.body.get("model"), config)
        try:
            admission = await self.quota.admit(req.key, model.id, 0)
        except RateLimited as exc:
            self.ledger.metrics.rejected(req.key.name, "rate_limited")
            self.ledger.store.audit("rate_limited", key_name=req.key.name,
                                    trace_id=req.trace_id,
                                    detail={"model": model.id, **(exc.metadata or {})})
            raise
        try:
            return await self._count_tokens(req, model, config)
        finally:
            admission.release()

    async def _count_tokens(self, req: ProxyRequest, model: ModelConfig,
                            config: Config) -> Answer:
        for target in self._targets(req, [model], config):
            counter = token_counter_for(target.provider.kind)
            if counter is None:
                continue
            ctx = CallContext(req.gen_id, model.id, int(time.time()), target.provider,
                              target.route, False, False, config.server.default_max_tokens,
                              req.client_headers)
            call = counter.build(req.body, ctx)
            headers = call.headers if target.provider.kind != VERTEX \
                else await self._google_auth(target.provider, call.headers)
            response = await self.http.send(target.provider, call.path,
                                            _encode_body(call.body), headers)
            try:
                raw = await response.read()
            finally:
                response.close()
            if response.status >= 400:
                raise upstream_failure(target.provider, response.status, raw,
                                       response.headers)
            return Answer(200, counter.answer(raw, ctx),
                          {"X-AnyRouter-Provider": target.provider.id})
        estimate = {"input_tokens": estimate_prompt_tokens(req.body), "estimated": True}
        return Answer(200, orjson.dumps(estimate), {})


def _new_record(req: ProxyRequest, model_id: str, streamed: bool,
                **fields: Any) -> GenerationRecord:
    """The usage row of `req`, from now on `req.record`."""
    req.record = GenerationRecord(id=req.gen_id, created_at=time.time(),
                                  key_name=req.key.name, endpoint=req.endpoint,
                                  model=model_id, trace_id=req.trace_id, streamed=streamed,
                                  **fields)
    return req.record


async def _read_json(response: UpstreamResponse, provider: ProviderConfig) -> Any:
    """A whole upstream answer, parsed; one that is not JSON is the upstream's fault."""
    try:
        raw = await response.read()
    finally:
        response.close()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"Provider {provider.id} sent an invalid response: not JSON",
                            code="upstream_invalid_response",
                            metadata={"provider_name": provider.id}) from None


def _encode_body(body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError as exc:  # orjson reads 1024 levels but writes only 254
        raise InvalidRequest(f"Request body cannot be forwarded: {exc}",
                             code="invalid_json") from None


def _dearest(targets: list[Target]) -> Pricing:
    if len(targets) == 1:
        return targets[0].pricing
    prices = [t.pricing for t in targets]
    return Pricing(prompt=max(p.prompt for p in prices),
                   completion=max(p.completion for p in prices),
                   reasoning=max((p.reasoning or 0.0) for p in prices) or None)


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


class StreamHealth:
    """Reports a stream's outcome to its provider's health once, when the stream ends:
    success with this attempt's own latency, time to first event and throughput."""

    __slots__ = ("_board", "_provider", "_started", "_ttft_ms")

    def __init__(self, board: HealthBoard, provider: str, started: float) -> None:
        self._board, self._provider, self._started = board, provider, started
        self._ttft_ms = _ms_since(started)

    def ended(self, *, failure: ProxyError | None = None, cancelled: bool = False,
              completion_tokens: int = 0) -> None:
        health = self._board.get(self._provider)
        if failure is not None and counts_against_health(failure):
            health.failure(self._board.clock())
        elif failure is not None or cancelled:
            health.release_probe()
        else:
            health.success(self._board.clock(), _ms_since(self._started), self._ttft_ms,
                           completion_tokens)


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
    elif endpoint == EMBEDDINGS:
        if "input" not in body:
            raise InvalidRequest("'input' is required", param="input")
        if stream:
            raise InvalidRequest("Embeddings cannot be streamed", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object", param="stream_options")
    return bool(stream)
