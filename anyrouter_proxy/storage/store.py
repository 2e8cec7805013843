"""The `Store` protocol that the gateway, batches and the server use, whichever database
holds the usage log (sqlite.py, postgres.py), and what both backends share: the tables'
columns and writes (SQL with `?` placeholders, rewritten for PostgreSQL in postgres.py),
the GET /generation shape, and the retention task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from ..types import PROVIDER, GenerationRecord, Interrupted
from .journal import INTERRUPTED

log = logging.getLogger(__name__)

GENERATION_COLUMNS = (
    "id", "created_at", "key_name", "trace_id", "endpoint", "model", "provider",
    "upstream_model", "upstream_id", "streamed", "cancelled", "finish_reason", "status_code",
    "error_code", "tokens_prompt", "tokens_completion", "tokens_cached", "tokens_reasoning",
    "tokens_cache_write", "usage_source", "cost", "latency_ms", "ttft_ms",
    "generation_time_ms", "attempts", "operator_cost",
)
# OR REPLACE: a generation recorded twice (say, marked cancelled at shutdown and then
# finished) must not become a poison row that fails every retry of its batch.
INSERT_GENERATION = (
    f"INSERT OR REPLACE INTO generations ({', '.join(GENERATION_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(GENERATION_COLUMNS))})"
)
INSERT_AUDIT = (
    "INSERT INTO audit (created_at, event, key_name, trace_id, detail) VALUES (?, ?, ?, ?, ?)"
)
SELECT_GENERATION = "SELECT * FROM generations WHERE id = ?"
# Retention: what `prune` deletes besides generations (whose spend is carried over first),
# each statement with the cutoff as its one parameter. A batch goes whole (its row, its
# items' inputs and results) once it finished before the cutoff; an unfinished batch
# stays, whatever its age. The statuses are batch.py's FINISHED.
_FINISHED_BATCHES = (
    "FROM batches WHERE status IN ('completed', 'cancelled') AND completed_at < ?")
PRUNE_STATEMENTS: tuple[str, ...] = (
    "DELETE FROM audit WHERE created_at < ?",
    "DELETE FROM responses WHERE created_at < ?",  # stored responses, by their age
    "DELETE FROM response_items WHERE created_at < ?",  # and their items, the same age
    f"DELETE FROM batch_items WHERE batch_id IN (SELECT id {_FINISHED_BATCHES})",
    f"DELETE {_FINISHED_BATCHES}",
)
LEGACY_PROVIDER_SOURCE = "upstream"  # the provider's usage, as rows stored it before


class StoreError(Exception):
    """The usage database cannot be used; the message is meant for the operator."""


class Store(Protocol):
    """The usage log: writes queue and return at once, reads go to the database."""

    @property
    def dropped(self) -> int: ...
    @property
    def write_errors(self) -> int: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def transactions(self) -> int: ...
    @property
    def queue_depth(self) -> int: ...
    @property
    def dropped_by_kind(self) -> dict[str, int]:
        """Rows dropped since start by kind: billing (usage rows) or audit."""
        ...

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    def record(self, rec: GenerationRecord) -> bool: ...
    def audit(self, event: str, *, key_name: str | None = None, trace_id: str | None = None,
              detail: Mapping[str, Any] | None = None) -> bool: ...
    def enqueue(self, sql: str, params: tuple[Any, ...], *, bounded: bool = True) -> bool:
        """Queue any write (`?` placeholders); `bounded=False` for the few rows that must
        not be dropped when the queue is full (batch bookkeeping)."""
        ...
    def journal(self, rec: GenerationRecord, reserved: float, prompt_estimate: int) -> bool:
        """Journal a request whose books just opened (journal.py)."""
        ...
    async def flush(self) -> None: ...
    async def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Rows (`row["column"]`) of a `?`-placeholder query."""
        ...
    async def get_generation(self, gen_id: str, key_name: str | None, *,
                             wait_s: float = 2.0) -> dict[str, Any] | None: ...
    async def report(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """An aggregate query, on a connection the request path does not use."""
        ...

    async def setting(self, name: str, default: str) -> str: ...

    async def spend_by_key(self) -> dict[str, float]: ...
    async def spend_snapshot(self, at_cut: Callable[[], None] | None = None
                             ) -> dict[str, float]:
        """Spend per key as of one instant: the usage log plus the usage rows not yet
        written; `at_cut` runs at that instant."""
        ...
    async def recover_interrupted(self) -> list[Interrupted]:
        """At start: the requests a gone process had in flight become usage rows."""
        ...
    async def spend_since(self, since: float) -> dict[str, float]:
        """USD per key of the usage rows created at or after `since` (Unix seconds)."""
        ...
    async def prune(self, retention_days: int) -> int: ...
    def start_retention(self, retention_days: int | None, interval_s: float = 3600) -> None: ...


def audit_params(event: str, key_name: str | None, trace_id: str | None,
                 detail: Mapping[str, Any] | None) -> tuple[Any, ...]:
    text = json.dumps(dict(detail or {}), default=str, separators=(",", ":"))
    return (time.time(), event, key_name, trace_id, text)


def generation_params(rec: GenerationRecord) -> tuple[Any, ...]:
    usage = rec.usage
    attempts = orjson.dumps([a.as_dict() for a in rec.attempts]).decode()
    return (
        str(rec.id), float(rec.created_at), str(rec.key_name), rec.trace_id, str(rec.endpoint),
        str(rec.model), rec.provider, rec.upstream_model, rec.upstream_id, int(rec.streamed),
        int(rec.cancelled), rec.finish_reason, int(rec.status_code), rec.error_code,
        int(usage.prompt_tokens), int(usage.completion_tokens), int(usage.cached_tokens),
        int(usage.reasoning_tokens), int(usage.cache_write_tokens), str(usage.source),
        float(rec.cost), float(rec.latency_ms), rec.ttft_ms, rec.generation_time_ms, attempts,
        float(rec.operator_cost),
    )


async def find_generation(store: Store, gen_id: str, key_name: str | None,
                          wait_s: float) -> dict[str, Any] | None:
    """GET /generation: the row of `gen_id` if `key_name` owns it (None: any key, for an
    admin key), in the shape shown."""
    rows = await store.fetch(SELECT_GENERATION, (gen_id,))
    if not rows:
        # A just-finished generation may still sit in the queue: let the writer catch
        # up (bounded), then look once more. An empty queue returns at once.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(store.flush(), wait_s)
        rows = await store.fetch(SELECT_GENERATION, (gen_id,))
    if not rows or (key_name is not None and rows[0]["key_name"] != key_name):
        return None
    return present(rows[0])


def _ms(value: float | None) -> int | None:
    return None if value is None else round(value)


_SAME_NAME = (
    "id", "key_name", "model", "upstream_model", "upstream_id", "tokens_prompt",
    "tokens_completion", "finish_reason", "status_code", "error_code", "endpoint", "trace_id",
    "usage_source",
)


def _status(row: Any) -> str:
    """completed | cancelled | failed | interrupted (the process died with it in flight)."""
    if row["error_code"] == INTERRUPTED:
        return INTERRUPTED
    if row["cancelled"]:
        return "cancelled"
    return "failed" if row["status_code"] >= 400 else "completed"


def present(row: Any) -> dict[str, Any]:
    """A row in OpenRouter's GET /generation shape (plus trace_id, usage_source, attempts,
    status)."""
    created = datetime.fromtimestamp(row["created_at"], UTC)
    out: dict[str, Any] = {name: row[name] for name in _SAME_NAME}
    if out["usage_source"] == LEGACY_PROVIDER_SOURCE:  # a row stored before the rename
        out["usage_source"] = PROVIDER
    out.update(
        status=_status(row),
        provider_name=row["provider"], total_cost=row["cost"], usage=row["cost"],
        operator_cost=row["operator_cost"],
        # One tokenizer count: OpenRouter's normalized and native counts are the same here.
        native_tokens_prompt=row["tokens_prompt"],
        native_tokens_completion=row["tokens_completion"],
        native_tokens_cached=row["tokens_cached"], native_tokens_reasoning=row["tokens_reasoning"],
        latency=_ms(row["latency_ms"]), generation_time=_ms(row["generation_time_ms"]),
        time_to_first_token=_ms(row["ttft_ms"]), streamed=bool(row["streamed"]),
        cancelled=bool(row["cancelled"]), attempts=json.loads(row["attempts"]),
        created_at=created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    )
    return out


class Retention:
    """`storage.retention_days`: prune in the background every interval, until stopped."""

    def __init__(self, prune: Callable[[int], Awaitable[int]],
                 errors: tuple[type[Exception], ...],
                 describe: Callable[[BaseException], str]) -> None:
        self._prune = prune
        self._errors = errors
        self._describe = describe
        self.task: asyncio.Task[None] | None = None

    def start(self, retention_days: int | None, interval_s: float) -> None:
        self.stop()  # a reload with a new value replaces the old task
        if retention_days is not None and retention_days > 0:
            self.task = asyncio.create_task(
                self._retain(retention_days, interval_s), name="usage-retention")

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def close(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _retain(self, retention_days: int, interval_s: float) -> None:
        while True:
            try:
                deleted = await self._prune(retention_days)
                if deleted:
                    log.info("usage log: pruned %d rows older than %d days",
                             deleted, retention_days)
            except self._errors as exc:  # try again next round; serving goes on
                log.warning("usage log prune failed: %s", self._describe(exc))
            await asyncio.sleep(interval_s)


SETTINGS_TABLE = "CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);"


async def read_setting(store: Store, name: str, default: str) -> str:
    """The stored value of setting `name`; `default` is stored first if it has none (the
    first of several replicas to store one wins)."""
    store.enqueue("INSERT INTO settings (name, value) VALUES (?, ?) "
                  "ON CONFLICT (name) DO NOTHING", (name, default), bounded=False)
    await store.flush()
    rows = await store.fetch("SELECT value FROM settings WHERE name = ?", (name,))
    if not rows:
        raise StoreError(f"the usage database did not keep setting {name}")
    return str(rows[0]["value"])
