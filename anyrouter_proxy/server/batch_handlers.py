"""POST /batch, GET /batch/{id}, GET /batch/{id}/results, POST /batch/{id}/cancel."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..batch import check_items, output_lines, parse_json_lines, render
from ..config.model import KeyConfig
from ..errors import InvalidRequest, NotFound
from ..storage.batches import BatchRecord
from .inbound import authenticate, parse_json_object, read_body
from .info_handlers import json_response
from .state import BATCHES, GATEWAY, context

JSON_LINES = frozenset({"application/x-ndjson", "application/jsonl", "application/json-lines"})
BODY_TYPES = frozenset({"application/json", ""}) | JSON_LINES
MODES = ("sync", "async")


async def create_batch(request: web.Request) -> web.Response:
    key = authenticate(request)
    runner = request.app[BATCHES]
    server = request.app[GATEWAY].config.server
    raw = await read_body(request, server.max_body_bytes, BODY_TYPES,
                          timeout_s=server.body_timeout_s)
    items: Any
    if request.content_type in JSON_LINES:
        items, mode = parse_json_lines(raw), request.query.get("mode", "sync")
    else:
        body = parse_json_object(raw)
        items, mode = body.get("requests"), body.get("mode", "sync")
    if mode not in MODES:
        raise InvalidRequest("'mode' must be 'sync' or 'async'", param="mode")
    items = check_items(items, runner.limits)
    trace_id = context(request).trace_id
    if mode == "async":
        batch = runner.start_async(key, items, trace_id)
        return json_response(render(batch), status=202)
    batch = await runner.run_sync(key, items, trace_id)
    return json_response(render(batch))


async def _batch_of(request: web.Request, key: KeyConfig, *, read: bool = True
                    ) -> BatchRecord:
    """The batch, if `key` made it; an admin key may read (not cancel) any key's."""
    batch_id = request.match_info["batch_id"]
    runner = request.app[BATCHES]
    batch = runner.live(batch_id)
    if batch is None:
        loaded = await runner.store.load(batch_id)
        batch = loaded[0] if loaded is not None else None
    mine = batch is not None and (batch.key_name == key.name or (read and key.admin))
    if batch is None or not mine:  # another key's batch does not exist
        raise NotFound(f"Batch {batch_id} not found", code="batch_not_found", param="id")
    return batch


async def get_batch(request: web.Request) -> web.Response:
    key = authenticate(request)
    return json_response(render(await _batch_of(request, key)))


async def batch_results(request: web.Request) -> web.Response:
    key = authenticate(request)
    batch = await _batch_of(request, key)
    if "ndjson" in request.headers.get("Accept", "") or \
            "jsonl" in request.headers.get("Accept", ""):
        return web.Response(body=output_lines(batch), content_type="application/x-ndjson")
    return json_response({"object": "list", "id": batch.id, "status": batch.status,
                          "data": [r for r in batch.results if r is not None]})


async def cancel_batch(request: web.Request) -> web.Response:
    key = authenticate(request)
    batch = await _batch_of(request, key, read=False)
    await request.app[BATCHES].cancel(batch.id)
    return json_response(render(request.app[BATCHES].live(batch.id) or batch))
