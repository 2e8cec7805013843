"""aiohttp's own protocol-level errors (a malformed request line, headers too large,
invalid characters) answered in the SPEC §5 envelope instead of plain text."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ..errors import error_for_status

log = logging.getLogger(__name__)


class EnvelopeRequestHandler(RequestHandler):
    def close_after_response(self) -> None:
        """Close once the answer is out, without aiohttp's 'lingering' read of the rest of
        a body we refused (up to 10 s for a slow-drip client)."""
        self._lingering_time = 0.0  # then aiohttp closes the uncompleted request at once

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        response = super().handle_error(request, status, exc, message)  # logs; may raise
        reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        detail = "Internal error" if status >= 500 else f"Malformed HTTP request: {reason}"
        body = orjson.dumps(error_for_status(status, detail).envelope())
        envelope = web.Response(status=status, body=body, content_type="application/json")
        envelope.force_close()
        return envelope if response is not None else response


class EnvelopeServer(web.Server):
    def __call__(self) -> RequestHandler:
        return EnvelopeRequestHandler(self, loop=self._loop, **self._kwargs)


def answer_protocol_errors_as_envelopes(server: web.Server) -> None:
    """aiohttp has no hook for this: its Server builds RequestHandlers itself, so the
    runner's server is given the subclass that builds ours."""
    server.__class__ = EnvelopeServer
