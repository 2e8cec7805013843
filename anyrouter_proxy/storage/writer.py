"""The usage log's write path, shared by both backends: a bounded in-memory queue and one
background task that drains it in batches, each batch in one transaction.

The request path only ever calls `enqueue()`, which appends a tuple and returns at once.
The writer hands each batch to its `Database` (SQLite or PostgreSQL); a failure of the
disk or server keeps the rows and retries with backoff, a batch the database rejects for
its rows' sake is written row by row and only the bad rows are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

log = logging.getLogger(__name__)

RETRY_MIN_S = 0.5
RETRY_MAX_S = 5.0
LOG_INTERVAL_S = 10.0  # at most one "queue full" / "write failed" warning per interval


class Item(NamedTuple):
    seq: int
    sql: str
    params: tuple[Any, ...]


class Database(Protocol):
    """A backend's half of the writer: one transaction per batch."""

    # Errors that no retry can cure: the rows themselves are bad. Anything else (locked,
    # disk full, read-only, server down) is the database's fault and is retried.
    bad_row_errors: tuple[type[Exception], ...]

    async def write_batch(self, items: Sequence[Item]) -> None: ...

    def describe_error(self, exc: BaseException) -> str:
        """The error as shown in logs and on /health (secrets masked)."""
        ...


class QueuedWriter:
    def __init__(self, database: Database, *, queue_max: int, flush_interval_s: float,
                 batch_max: int, close_timeout_s: float) -> None:
        self.database = database
        self.queue_max = queue_max
        self.flush_interval_s = flush_interval_s
        self.batch_max = batch_max
        self.close_timeout_s = close_timeout_s
        self.dropped = 0
        self.write_errors = 0
        self.last_error: str | None = None
        self.transactions = 0
        self._pending: deque[Item] = deque()
        self._inflight: list[Item] = []  # the batch being written, kept until it commits
        self._seq = 0  # last sequence number handed out
        self._done_seq = 0  # every item up to this one has been committed (or rejected)
        self._wake = asyncio.Event()  # rows arrived
        self._urgent = asyncio.Event()  # someone waits (flush, close): do not linger
        self._committed = asyncio.Event()  # replaced after each commit; waiters re-check
        self._closing = False
        self._closed = False
        self._last_warning = {"drop": -LOG_INTERVAL_S, "write": -LOG_INTERVAL_S}
        self._task: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        return len(self._pending) + len(self._inflight)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-writer")

    async def close(self) -> None:
        """Write what is queued (for up to close_timeout_s) and refuse rows from now on."""
        if self._task is not None:
            self._closing = True
            self._wake.set()
            self._urgent.set()
            # The writer exits once the queue is empty; a dead disk must not hang shutdown.
            await asyncio.wait({self._task}, timeout=self.close_timeout_s)
            if not self._task.done():
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            if self.queue_depth:
                log.error("usage log closed with %d rows unwritten (last error: %s)",
                          self.queue_depth, self.last_error)
        self._closed = True

    # -- request path: never awaits ------------------------------------------------------

    def enqueue(self, sql: str, params: tuple[Any, ...], *, bounded: bool = True) -> bool:
        full = bounded and self.queue_depth >= self.queue_max
        if self._closed or self._closing or full:
            self.drop()
            return False
        self._seq += 1
        self._pending.append(Item(self._seq, sql, params))
        self._wake.set()
        if len(self._pending) >= self.batch_max:
            self._urgent.set()
        return True

    def drop(self) -> None:
        self.dropped += 1
        if self._may_warn("drop"):
            log.warning("usage log queue full or closed (%d rows waiting, last write "
                        "error: %s); %d rows dropped so far",
                        self.queue_depth, self.last_error, self.dropped)

    def _may_warn(self, kind: str) -> bool:
        now = time.monotonic()
        if now - self._last_warning[kind] < LOG_INTERVAL_S:
            return False
        self._last_warning[kind] = now
        return True

    # -- the writer ------------------------------------------------------------------------

    async def flush(self) -> None:
        target = self._seq
        while self._done_seq < target and self._task is not None and not self._task.done():
            self._urgent.set()
            await self._committed.wait()

    async def _run(self) -> None:
        delay = 0.0
        try:
            while True:
                if not self._inflight:
                    if not self._pending:
                        if self._closing:
                            return
                        self._wake.clear()
                        await self._wake.wait()
                        continue
                    await self._linger()
                    count = min(len(self._pending), self.batch_max)
                    self._inflight = [self._pending.popleft() for _ in range(count)]
                try:
                    await self._write_inflight()
                    delay = 0.0
                except Exception as exc:  # the disk's fault: keep the rows, back off, retry
                    self._note_error(exc)
                    delay = min(max(delay * 2, RETRY_MIN_S), RETRY_MAX_S)
                    await asyncio.sleep(delay)
        finally:
            self._committed.set()  # wake flush() waiters, who see the writer is gone

    async def _linger(self) -> None:
        # Waiting up to flush_interval_s lets a busy gateway fill whole batches; flush(),
        # close() and a full batch cut the wait short.
        if len(self._pending) < self.batch_max and not self._urgent.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._urgent.wait(), self.flush_interval_s)
        self._urgent.clear()

    async def _write_inflight(self) -> None:
        bad_rows = self.database.bad_row_errors
        try:
            await self._write(self._inflight)
        except bad_rows as exc:
            # One bad row must not block the log forever: write the rows one by one and
            # drop only those that fail. A disk error here propagates and is retried.
            self._note_error(exc)
            while self._inflight:
                item = self._inflight[0]
                try:
                    await self._write([item])
                except bad_rows as row_exc:
                    self.dropped += 1
                    log.error("usage row dropped, it cannot be stored: %s", row_exc)
                self._inflight.pop(0)
                self._mark_done(item.seq)
            return
        if self.write_errors and self.last_error is not None:
            log.info("usage log writes recovered (%d failures so far)", self.write_errors)
            self.last_error = None
        self._mark_done(self._inflight[-1].seq)
        self._inflight = []

    async def _write(self, items: Sequence[Item]) -> None:
        await self.database.write_batch(items)
        self.transactions += 1

    def _mark_done(self, seq: int) -> None:
        self._done_seq = seq
        committed, self._committed = self._committed, asyncio.Event()
        committed.set()

    def _note_error(self, exc: Exception) -> None:
        self.write_errors += 1
        self.last_error = self.database.describe_error(exc)
        if self._may_warn("write"):
            log.warning("usage log write failed, %d rows kept for retry: %s",
                        self.queue_depth, self.last_error)
