"""Batches of every age and state, for the retention tests of both storage backends
(tests/unit/storage/test_sqlite.py on SQLite, tests/unit/storage/test_postgres.py on
PostgreSQL): `storage.retention_days` must delete old finished batches whole and keep
everything else."""

from __future__ import annotations

import time

from anyrouter_proxy.storage.batches import BatchRecord, BatchStore
from anyrouter_proxy.storage.sqlite import SqliteStore

DAY_S = 86400
RETENTION_DAYS = 30
ITEM = {"custom_id": "c", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "a secret prompt"}]}}
RESULT = {"id": "batch_req_1", "custom_id": "c", "error": None,
          "response": {"status_code": 200, "body": {"choices": [{"text": "an answer"}]}}}
ITEMS_PER_BATCH = 2
# finished before the cutoff: pruned, row and items
GONE = ("old-completed", "old-cancelled")
# finished after the cutoff, or not finished at all (however old): kept
KEPT = ("old-but-recently-completed", "old-in-progress", "old-cancelling")


def seed_batches(store: SqliteStore) -> None:
    """Every batch created well before the cutoff, each with one item done."""
    now = time.time()
    old = now - (RETENTION_DAYS + 10) * DAY_S
    batches = BatchStore(store)
    for batch_id, status, completed_at in (
        ("old-completed", "completed", old + 60),
        ("old-cancelled", "cancelled", old + 60),
        ("old-but-recently-completed", "completed", now - DAY_S),
        ("old-in-progress", "in_progress", None),
        ("old-cancelling", "cancelling", None),
    ):
        batch = BatchRecord(id=batch_id, key_name="alice", mode="async",
                            total=ITEMS_PER_BATCH, created_at=old)
        batches.create(batch, [ITEM] * ITEMS_PER_BATCH)
        batches.done(batch_id, 0, RESULT)
        batch.status, batch.completed_at = status, completed_at
        if completed_at is None:
            batches.set_status(batch)
        else:
            batches.finish(batch)
