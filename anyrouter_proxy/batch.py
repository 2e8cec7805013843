"""POST /batch (docs/api.md, "Batch"): OpenAI batch-input items run as ordinary proxied requests.

Each item passes the key's allow-list, limits and credits and gets its own generation id
and usage row; a failing item fails alone. Each item looks its key up again by name in the
current config right before it runs, so a reload that disables, removes or lowers the
credits of the key stops the items not yet started. Sync batches answer when every item is done;
async ones answer 202 at once, keep their results in SQLite, and are resumed after a
restart (items that were running when the process stopped are marked `interrupted`,
since they may have reached the upstream; items not yet started run).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .config.model import KeyConfig
from .errors import InternalError, InvalidRequest, ProxyError, RequestTooLarge
from .gateway import Answer, Gateway, ProxyRequest
from .ids import new_batch_id, new_batch_request_id
from .storage.batches import DONE, PENDING, RUNNING, BatchRecord, BatchStore, custom_id
from .types import CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES, RESPONSES

log = logging.getLogger(__name__)

ENDPOINTS = {"/chat/completions": CHAT, "/completions": COMPLETIONS,
             "/embeddings": EMBEDDINGS, "/messages": MESSAGES, "/responses": RESPONSES}
PREFIXES = ("/api/v1", "/v1")
FINISHED = ("completed", "cancelled")
INVALID_LINE = "__invalid_json_line__"  # stands for a JSON-lines line that did not parse


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_items: int = 1000
    max_concurrency: int = 8


class ItemError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def endpoint_of(url: Any) -> str | None:
    if not isinstance(url, str):
        return None
    path = url.split("?", 1)[0].rstrip("/")
    for prefix in PREFIXES:
        if path.startswith(prefix + "/"):
            path = path[len(prefix):]
            break
    return ENDPOINTS.get(path)


def parse_json_lines(raw: bytes) -> list[Any]:
    """One item per non-blank line; a line that is not JSON becomes an item that fails
    alone rather than failing the batch."""
    items: list[Any] = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            items.append({INVALID_LINE: f"line {number} is not valid JSON: {exc}"})
    return items


def check_items(items: Any, limits: BatchLimits) -> list[Any]:
    if not isinstance(items, list) or not items:
        raise InvalidRequest("'requests' must be a non-empty array of batch items",
                             param="requests")
    if len(items) > limits.max_items:
        raise RequestTooLarge(f"A batch holds at most {limits.max_items} items "
                              f"(batch.max_items); this one has {len(items)}",
                              param="requests", metadata={"max_items": limits.max_items})
    for index, item in enumerate(items):
        try:
            orjson.dumps(item)
        except orjson.JSONEncodeError as exc:  # too deep to store: it fails alone
            items[index] = {INVALID_LINE: f"item {index} cannot be stored: {exc}",
                            "custom_id": custom_id(item)}
    seen: set[str] = set()
    for item in items:
        given = custom_id(item)
        if given is not None:
            if given in seen:
                raise InvalidRequest(f"custom_id {given!r} appears more than once; "
                                     "custom_id must be unique within a batch",
                                     param="custom_id")
            seen.add(given)
    return items


def prepare(item: Any) -> tuple[str, dict[str, Any]]:
    """An item's endpoint and body, or the ItemError that keeps it from running."""
    if isinstance(item, dict) and INVALID_LINE in item:
        raise ItemError("invalid_json", str(item[INVALID_LINE]))
    if not isinstance(item, dict):
        raise ItemError("invalid_request", "a batch item must be a JSON object")
    if not isinstance(item.get("custom_id"), str) or not item["custom_id"]:
        raise ItemError("invalid_request", "custom_id is required and must be a string")
    if str(item.get("method", "POST")).upper() != "POST":
        raise ItemError("invalid_request", "method must be POST")
    endpoint = endpoint_of(item.get("url"))
    if endpoint is None:
        raise ItemError("invalid_url", f"url {str(item.get('url'))[:100]!r} is not one of "
                        f"{', '.join(ENDPOINTS)} (with or without /v1 or /api/v1)")
    body = item.get("body")
    if not isinstance(body, dict):
        raise ItemError("invalid_request", "body must be a JSON object")
    if body.get("stream"):
        raise ItemError("streaming_not_supported", "streaming is not supported inside a batch")
    return endpoint, body


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def counts(batch: BatchRecord) -> dict[str, int]:
    done = [r for r in batch.results if r is not None]
    failed = sum(1 for r in done if r["error"] is not None
                 or r["response"]["status_code"] >= 400)
    return {"total": batch.total, "completed": len(done) - failed, "failed": failed}


def render(batch: BatchRecord) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": batch.id, "object": "batch", "status": batch.status, "mode": batch.mode,
        "created_at": _iso(batch.created_at), "completed_at": _iso(batch.completed_at),
        "request_counts": counts(batch),
    }
    if batch.status in FINISHED:
        body["results"] = [r for r in batch.results if r is not None]
    return body


def output_lines(batch: BatchRecord) -> bytes:
    """OpenAI's batch output format, one JSON object a line."""
    return b"".join(orjson.dumps(r) + b"\n" for r in batch.results if r is not None)


class BatchRunner:
    def __init__(self, gateway: Gateway, store: BatchStore) -> None:
        self.gateway = gateway
        self.store = store
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._live: dict[str, BatchRecord] = {}
        self._cancelled: set[str] = set()
        self._closing = False
        self._closing_since = 0.0

    @property
    def limits(self) -> BatchLimits:
        config = self.gateway.config.batch
        return BatchLimits(config.max_items, config.max_concurrency)

    def _new(self, key: KeyConfig, items: list[Any], mode: str,
             trace_id: str | None) -> BatchRecord:
        batch = BatchRecord(id=new_batch_id(), key_name=key.name, mode=mode, total=len(items),
                            trace_id=trace_id, results=[None] * len(items))
        self.store.create(batch, items)
        return batch

    async def run_sync(self, key: KeyConfig, items: list[Any],
                       trace_id: str | None) -> BatchRecord:
        batch = self._new(key, items, "sync", trace_id)
        self._live[batch.id] = batch
        try:
            await self._run(batch, key, list(enumerate(items)))
        except asyncio.CancelledError:
            # The client left: items not done end here, and the batch is not resumed
            # later (nobody holds its id).
            self._abandon(batch, items)
            raise
        finally:
            self._live.pop(batch.id, None)
        return batch

    def _abandon(self, batch: BatchRecord, items: list[Any]) -> None:
        for index, result in enumerate(batch.results):
            if result is None:
                self._done(batch, index, _error_result(
                    items[index], "batch_cancelled", "the client disconnected"))
        batch.status, batch.completed_at = "cancelled", time.time()
        self.store.finish(batch)

    def start_async(self, key: KeyConfig, items: list[Any],
                    trace_id: str | None) -> BatchRecord:
        batch = self._new(key, items, "async", trace_id)
        self._spawn(batch, key, list(enumerate(items)))
        return batch

    def _spawn(self, batch: BatchRecord, key: KeyConfig,
               todo: list[tuple[int, Any]]) -> None:
        self._live[batch.id] = batch
        task = asyncio.create_task(self._run(batch, key, todo), name=f"batch {batch.id}")
        self._tasks[batch.id] = task

        def forget(_: asyncio.Task[None]) -> None:
            self._tasks.pop(batch.id, None)
            self._live.pop(batch.id, None)

        task.add_done_callback(forget)

    async def _run(self, batch: BatchRecord, key: KeyConfig,
                   todo: list[tuple[int, Any]]) -> None:
        gate = asyncio.Semaphore(self.limits.max_concurrency)

        async def one(index: int, item: Any) -> None:
            async with gate:
                if batch.id in self._cancelled:
                    self._done(batch, index, _error_result(item, "batch_cancelled",
                                                           "the batch was cancelled"))
                    return
                if self._closing:
                    return  # left pending: resumed after the restart
                self.store.started(batch.id, index)
                self._done(batch, index, await self._run_item(batch, key, item))

        await asyncio.gather(*(one(index, item) for index, item in todo))
        if self._closing:
            return
        batch.status = "cancelled" if batch.id in self._cancelled else "completed"
        batch.completed_at = time.time()
        self._cancelled.discard(batch.id)
        self.store.finish(batch)

    def _done(self, batch: BatchRecord, index: int, result: dict[str, Any]) -> None:
        batch.results[index] = result
        self.store.done(batch.id, index, result)

    async def _run_item(self, batch: BatchRecord, key: KeyConfig,
                        item: Any) -> dict[str, Any]:
        try:
            endpoint, body = prepare(item)
        except ItemError as exc:
            return _error_result(item, exc.code, exc.message)
        request = ProxyRequest(endpoint, body, key, batch.trace_id)
        try:
            # The key as it is now: disabled, expired, removed or with lower credits since
            # the batch began (or before a restart resumed it), the item is refused.
            request.key = self.gateway.current_key(key.name, batch.trace_id)
            answer = await self.gateway.proxy(request)
        except ProxyError as exc:
            return _failed(item, endpoint, request.gen_id, exc)
        except Exception:  # a bug must fail its item only, never the batch
            log.exception("batch %s: item %s failed", batch.id, request.gen_id)
            return _failed(item, endpoint, request.gen_id,
                           InternalError(f"Internal error (request id {request.gen_id})"))
        assert isinstance(answer, Answer)  # streaming was refused by prepare()
        return _result(item, answer.status, request.gen_id, orjson.loads(answer.body))

    async def cancel(self, batch_id: str) -> None:
        if batch_id in self._tasks:
            self._cancelled.add(batch_id)
            live = self._live.get(batch_id)
            if live is not None:
                live.status = "cancelling"
                self.store.set_status(live)  # a restart must not resume a cancelled batch

    def live(self, batch_id: str) -> BatchRecord | None:
        return self._live.get(batch_id)

    async def resume(self, keys: Mapping[str, KeyConfig]) -> None:
        """At start-up: finish what an earlier process left unfinished."""
        for batch_id in await self.store.unfinished():
            loaded = await self.store.load(batch_id)
            if loaded is None:
                continue
            batch, items = loaded
            todo: list[tuple[int, Any]] = []
            # A sync batch's client is gone with the old process: nothing to resume for.
            key = keys.get(batch.key_name) if batch.mode == "async" else None
            for index, (item, state) in enumerate(items):
                if state == RUNNING or (state == PENDING and key is None):
                    why = ("the process stopped while this item ran; it may have reached "
                           "the upstream, so it is not run twice") if state == RUNNING \
                        else "the batch's key no longer exists, or its client is gone"
                    self._done(batch, index, _error_result(item, "interrupted", why))
                elif state != DONE:
                    todo.append((index, item))
            log.info("batch %s: resuming %d of %d items", batch.id, len(todo), batch.total)
            if key is None or not todo:
                batch.status = "cancelled" if batch.status == "cancelling" else "completed"
                batch.completed_at = time.time()
                self.store.finish(batch)
                continue
            if batch.status == "cancelling":
                self._cancelled.add(batch.id)
            self._spawn(batch, key, todo)

    def stop_starting(self) -> None:
        """Shutdown began: start no more items (pending ones resume after the restart)."""
        if not self._closing:
            self._closing = True
            self._closing_since = time.monotonic()

    async def close(self, grace_s: float) -> None:
        """Let running items finish within what is left of the grace period."""
        self.stop_starting()
        left = max(0.0, grace_s - (time.monotonic() - self._closing_since))
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=left)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(BaseException):
                    await task


def _result(item: Any, status: int, gen_id: str, body: Any) -> dict[str, Any]:
    return {"id": new_batch_request_id(), "custom_id": custom_id(item),
            "response": {"status_code": status, "request_id": gen_id, "body": body},
            "error": None}


def _failed(item: Any, endpoint: str, gen_id: str, exc: ProxyError) -> dict[str, Any]:
    return _result(item, exc.status, gen_id, exc.envelope(anthropic=endpoint == MESSAGES))


def _error_result(item: Any, code: str, message: str) -> dict[str, Any]:
    return {"id": new_batch_request_id(), "custom_id": custom_id(item),
            "response": None, "error": {"code": code, "message": message}}


