"""POST chat/completions, completions, embeddings, messages: into the gateway and back."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from ..config.wildcards import resolve_model
from ..deprecation import deprecation_headers
from ..errors import ProxyError, internal_failure
from ..gateway import Answer, ProxyRequest
from ..providers.anthropic import FORWARDED_CLIENT_HEADERS
from ..sse import KEEPALIVE
from ..stream_session import Sink, StreamSession, stream_error_event
from ..types import MESSAGES
from .inbound import authenticate, read_json
from .middlewares import decorate
from .state import GATEWAY, METRICS, context
from .stream_sink import SSEResponse, open_stream

log = logging.getLogger(__name__)

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: relay each event as it comes
}



def _forwardable(request: web.Request) -> dict[str, str]:
    headers = request.headers
    return {name: headers[name] for name in FORWARDED_CLIENT_HEADERS if name in headers}


def proxy_handler(endpoint: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        key = authenticate(request)
        gateway = request.app[GATEWAY]
        server = gateway.config.server
        body = await read_json(request)
        forced = request.headers.get("X-AnyRouter-Provider") or None
        ctx = context(request)
        req = ProxyRequest(endpoint, body, key, ctx.trace_id, forced,
                           client_headers=_forwardable(request))
        ctx.proxied = req
        series = request.app[METRICS].series
        series.in_flight += 1
        try:
            if body.get("stream") is True and server.sse_keepalive:
                return await _stream_with_keepalive(request, req,
                                                    server.sse_keepalive_interval_s)
            result = await gateway.proxy(req)
            if isinstance(result, Answer):
                return web.Response(status=result.status, body=result.body,
                                    headers=result.headers, content_type="application/json")
            return await _relay(request, result)
        finally:
            series.in_flight -= 1

    return handle


async def _relay(request: web.Request, session: StreamSession,
                 sink: Sink | None = None, response: SSEResponse | None = None,
                 ) -> web.StreamResponse:
    if sink is None or response is None:
        response = SSEResponse(headers={**SSE_HEADERS, **session.headers})
        try:  # decorate may await (Redis rate headers): a client may leave meanwhile
            await decorate(request, response)
            sink = await open_stream(request, response)
        except BaseException:
            await session.abandon()
            raise
    series = request.app[METRICS].series
    series.streams += 1
    try:
        with contextlib.suppress(ConnectionError):
            await session.relay(sink)
    finally:
        series.streams -= 1
    return response


class _Keepalive:
    """SSE comments while a stream's first event is late. Started by a timer only when
    `interval` passes, so a prompt stream costs no extra task (it used to cost ~1 ms)."""

    def __init__(self, request: web.Request, req: ProxyRequest, interval: float) -> None:
        self._request, self._req, self._interval = request, req, interval
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self.response: SSEResponse | None = None
        self.sink: Sink | None = None

    def start(self) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.ensure_future(self._run(self._stop))

    async def _run(self, stop: asyncio.Event) -> None:
        request, req = self._request, self._req
        gateway = request.app[GATEWAY]
        model = resolve_model(gateway.config, gateway.known_model(req.body))
        response = SSEResponse(headers={
            **SSE_HEADERS, "X-AnyRouter-Generation-Id": req.gen_id,
            **gateway.endpoint_headers(req.endpoint),
            **(deprecation_headers(model) if model is not None else {})})
        await decorate(request, response)
        sink = await open_stream(request, response)
        self.response, self.sink = response, sink  # committed to 200: failures are events
        while True:
            await sink.write(KEEPALIVE)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
                return

    async def stop(self) -> Sink | None:
        """Stop before the first event goes out; the stream's sink, if one was begun."""
        if self._task is None:
            return None
        assert self._stop is not None
        self._stop.set()
        await self._task  # never cut a comment or the headers in half
        return self.sink


async def _stream_with_keepalive(request: web.Request, req: ProxyRequest,
                                 interval: float) -> web.StreamResponse:
    """Open the stream; if the upstream is slow to start, commit to 200 and send SSE
    comments until it does (never after the first event)."""
    keepalive = _Keepalive(request, req, interval)
    timer = asyncio.get_running_loop().call_later(interval, keepalive.start)
    try:
        result = await request.app[GATEWAY].proxy(req)
    except Exception as exc:
        timer.cancel()
        sink = await keepalive.stop()
        if sink is None or keepalive.response is None:
            raise  # nothing sent yet: the middleware answers
        # Committed to 200 by the comments: the failure is the stream's last event (a bug
        # of ours too, rather than a second status line in the middle of the body).
        failure = exc if isinstance(exc, ProxyError) else internal_failure(log, "stream")
        with contextlib.suppress(ConnectionError):
            await sink.end(stream_error_event(
                req.endpoint, failure, gen_id=req.gen_id,
                model=request.app[GATEWAY].known_model(req.body)))
        return keepalive.response
    except BaseException:
        timer.cancel()
        with contextlib.suppress(Exception):
            await keepalive.stop()
        raise
    timer.cancel()
    assert isinstance(result, StreamSession)
    try:
        sink = await keepalive.stop()
    except ConnectionError:  # the client left during a keep-alive comment
        await result.abandon()
        return keepalive.response or web.StreamResponse(status=499)
    except BaseException:
        await result.abandon()  # opened, but the client left before the relay
        raise
    return await _relay(request, result, sink, keepalive.response)


async def count_tokens(request: web.Request) -> web.Response:
    key = authenticate(request)
    gateway = request.app[GATEWAY]
    body = await read_json(request)
    req = ProxyRequest(MESSAGES, body, key, context(request).trace_id,
                       request.headers.get("X-AnyRouter-Provider") or None,
                       client_headers=_forwardable(request))
    answer = await gateway.count_tokens(req)
    return web.Response(status=answer.status, body=answer.body, headers=answer.headers,
                        content_type="application/json")
