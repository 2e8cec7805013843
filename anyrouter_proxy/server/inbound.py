"""Reading what a client sent: key, trace id, body (size-capped, JSON, an object)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from ..config.model import KeyConfig
from ..errors import InvalidRequest, RequestTimeout, RequestTooLarge, UnsupportedMediaType
from .client import client_address
from .state import GATEWAY, context

MAX_TRACE_ID_LENGTH = 128
JSON_TYPES = frozenset({"application/json", ""})


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    api_key = request.headers.get("x-api-key")
    return api_key.strip() if api_key else None


def trace_id_of(request: web.Request) -> str | None:
    value = request.headers.get("X-AnyRouter-Trace-Id")
    if value is None:
        return None
    if not value or len(value) > MAX_TRACE_ID_LENGTH or not value.isprintable() \
            or not value.isascii():
        raise InvalidRequest(
            f"X-AnyRouter-Trace-Id must be 1-{MAX_TRACE_ID_LENGTH} printable ASCII characters",
            param="X-AnyRouter-Trace-Id")
    context(request).trace_id = value
    return value


def authenticate(request: web.Request) -> KeyConfig:
    trace_id = trace_id_of(request)
    gateway = request.app[GATEWAY]
    trusted = gateway.config.server.trusted_proxies
    # The address only matters to the audit row of a refused key: worked out only then.
    key = gateway.authenticate(bearer_token(request), trace_id,
                               lambda: client_address(request, trusted))
    context(request).key = key
    return key


async def read_body(request: web.Request, limit: int,
                    types: frozenset[str] = JSON_TYPES, timeout_s: float = 30.0) -> bytes:
    """The raw body, refused early when it is too large or of the wrong type, and cut
    off when it does not arrive within `timeout_s` (a slow-drip client)."""
    if request.content_type not in types and not (
            request.content_type == "application/octet-stream"
            and "Content-Type" not in request.headers):
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, not {request.content_type}")
    length = request.content_length
    if length is not None and length > limit:
        raise RequestTooLarge(f"Request body of {length} bytes exceeds the limit of {limit}")
    content = request.content
    try:
        if content.is_eof() and length is not None and "Content-Encoding" not in request.headers:
            # The whole body is already buffered (the usual small request): no timer needed.
            return await content.read()
        chunks: list[bytes] = []
        size = 0
        async with asyncio.timeout(timeout_s):
            async for chunk in content.iter_any():
                size += len(chunk)  # counted after decompression: bombs stop here too
                if size > limit:
                    raise RequestTooLarge(f"Request body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"Request body not received within {timeout_s:g} s") from None
    except (RequestPayloadError, HttpProcessingError) as exc:
        raise InvalidRequest(f"Request body cannot be decoded: {type(exc).__name__}",
                             code="invalid_request") from None
    return b"".join(chunks)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidRequest("Request body is empty; send a JSON object", code="invalid_json")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}", code="invalid_json") \
            from None
    if not isinstance(data, dict):
        raise InvalidRequest("Request body must be a JSON object", code="invalid_json")
    return data


async def read_json(request: web.Request) -> dict[str, Any]:
    server = request.app[GATEWAY].config.server
    return parse_json_object(await read_body(request, server.max_body_bytes,
                                             timeout_s=server.body_timeout_s))
