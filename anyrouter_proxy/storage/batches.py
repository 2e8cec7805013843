"""Batches in the usage database (tables `batches` and `batch_items`, migration 2 of
either backend), written through the store's single writer so async batches survive a
restart."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from .store import Store

PENDING, RUNNING, DONE = "pending", "running", "done"


@dataclass(slots=True)
class BatchRecord:
    id: str
    key_name: str
    mode: str
    total: int
    status: str = "in_progress"
    created_at: float = field(default_factory=time.time)
    completed_at: float | None = None
    trace_id: str | None = None
    results: list[dict[str, Any] | None] = field(default_factory=list)  # by input index



def custom_id(item: Any) -> str | None:
    """A batch item's custom_id, when it has a string one."""
    value = item.get("custom_id") if isinstance(item, dict) else None
    return value if isinstance(value, str) else None

class BatchStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, batch: BatchRecord, items: list[Any]) -> None:
        self.store.enqueue(
            "INSERT INTO batches (id, key_name, created_at, completed_at, status, mode, total, "
            "trace_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (batch.id, batch.key_name, batch.created_at, None, batch.status, batch.mode,
             batch.total, batch.trace_id), bounded=False)
        for index, item in enumerate(items):
            self.store.enqueue(
                "INSERT INTO batch_items (batch_id, idx, custom_id, item, state, result) "
                "VALUES (?, ?, ?, ?, ?, NULL)",
                (batch.id, index, custom_id(item), orjson.dumps(item).decode(), PENDING),
                bounded=False)

    def started(self, batch_id: str, index: int) -> None:
        self.store.enqueue("UPDATE batch_items SET state = ? WHERE batch_id = ? AND idx = ?",
                           (RUNNING, batch_id, index), bounded=False)

    def done(self, batch_id: str, index: int, result: dict[str, Any]) -> None:
        self.store.enqueue(
            "UPDATE batch_items SET state = ?, result = ? WHERE batch_id = ? AND idx = ?",
            (DONE, orjson.dumps(result).decode(), batch_id, index), bounded=False)

    def set_status(self, batch: BatchRecord) -> None:
        self.store.enqueue("UPDATE batches SET status = ? WHERE id = ?",
                           (batch.status, batch.id), bounded=False)

    def finish(self, batch: BatchRecord) -> None:
        self.store.enqueue("UPDATE batches SET status = ?, completed_at = ? WHERE id = ?",
                           (batch.status, batch.completed_at, batch.id), bounded=False)

    async def load(self, batch_id: str) -> tuple[BatchRecord, list[Any]] | None:
        """A batch with its results (None where not done yet) and its input items."""
        await self.store.flush()
        rows = await self.store.fetch("SELECT * FROM batches WHERE id = ?", (batch_id,))
        if not rows:
            return None
        row = rows[0]
        batch = BatchRecord(id=row["id"], key_name=row["key_name"], mode=row["mode"],
                            total=row["total"], status=row["status"],
                            created_at=row["created_at"], completed_at=row["completed_at"],
                            trace_id=row["trace_id"])
        items: list[Any] = []
        states: list[str] = []
        for item in await self.store.fetch(
                "SELECT idx, item, state, result FROM batch_items WHERE batch_id = ? "
                "ORDER BY idx", (batch_id,)):
            items.append(orjson.loads(item["item"]))
            states.append(item["state"])
            batch.results.append(orjson.loads(item["result"]) if item["result"] else None)
        batch.results.extend([None] * (batch.total - len(batch.results)))
        return batch, [(item, state) for item, state in zip(items, states, strict=True)]

    async def unfinished(self) -> list[str]:
        rows = await self.store.fetch(
            "SELECT id FROM batches WHERE status IN ('in_progress', 'cancelling') "
            "ORDER BY created_at")
        return [row["id"] for row in rows]
