"""The usage log's write path, shared by both backends: a bounded in-memory queue and one
background task that drains it in batches, each batch in one transaction.

The request path only ever calls `enqueue()`, which appends a tuple and returns at once.
The writer hands each batch to its `Database` (SQLite or PostgreSQL); a failure of the
disk or server keeps the rows and retries with backoff, a batch the database rejects for
its rows' sake is written row by row and only the bad rows are dropped.

Rows have a kind, each with its own bound: usage rows (and batch bookkeeping) at most
`queue_max`, audit rows at most `audit_queue_max` (a flood of unauthenticated requests
never crowds out a billing row), journal rows unbounded (one per request in flight at
most, see journal.py). A journal row still queued when its request's usage row arrives is
never written; one already written is deleted in the same transaction as the usage row. A
usage row dropped at the bound leaves its journal row in place (written, or written later):
the next start charges that request at its reservation.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, Protocol

from .journal import INSERT_JOURNAL, delete_statements
from .store import GENERATION_COLUMNS, INSERT_GENERATION

log = logging.getLogger(__name__)

RETRY_MIN_S = 0.5
RETRY_MAX_S = 5.0
LOG_INTERVAL_S = 10.0  # at most one "queue full" / "write failed" warning per interval


BILLING, AUDIT, JOURNAL = "billing", "audit", "journal"  # what a queued row is


class Item(NamedTuple):
    seq: int
    sql: str
    params: tuple[Any, ...]
    kind: str = BILLING


_KEY_COL, _COST_COL = GENERATION_COLUMNS.index("key_name"), GENERATION_COLUMNS.index("cost")
Plan = list[tuple[str, list[tuple[Any, ...]]]]  # statements, each with its rows of params


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
                 batch_max: int, close_timeout_s: float, audit_queue_max: int = 1000) -> None:
        self.database = database
        self.queue_max = queue_max
        self.audit_queue_max = audit_queue_max
        self.flush_interval_s = flush_interval_s
        self.batch_max = batch_max
        self.close_timeout_s = close_timeout_s
        self.dropped_by_kind = {BILLING: 0, AUDIT: 0}
        self.write_errors = 0
        self.last_error: str | None = None
        self.transactions = 0
        self._pending: deque[Item] = deque()
        self._inflight: list[Item] = []  # the batch being written, kept until it commits
        self._queued = {BILLING: 0, AUDIT: 0, JOURNAL: 0}  # rows waiting, by kind
        self._taken_seq = 0  # the last sequence number taken into the batch in flight
        # The journal: ids whose journal row waits in the queue (never written if their
        # usage row comes first), and ids whose journal row is written or being written
        # (deleted with their usage row).
        self._journal_waiting: set[str] = set()
        self._voided = 0  # journal rows in the queue that will not be written
        self._journalled: set[str] = set()
        self._orphaned: set[str] = set()  # queued journal rows whose usage row was dropped
        self.write_lock = asyncio.Lock()  # held from a batch's BEGIN until it is let go
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
        return sum(self._queued.values())

    @property
    def dropped(self) -> int:
        """Rows dropped since start (queue full, closed, or rows that cannot be stored)."""
        return sum(self.dropped_by_kind.values())

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

    def record(self, gen_id: str, params: tuple[Any, ...]) -> bool:
        """Queue a usage row; a journal row of its request still queued is never written."""
        waiting = self._journal_waiting
        if self.enqueue(INSERT_GENERATION, params):
            if waiting and gen_id in waiting:
                waiting.discard(gen_id)
                self._queued[JOURNAL] -= 1
                self._voided += 1
            return True
        # The usage row is dropped: its journal row stays, so that the next start charges
        # the request at its reservation, whether it is written already or still queued
        # (then written once the log takes rows again, and never deleted by a usage row).
        self._journalled.discard(gen_id)
        if gen_id in waiting:
            self._orphaned.add(gen_id)
        return False

    def journal(self, gen_id: str, params: tuple[Any, ...]) -> bool:
        """Queue the journal row of a request whose books just opened (journal.py)."""
        if not self.enqueue(INSERT_JOURNAL, params, kind=JOURNAL):
            return False
        self._journal_waiting.add(gen_id)
        return True

    def enqueue(self, sql: str, params: tuple[Any, ...], *, bounded: bool = True,
                kind: str = BILLING) -> bool:
        """Queue any write; each `kind` has its own bound (audit rows never take the room
        of billing rows); `bounded=False` for batch bookkeeping."""
        queued = self._queued
        if kind == BILLING:
            full = bounded and queued[BILLING] >= self.queue_max
        else:
            full = kind == AUDIT and queued[AUDIT] >= self.audit_queue_max
        if self._closed or self._closing or full:
            if kind != JOURNAL:  # a journal row is a safety net, not a row of the log
                self.drop(kind)
            return False
        queued[kind] += 1
        self._seq += 1
        self._pending.append(Item(self._seq, sql, params, kind))
        self._wake.set()
        if len(self._pending) >= self.batch_max:
            self._urgent.set()
        return True

    def drop(self, kind: str = BILLING) -> None:
        self.dropped_by_kind[kind] += 1
        if self._may_warn("drop"):
            log.warning("usage log queue full or closed (%d rows waiting, last write "
                        "error: %s); %d rows dropped so far (%s)",
                        self.queue_depth, self.last_error, self.dropped,
                        ", ".join(f"{k}: {n}" for k, n in self.dropped_by_kind.items()))

    async def spend_snapshot(self, spend_by_key: Callable[[], Awaitable[dict[str, float]]],
                             at_cut: Callable[[], None] | None = None) -> dict[str, float]:
        """Spend per key as of one instant: the usage log (`spend_by_key`) plus the usage
        rows queued and not yet written. Nothing is committed meanwhile; `at_cut` runs at
        that instant (a caller that must tell what was counted from what comes after)."""
        async with self.write_lock:
            spend = await spend_by_key()
            for item in itertools.chain(self._inflight, self._pending):
                if item.sql == INSERT_GENERATION:
                    name = item.params[_KEY_COL]
                    spend[name] = spend.get(name, 0.0) + item.params[_COST_COL]
            if at_cut is not None:
                at_cut()
        return spend

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
                    self._inflight = self._take_batch()
                    if not self._inflight:
                        continue
                try:
                    async with self.write_lock:
                        await self._write_inflight()
                    delay = 0.0
                except Exception as exc:  # the disk's fault: keep the rows, back off, retry
                    self._note_error(exc)
                    self._compact()
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

    def _take_batch(self) -> list[Item]:
        """Up to batch_max rows off the queue, without the journal rows whose request has
        ended meanwhile (its usage row follows: the journal row would only be deleted)."""
        pending, waiting = self._pending, self._journal_waiting
        batch: list[Item] = []
        while pending and len(batch) < self.batch_max:
            item = pending.popleft()
            self._taken_seq = item.seq
            if item.kind == JOURNAL:
                if item.params[0] not in waiting:
                    self._voided -= 1
                    continue
                waiting.discard(item.params[0])
                if item.params[0] in self._orphaned:  # its usage row was dropped
                    self._orphaned.discard(item.params[0])
                else:
                    self._journalled.add(item.params[0])
            batch.append(item)
        if not batch:
            self._mark_done(self._taken_seq)
        return batch

    def _compact(self) -> None:
        """While the disk is stuck the queue is not taken from: drop the journal rows of
        requests that have ended meanwhile, so that they do not pile up."""
        if self._voided > 1000 and self._voided * 2 > len(self._pending):
            waiting = self._journal_waiting
            self._pending = deque(item for item in self._pending
                                  if item.kind != JOURNAL or item.params[0] in waiting)
            self._voided = 0

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
                    if item.kind != JOURNAL:
                        self.dropped_by_kind[item.kind] += 1
                    log.error("usage row dropped, it cannot be stored: %s", row_exc)
                self._inflight.pop(0)
                self._written((item,))
                self._mark_done(item.seq)
            self._mark_done(self._taken_seq)
            return
        if self.write_errors and self.last_error is not None:
            log.info("usage log writes recovered (%d failures so far)", self.write_errors)
            self.last_error = None
        self._written(self._inflight)
        self._mark_done(self._taken_seq)
        self._inflight = []

    def _written(self, items: Sequence[Item]) -> None:
        """Rows committed (or dropped as bad): off the counts; a usage row's journal row
        went with it."""
        queued, journalled = self._queued, self._journalled
        for item in items:
            queued[item.kind] -= 1
            if journalled and item.sql == INSERT_GENERATION:
                journalled.discard(item.params[0])

    def plan(self, items: Sequence[Item]) -> Plan:
        """The statements of one batch (`Database.write_batch` runs them in one
        transaction): its rows grouped by statement, then the deletion of the journal rows
        of the usage rows written, so that a crash leaves a request's journal row or its
        usage row, never both or neither."""
        groups: dict[str, list[tuple[Any, ...]]] = {}
        ended: list[str] = []
        journalled = self._journalled
        for item in items:
            groups.setdefault(item.sql, []).append(item.params)
            if journalled and item.sql == INSERT_GENERATION and item.params[0] in journalled:
                ended.append(item.params[0])
        return [*groups.items(), *delete_statements(ended)]

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
