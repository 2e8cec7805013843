"""Errors become HTTP in one place: every failure is the error envelope of docs/api.md, as JSON."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import (
    MethodNotAllowed,
    NotFound,
    ProxyError,
    RequestTooLarge,
    error_for_status,
    internal_failure,
)
from ..logs import AccessLog
from .client import client_address, cors_headers, preflight
from .protocol import EnvelopeRequestHandler
from .state import ACCESS_LOG, CONTEXT, GATEWAY, RequestContext, context

log = logging.getLogger(__name__)


def is_anthropic_path(path: str) -> bool:
    return path.endswith("/messages") or "/messages/" in path


def error_response(request: web.Request, exc: ProxyError) -> web.Response:
    envelope = exc.envelope(anthropic=is_anthropic_path(request.path))
    response = web.Response(status=exc.status, body=orjson.dumps(envelope),
                            content_type="application/json", headers=exc.headers)
    if exc.status in (408, 413):  # the rest of that body is not worth reading
        response.force_close()
        if exc.status == 408 and isinstance(request.protocol, EnvelopeRequestHandler):
            # A slow drip is not waited for; a large upload is drained (briefly, without
            # keeping it) so that the client reads the 413 rather than a reset.
            request.protocol.close_after_response()
    return response


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> ProxyError:
    if isinstance(exc, web.HTTPNotFound):
        return NotFound(f"No route for {request.method} {request.path}", code="route_not_found")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return MethodNotAllowed(f"Method {request.method} is not allowed on {request.path} "
                                f"(allowed: {allowed})", headers={"Allow": allowed})
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return RequestTooLarge("Request body is too large")
    return error_for_status(exc.status, exc.reason or "Request failed")


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    access = request.app[ACCESS_LOG]
    request[CONTEXT] = RequestContext()
    try:
        response = await _handle(request, handler)
    except BaseException as exc:  # cancelled: the client went away
        if access.enabled():
            access.write(request_fields(request, 499, started, type(exc).__name__))
        raise
    if access.enabled():  # once the answer is out: the line is not on the client's clock
        asyncio.get_running_loop().call_soon(_log_request, access, request, response,
                                             started)
    return response


def _log_request(access: AccessLog, request: web.Request, response: web.StreamResponse,
                 started: float) -> None:
    access.write(request_fields(request, response.status, started))


def request_fields(request: web.Request, status: int, started: float,
                   outcome: str | None = None) -> dict[str, object]:
    ctx = context(request)
    key = ctx.key
    fields: dict[str, object] = {
        "event": "request", "method": request.method, "path": request.path[:200],
        "status": status, "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        "trace_id": ctx.trace_id, "key": key.name if key else None,
        "client": client_address(request, request.app[GATEWAY].config.server.trusted_proxies),
    }
    proxied = ctx.proxied
    record = proxied.record if proxied is not None else None
    if proxied is not None and record is None:  # refused before it had a usage row
        fields.update(request_id=proxied.gen_id,
                      model=request.app[GATEWAY].known_model(proxied.body))
    if record is not None:
        usage = record.usage
        fields.update(request_id=record.id, model=record.model, provider=record.provider,
                      streamed=record.streamed, cancelled=record.cancelled,
                      error_code=record.error_code, tokens_prompt=usage.prompt_tokens,
                      tokens_completion=usage.completion_tokens, cost=record.cost)
    if outcome:
        fields["outcome"] = outcome
    return fields


async def _handle(request: web.Request, handler: Handler) -> web.StreamResponse:
    server = request.app[GATEWAY].config.server
    if server.cors.allow_origins and (answer := preflight(request, server.cors)) is not None:
        return answer
    try:
        response = await handler(request)
    except ProxyError as exc:
        response = error_response(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(request, _from_http_exception(request, exc))
    except Exception:
        response = error_response(request, internal_failure(
            log, f"{request.method} {request.path[:200]}"))
    if not response.prepared:
        await decorate(request, response)
    return response


def cors_of(request: web.Request) -> dict[str, str]:
    cors = request.app[GATEWAY].config.server.cors
    return cors_headers(request.headers.get("Origin"), cors) if cors.allow_origins else {}


async def decorate(request: web.Request, response: web.StreamResponse) -> None:
    """Headers every answer to an authenticated client carries (docs/api.md)."""
    ctx = context(request)
    if ctx.key is not None:
        for name, value in (await request.app[GATEWAY].quota.rate_headers(ctx.key)).items():
            response.headers.setdefault(name, value)
    if ctx.trace_id:
        response.headers["X-AnyRouter-Trace-Id"] = ctx.trace_id
    proxied = ctx.proxied
    if proxied is not None:  # failures too: every proxied request has its generation id
        response.headers.setdefault("X-AnyRouter-Generation-Id", proxied.gen_id)
    response.headers.update(cors_of(request))
