"""The usage log: one SQLite row per generation plus an audit trail (docs/operations.md).

The request path only ever calls `record()` / `audit()`, which append a tuple to a bounded
in-memory queue and return at once. One background task drains the queue in batches, each
batch in one transaction. Reads use a second connection so that a writer stuck on a locked
or full disk never holds up `GET /generation`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import sqlite3
import time
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import aiosqlite
import orjson

from .types import PROVIDER, GenerationRecord

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
# MIGRATIONS[n] takes a database from user_version n to n + 1; later versions append.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE generations (
        id TEXT PRIMARY KEY, created_at REAL NOT NULL, key_name TEXT NOT NULL, trace_id TEXT,
        endpoint TEXT NOT NULL, model TEXT NOT NULL, provider TEXT, upstream_model TEXT,
        upstream_id TEXT, streamed INTEGER NOT NULL, cancelled INTEGER NOT NULL,
        finish_reason TEXT, status_code INTEGER NOT NULL, error_code TEXT,
        tokens_prompt INTEGER NOT NULL, tokens_completion INTEGER NOT NULL,
        tokens_cached INTEGER NOT NULL, tokens_reasoning INTEGER NOT NULL,
        tokens_cache_write INTEGER NOT NULL, usage_source TEXT NOT NULL, cost REAL NOT NULL,
        latency_ms REAL NOT NULL, ttft_ms REAL, generation_time_ms REAL,
        attempts TEXT NOT NULL  -- JSON list of {provider, status, latency_ms}
    );
    CREATE INDEX generations_key_created ON generations (key_name, created_at);
    CREATE INDEX generations_created ON generations (created_at);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY, created_at REAL NOT NULL, event TEXT NOT NULL,
        key_name TEXT, trace_id TEXT, detail TEXT NOT NULL  -- JSON object
    );
    CREATE INDEX audit_created ON audit (created_at);
    -- Spend of pruned rows, so that retention never gives a key its credits back.
    CREATE TABLE spend_carryover (key_name TEXT PRIMARY KEY, cost REAL NOT NULL);
    """,
    # 1 -> 2: batches (POST /batch), kept so async batches survive a restart.
    """
    CREATE TABLE batches (
        id TEXT PRIMARY KEY, key_name TEXT NOT NULL, created_at REAL NOT NULL,
        completed_at REAL, status TEXT NOT NULL, mode TEXT NOT NULL, total INTEGER NOT NULL,
        trace_id TEXT
    );
    CREATE INDEX batches_key ON batches (key_name, created_at);
    CREATE TABLE batch_items (
        batch_id TEXT NOT NULL, idx INTEGER NOT NULL, custom_id TEXT, item TEXT NOT NULL,
        state TEXT NOT NULL,  -- pending | running | done
        result TEXT,  -- JSON result object once done
        PRIMARY KEY (batch_id, idx)
    );
    """,
    # 2 -> 3: the estimated upstream cost of abandoned attempts, which the key does not pay.
    "ALTER TABLE generations ADD COLUMN operator_cost REAL NOT NULL DEFAULT 0",
    # 3 -> 4: stored responses (POST /responses with store), the proxy's conversation state.
    """
    CREATE TABLE responses (
        id TEXT PRIMARY KEY, key_name TEXT NOT NULL, created_at REAL NOT NULL,
        input_items TEXT NOT NULL,  -- JSON list: every item the model read, earlier turns too
        output_items TEXT NOT NULL,  -- JSON list: the whole output, encrypted reasoning too
        response TEXT NOT NULL  -- JSON: the response object as its client got it
    );
    CREATE INDEX responses_created ON responses (created_at);
    """,
)

GENERATION_COLUMNS = (
    "id", "created_at", "key_name", "trace_id", "endpoint", "model", "provider",
    "upstream_model", "upstream_id", "streamed", "cancelled", "finish_reason", "status_code",
    "error_code", "tokens_prompt", "tokens_completion", "tokens_cached", "tokens_reasoning",
    "tokens_cache_write", "usage_source", "cost", "latency_ms", "ttft_ms",
    "generation_time_ms", "attempts", "operator_cost",
)
# OR REPLACE: a generation recorded twice (say, marked cancelled at shutdown and then
# finished) must not become a poison row that fails every retry of its batch.
_INSERT_GENERATION = (
    f"INSERT OR REPLACE INTO generations ({', '.join(GENERATION_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(GENERATION_COLUMNS))})"
)
_INSERT_AUDIT = (
    "INSERT INTO audit (created_at, event, key_name, trace_id, detail) VALUES (?, ?, ?, ?, ?)"
)
_CARRY_SPEND = """
    INSERT INTO spend_carryover (key_name, cost)
    SELECT key_name, SUM(cost) FROM generations WHERE created_at < ? GROUP BY key_name
    ON CONFLICT (key_name) DO UPDATE SET cost = cost + excluded.cost
"""
_SPEND = """
    SELECT key_name, SUM(cost) FROM (
        SELECT key_name, cost FROM generations UNION ALL SELECT key_name, cost FROM spend_carryover
    ) GROUP BY key_name
"""
# Retention: what `prune` deletes besides generations (whose spend is carried over first),
# each statement with the cutoff as its one parameter. Stored responses go by their age.
# A batch goes whole (its row, its items' inputs and results) once it finished before the
# cutoff; an unfinished batch stays, whatever its age. The statuses are batch.py's FINISHED.
_PRUNE_GENERATIONS = "DELETE FROM generations WHERE created_at < ?"
_FINISHED_BATCHES = (
    "FROM batches WHERE status IN ('completed', 'cancelled') AND completed_at < ?")
PRUNE_STATEMENTS: tuple[str, ...] = (
    "DELETE FROM audit WHERE created_at < ?",
    "DELETE FROM responses WHERE created_at < ?",
    f"DELETE FROM batch_items WHERE batch_id IN (SELECT id {_FINISHED_BATCHES})",
    f"DELETE {_FINISHED_BATCHES}",
)

# A range of created_at: without statistics SQLite would rather walk all of
# generations_key_created (for the GROUP BY) than search generations_created.
_SPEND_SINCE = """
    SELECT key_name, SUM(cost) FROM generations INDEXED BY generations_created
    WHERE created_at >= ? GROUP BY key_name
"""

LEGACY_PROVIDER_SOURCE = "upstream"  # the provider's usage, as rows stored it before
RETRY_MIN_S = 0.5
RETRY_MAX_S = 5.0
LOG_INTERVAL_S = 10.0  # at most one "queue full" / "write failed" warning per interval
# Errors that no retry can cure: the rows themselves are bad. Anything else (locked, disk
# full, read-only, I/O) is the disk's fault and is retried until it recovers.
_BAD_ROW_ERRORS = (
    sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError,
    sqlite3.DataError, OverflowError, TypeError, ValueError,
)


# Rows per INSERT: sqlite3's executemany releases the GIL around every row's step and must
# win it back from a busy event loop each time (up to the 5 ms switch interval): at
# saturation the writer fell behind its queue and dropped rows. A statement of many rows
# releases it once. Statements hold a power of two of rows, at most 128: sqlite3 caches
# each distinct statement, and one of thousands of rows per tail size cost ~100 MB.
ROWS_PER_STATEMENT = 128
MAX_SQL_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
_VALUES = re.compile(
    r"^(INSERT (?:OR \w+ )?INTO \w+ \([\w, ]+\) VALUES )(\((?:\?|NULL)(?:, (?:\?|NULL))*\))$")


def multi_row(sql: str, rows: Sequence[tuple[Any, ...]]
              ) -> list[tuple[str, list[Any]]] | None:
    """`sql`, an INSERT of one VALUES row, over `rows` in a few statements of many rows;
    None for any other statement (run it with executemany)."""
    match = _VALUES.match(sql)
    if match is None or not rows or not rows[0]:
        return None
    most = min(ROWS_PER_STATEMENT, max(1, MAX_SQL_VARIABLES // len(rows[0])))
    size = 1 << (most.bit_length() - 1)  # the largest power of two within both limits
    statements: list[tuple[str, list[Any]]] = []
    start = 0
    while start < len(rows):
        while size > len(rows) - start:
            size //= 2
        chunk = rows[start:start + size]
        statements.append((_rows_sql(match[1], match[2], size),
                           [value for params in chunk for value in params]))
        start += size
    return statements


@functools.lru_cache(maxsize=64)
def _rows_sql(head: str, group: str, count: int) -> str:
    return head + ", ".join([group] * count)


class StoreError(Exception):
    """The usage database cannot be used; the message is meant for the operator."""


class _Item(NamedTuple):
    seq: int
    sql: str
    params: tuple[Any, ...]


class UsageStore:
    def __init__(
        self, path: Path, *, queue_max: int = 10000, flush_interval_s: float = 0.2,
        batch_max: int = 2000, busy_timeout_s: float = 5.0, close_timeout_s: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self.queue_max = queue_max
        self.flush_interval_s = flush_interval_s
        self.batch_max = batch_max
        self.busy_timeout_s = busy_timeout_s
        self.close_timeout_s = close_timeout_s
        self.dropped = 0
        self.write_errors = 0
        self.last_error: str | None = None
        self.transactions = 0
        self._pending: deque[_Item] = deque()
        self._inflight: list[_Item] = []  # the batch being written, kept until it commits
        self._seq = 0  # last sequence number handed out
        self._done_seq = 0  # every item up to this one has been committed (or rejected)
        self._wake = asyncio.Event()  # rows arrived
        self._urgent = asyncio.Event()  # someone waits (flush, close): do not linger
        self._committed = asyncio.Event()  # replaced after each commit; waiters re-check
        self._closing = False
        self._closed = False
        self._last_warning = {"drop": -LOG_INTERVAL_S, "write": -LOG_INTERVAL_S}
        self._wdb: aiosqlite.Connection | None = None
        self._rdb: aiosqlite.Connection | None = None
        self._writer: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        return len(self._pending) + len(self._inflight)

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        # Checking and migrating the file is done with plain sqlite3 in a thread first: a
        # failed aiosqlite connect leaves its worker thread finishing behind our back.
        await asyncio.to_thread(self._prepare)
        self._wdb = await self._connect()
        try:
            self._rdb = await self._connect()
        except BaseException:
            await self._close_connections()
            raise
        self._rdb.row_factory = sqlite3.Row
        self._writer = asyncio.create_task(self._run(), name="usage-writer")

    async def close(self) -> None:
        if self._retention is not None:
            self._retention.cancel()
            await asyncio.gather(self._retention, return_exceptions=True)
        if self._writer is not None:
            self._closing = True
            self._wake.set()
            self._urgent.set()
            # The writer exits once the queue is empty; a dead disk must not hang shutdown.
            await asyncio.wait({self._writer}, timeout=self.close_timeout_s)
            if not self._writer.done():
                self._writer.cancel()
                await asyncio.gather(self._writer, return_exceptions=True)
            if self.queue_depth:
                log.error("usage log closed with %d rows unwritten (last error: %s)",
                          self.queue_depth, self.last_error)
        self._closed = True
        await self._close_connections()

    def _prepare(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout_s)
        except OSError as exc:
            raise StoreError(f"cannot create the directory of {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise _open_error(self.path, exc) from exc
        try:
            db.execute("PRAGMA journal_mode = WAL")  # the first read of the file's header
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"usage database {self.path} has schema version {version}, newer than "
                    f"version {SCHEMA_VERSION} that this anyrouter-proxy knows; upgrade "
                    "anyrouter-proxy or point storage.sqlite_path at another file")
            for step in range(version, len(MIGRATIONS)):
                # One transaction per step, user_version included: a crash leaves either
                # the old version or the new one, never half a schema.
                db.executescript(f"BEGIN IMMEDIATE; {MIGRATIONS[step]}; "
                                 f"PRAGMA user_version = {step + 1}; COMMIT;")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.rollback()
            raise _open_error(self.path, exc) from exc
        finally:
            db.close()

    async def _connect(self) -> aiosqlite.Connection:
        try:
            db = await aiosqlite.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:  # the file vanished or changed since _prepare
            raise _open_error(self.path, exc) from exc
        try:
            await db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")  # WAL keeps it safe on crash
        except sqlite3.Error as exc:
            await db.close()
            raise _open_error(self.path, exc) from exc
        return db

    async def _close_connections(self) -> None:
        for db in (self._rdb, self._wdb):
            if db is not None:
                await db.close()
        self._rdb = self._wdb = None

    # -- request path: never awaits ------------------------------------------------------

    def record(self, rec: GenerationRecord) -> bool:
        try:
            params = _generation_params(rec)
        except (TypeError, ValueError):  # a bug upstream of us must not fail the request
            log.exception("usage record %s cannot be stored", rec.id)
            self.dropped += 1
            return False
        return self.enqueue(_INSERT_GENERATION, params)

    def audit(
        self, event: str, *, key_name: str | None = None, trace_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> bool:
        text = json.dumps(dict(detail or {}), default=str, separators=(",", ":"))
        return self.enqueue(_INSERT_AUDIT, (time.time(), event, key_name, trace_id, text))


    async def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Read through the reader connection (after `flush()` when freshness matters)."""
        return list(await self._reader().execute_fetchall(sql, params))

    def enqueue(self, sql: str, params: tuple[Any, ...], *, bounded: bool = True) -> bool:
        """Queue any write for the writer; `bounded=False` for the few rows that must not
        be dropped when the queue is full (batch bookkeeping)."""
        full = bounded and self.queue_depth >= self.queue_max
        if self._closed or self._closing or full:
            self.dropped += 1
            if self._may_warn("drop"):
                log.warning("usage log queue full or closed (%d rows waiting, last write "
                            "error: %s); %d rows dropped so far",
                            self.queue_depth, self.last_error, self.dropped)
            return False
        self._seq += 1
        self._pending.append(_Item(self._seq, sql, params))
        self._wake.set()
        if len(self._pending) >= self.batch_max:
            self._urgent.set()
        return True

    def _may_warn(self, kind: str) -> bool:
        now = time.monotonic()
        if now - self._last_warning[kind] < LOG_INTERVAL_S:
            return False
        self._last_warning[kind] = now
        return True

    # -- the writer ------------------------------------------------------------------------

    async def flush(self) -> None:
        target = self._seq
        while self._done_seq < target and self._writer is not None and not self._writer.done():
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
        try:
            await self._write_batch(self._inflight)
        except _BAD_ROW_ERRORS as exc:
            # One bad row must not block the log forever: write the rows one by one and
            # drop only those that fail. A disk error here propagates and is retried.
            self._note_error(exc)
            while self._inflight:
                item = self._inflight[0]
                try:
                    await self._write_batch([item])
                except _BAD_ROW_ERRORS as row_exc:
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

    async def _write_batch(self, items: Sequence[_Item]) -> None:
        assert self._wdb is not None
        db = self._wdb
        groups: dict[str, list[tuple[Any, ...]]] = {}
        for item in items:
            groups.setdefault(item.sql, []).append(item.params)
        await db.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in groups.items():
                statements = multi_row(sql, rows)
                if statements is None:
                    await db.executemany(sql, rows)
                    continue
                for statement, params in statements:
                    await db.execute(statement, params)
            await db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # keep the original error, not this one
                await db.rollback()
            raise
        self.transactions += 1

    def _mark_done(self, seq: int) -> None:
        self._done_seq = seq
        committed, self._committed = self._committed, asyncio.Event()
        committed.set()

    def _note_error(self, exc: Exception) -> None:
        self.write_errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self._may_warn("write"):
            log.warning("usage log write failed, %d rows kept for retry: %s",
                        self.queue_depth, self.last_error)

    # -- reads and maintenance -----------------------------------------------------------

    async def get_generation(
        self, gen_id: str, key_name: str, *, wait_s: float = 2.0
    ) -> dict[str, Any] | None:
        row = await self._fetch_generation(gen_id)
        if row is None:
            # A just-finished generation may still sit in the queue: let the writer catch
            # up (bounded), then look once more. An empty queue returns at once.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush(), wait_s)
            row = await self._fetch_generation(gen_id)
        if row is None or row["key_name"] != key_name:
            return None
        return _present(row)

    async def _fetch_generation(self, gen_id: str) -> sqlite3.Row | None:
        rows = await self._reader().execute_fetchall(
            "SELECT * FROM generations WHERE id = ?", (gen_id,))
        return next(iter(rows), None)

    async def spend_by_key(self) -> dict[str, float]:
        try:
            rows = await self._reader().execute_fetchall(_SPEND)
        except sqlite3.DatabaseError as exc:  # garbled pages behind a valid header
            raise _open_error(self.path, exc) from exc
        return {str(name): float(total) for name, total in rows}

    async def spend_since(self, since: float) -> dict[str, float]:
        """USD per key of the usage rows created at or after `since` (Unix seconds): a
        budget period's spend so far."""
        try:
            rows = await self._reader().execute_fetchall(_SPEND_SINCE, (since,))
        except sqlite3.DatabaseError as exc:
            raise _open_error(self.path, exc) from exc
        return {str(name): float(total) for name, total in rows}

    async def prune(self, retention_days: int) -> int:
        cutoff = time.time() - retention_days * 86400
        # A connection of its own, so a long delete never queues behind or ahead of the
        # writer's batches or the readers on theirs.
        async with aiosqlite.connect(self.path, isolation_level=None) as db:
            await db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            await db.execute("BEGIN IMMEDIATE")
            try:
                await db.execute(_CARRY_SPEND, (cutoff,))
                deleted = 0
                for statement in (_PRUNE_GENERATIONS, *PRUNE_STATEMENTS):
                    cur = await db.execute(statement, (cutoff,))
                    deleted += cur.rowcount
                await db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await db.rollback()
                raise
        return deleted

    def start_retention(self, retention_days: int | None, interval_s: float = 3600) -> None:
        if self._retention is not None:  # a reload with a new value replaces the old task
            self._retention.cancel()
            self._retention = None
        if retention_days is not None and retention_days > 0:
            self._retention = asyncio.create_task(
                self._retain(retention_days, interval_s), name="usage-retention")

    async def _retain(self, retention_days: int, interval_s: float) -> None:
        while True:
            try:
                deleted = await self.prune(retention_days)
                if deleted:
                    log.info("usage log: pruned %d rows older than %d days",
                             deleted, retention_days)
            except sqlite3.Error as exc:  # try again next round; serving goes on
                log.warning("usage log prune failed: %s", exc)
            await asyncio.sleep(interval_s)

    def _reader(self) -> aiosqlite.Connection:
        if self._rdb is None:
            raise StoreError("the usage store is not open")
        return self._rdb


def _open_error(path: Path, exc: sqlite3.Error) -> StoreError:
    if isinstance(exc, sqlite3.OperationalError):  # CANTOPEN, locked, permissions
        return StoreError(f"cannot open usage database {path}: {exc}")
    return StoreError(f"usage database {path} is corrupt or not a SQLite database ({exc}); "
                      "move it aside to start a new one")


def _generation_params(rec: GenerationRecord) -> tuple[Any, ...]:
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


def _ms(value: float | None) -> int | None:
    return None if value is None else round(value)


_SAME_NAME = (
    "id", "model", "upstream_model", "upstream_id", "tokens_prompt", "tokens_completion",
    "finish_reason", "status_code", "error_code", "endpoint", "trace_id", "usage_source",
)


def _present(row: sqlite3.Row) -> dict[str, Any]:
    """A row in OpenRouter's GET /generation shape (plus trace_id, usage_source, attempts)."""
    created = datetime.fromtimestamp(row["created_at"], UTC)
    out: dict[str, Any] = {name: row[name] for name in _SAME_NAME}
    if out["usage_source"] == LEGACY_PROVIDER_SOURCE:  # a row stored before the rename
        out["usage_source"] = PROVIDER
    out.update(
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
