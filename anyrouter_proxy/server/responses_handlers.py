"""GET /responses/{id}, DELETE /responses/{id}, GET /responses/{id}/input_items: the
responses the proxy stored (POST /responses goes through proxy_handlers like every
proxied request). A key sees its own; an admin key sees every key's."""

from __future__ import annotations

from aiohttp import web

from ..config.model import KeyConfig
from ..errors import InvalidRequest, NotFound
from ..providers.responses_output import ENCRYPTED_INCLUDE, client_items
from ..storage.responses import StoredResponse
from .inbound import authenticate
from .info_handlers import json_response
from .state import GATEWAY

DEFAULT_LIMIT, MAX_LIMIT = 20, 100
ORDERS = ("asc", "desc")


async def _stored(request: web.Request, key: KeyConfig) -> StoredResponse:
    response_id = request.match_info["response_id"]
    stored = await request.app[GATEWAY].responses.get(response_id, key)
    if stored is None:
        raise NotFound(f"Response {response_id} not found", code="response_not_found",
                       param="id")
    return stored


def _wants_encrypted(request: web.Request) -> bool:
    """`include=reasoning.encrypted_content` (also written `include[]=`, as the SDKs do)."""
    query = request.query
    return ENCRYPTED_INCLUDE in (*query.getall("include", ()), *query.getall("include[]", ()))


async def get_response(request: web.Request) -> web.Response:
    """The response as its client got it; with `include=reasoning.encrypted_content`, its
    reasoning items carry their encrypted content."""
    key = authenticate(request)
    stored = await _stored(request, key)
    if not _wants_encrypted(request):
        return json_response(stored.response)
    return json_response({**stored.response, "output": stored.output_items})


async def delete_response(request: web.Request) -> web.Response:
    key = authenticate(request)
    stored = await _stored(request, key)
    await request.app[GATEWAY].responses.delete(stored.id)
    return json_response({"id": stored.id, "object": "response", "deleted": True})


async def input_items(request: web.Request) -> web.Response:
    """OpenAI's list shape: `data` in `order` (default desc), at most `limit` (1-100,
    default 20) items after the item `after`."""
    key = authenticate(request)
    stored = await _stored(request, key)
    query = request.query
    order = query.get("order", "desc")
    if order not in ORDERS:
        raise InvalidRequest("'order' must be 'asc' or 'desc'", param="order")
    limit = _limit(query.get("limit"))
    items = client_items(stored.input_items, _wants_encrypted(request))
    items = items if order == "asc" else items[::-1]
    start = 0
    after = query.get("after")
    if after:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise InvalidRequest(f"No input item {after[:100]} in response {stored.id}",
                                 param="after")
        start = ids.index(after) + 1
    page = items[start:start + limit]
    return json_response({"object": "list", "data": page,
                          "first_id": page[0].get("id") if page else None,
                          "last_id": page[-1].get("id") if page else None,
                          "has_more": start + limit < len(items)})


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"'limit' must be an integer from 1 to {MAX_LIMIT}", param="limit")
    return limit
