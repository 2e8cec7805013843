"""The usage log in SQLite (`storage.backend: sqlite`, the default): one row per
generation plus an audit trail (docs/operations.md).

Writes go through the shared `QueuedWriter` (writer.py), whose single background task
hands each batch to `write_batch` here on a connection of its own; reads use a second
connection so that a writer stuck on a locked or full disk never holds up
`GET /generation`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from ..types import GenerationRecord, Interrupted
from .activity import SQLITE_MIGRATION
from .journal import (
    JOURNAL_TABLE,
    LiveLock,
    journal_params,
    log_recovered,
    new_owner,
    recover_sqlite,
)
from .response_items import RESPONSE_ITEMS_SQLITE
from .responses import RESPONSES_SQLITE
from .sqlite_thread import ThreadConnection
from .store import (
    INSERT_AUDIT,
    PRUNE_STATEMENTS,
    SETTINGS_TABLE,
    Retention,
    StoreError,
    audit_params,
    find_generation,
    generation_params,
    read_setting,
)
from .writer import AUDIT, BILLING, Item, QueuedWriter

log = logging.getLogger(__name__)

SCHEMA_VERSION = 7
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
    # 3 -> 4: the daily roll-up behind GET /activity and the dashboard (activity.py), and
    # small settings such as the dashboard's signing secret.
    SQLITE_MIGRATION + SETTINGS_TABLE,
    # 4 -> 5: stored responses (POST /responses with store), the proxy's conversation state.
    RESPONSES_SQLITE,
    # 5 -> 6: the reservation journal of requests in flight (journal.py).
    JOURNAL_TABLE.format(real="REAL"),
    # 6 -> 7: stored responses' items by id, for item_reference input items.
    RESPONSE_ITEMS_SQLITE,
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
_PRUNE_GENERATIONS = "DELETE FROM generations WHERE created_at < ?"

# A range of created_at: without statistics SQLite would rather walk all of
# generations_key_created (for the GROUP BY) than search generations_created.
_SPEND_SINCE = """
    SELECT key_name, SUM(cost) FROM generations INDEXED BY generations_created
    WHERE created_at >= ? GROUP BY key_name
"""

# Errors that no retry can cure: the rows themselves are bad. Anything else (locked, disk
# full, read-only, I/O) is the disk's fault and is retried until it recovers.
BAD_ROW_ERRORS: tuple[type[Exception], ...] = (
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


class SqliteStore:
    """`Store` on one SQLite file (WAL): a writer connection, a reader connection."""

    bad_row_errors = BAD_ROW_ERRORS

    def __init__(
        self, path: Path, *, queue_max: int = 10000, flush_interval_s: float = 0.2,
        batch_max: int = 2000, busy_timeout_s: float = 5.0, close_timeout_s: float = 10.0,
        audit_queue_max: int = 1000,
    ) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.writer = QueuedWriter(self, queue_max=queue_max, flush_interval_s=flush_interval_s,
                                   batch_max=batch_max, close_timeout_s=close_timeout_s,
                                   audit_queue_max=audit_queue_max)
        self.owner = new_owner()  # this process's journal rows (journal.py)
        self._live: LiveLock | None = None
        self.retention = Retention(self.prune, (sqlite3.Error,), str)
        self._wdb: ThreadConnection | None = None
        self._rdb: aiosqlite.Connection | None = None
        self._adb: aiosqlite.Connection | None = None  # reports: never ahead of _rdb's reads

    @property
    def dropped(self) -> int:
        return self.writer.dropped

    @property
    def dropped_by_kind(self) -> dict[str, int]:
        return self.writer.dropped_by_kind

    @property
    def write_errors(self) -> int:
        return self.writer.write_errors

    @property
    def last_error(self) -> str | None:
        return self.writer.last_error

    @property
    def transactions(self) -> int:
        return self.writer.transactions

    @property
    def queue_depth(self) -> int:
        return self.writer.queue_depth

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        # Checking and migrating the file is done with plain sqlite3 in a thread first: a
        # failed aiosqlite connect leaves its worker thread finishing behind our back.
        await asyncio.to_thread(self._prepare)
        live = LiveLock(self.path, self.owner)  # this process runs: see journal.py
        try:
            await asyncio.to_thread(live.hold)
        except OSError as exc:
            raise StoreError(f"cannot create a lock file beside {self.path}: {exc}") from exc
        try:
            self._wdb = await self._connect_writer()
            self._rdb = await self._connect()
            self._adb = await self._connect()
        except BaseException:
            await self._close_connections()
            live.release()
            raise
        self._live = live
        self._rdb.row_factory = self._adb.row_factory = sqlite3.Row
        self.writer.start()

    async def close(self) -> None:
        await self.retention.close()
        await self.writer.close()
        await self._close_connections()
        if self._live is not None:
            self._live.release()
            self._live = None

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

    async def _connect_writer(self) -> ThreadConnection:
        try:
            return await ThreadConnection.open(self.path, self.busy_timeout_s)
        except sqlite3.Error as exc:
            raise _open_error(self.path, exc) from exc

    async def _close_connections(self) -> None:
        for db in (self._adb, self._rdb, self._wdb):
            if db is not None:
                await db.close()
        self._adb = self._rdb = self._wdb = None

    # -- request path: never awaits ------------------------------------------------------

    def record(self, rec: GenerationRecord) -> bool:
        try:
            params = generation_params(rec)
        except (TypeError, ValueError):  # a bug upstream of us must not fail the request
            log.exception("usage record %s cannot be stored", rec.id)
            self.writer.drop(BILLING)
            return False
        return self.writer.record(rec.id, params)

    def journal(self, rec: GenerationRecord, reserved: float, prompt_estimate: int) -> bool:
        """Journal a request whose books just opened (`reserved` USD held): if the process
        dies before its usage row is written, the next start charges it (journal.py)."""
        return self.writer.journal(
            rec.id, journal_params(self.owner, rec, reserved, prompt_estimate))

    def audit(
        self, event: str, *, key_name: str | None = None, trace_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> bool:
        return self.writer.enqueue(INSERT_AUDIT, audit_params(event, key_name, trace_id, detail),
                                   kind=AUDIT)

    async def report(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """An aggregate query (activity, dashboard) on a connection of its own, so that a
        slow one never holds up `GET /generation` or the budget reads."""
        if self._adb is None:
            raise StoreError("the usage store is not open")
        return list(await self._adb.execute_fetchall(sql, params))

    async def setting(self, name: str, default: str) -> str:
        return await read_setting(self, name, default)

    def enqueue(self, sql: str, params: tuple[Any, ...], *, bounded: bool = True) -> bool:
        return self.writer.enqueue(sql, params, bounded=bounded)

    async def flush(self) -> None:
        await self.writer.flush()

    # -- the writer's database half --------------------------------------------------------

    async def write_batch(self, items: Sequence[Item]) -> None:
        """One transaction of `items`, rows of one statement sent as few statements."""
        assert self._wdb is not None
        plan = self.writer.plan(items)

        def write(db: sqlite3.Connection) -> None:
            for sql, rows in plan:
                statements = multi_row(sql, rows)
                if statements is None:
                    db.executemany(sql, rows)
                    continue
                for statement, params in statements:
                    db.execute(statement, params)

        await self._wdb.transaction(write)

    def describe_error(self, exc: BaseException) -> str:
        return f"{type(exc).__name__}: {exc}"

    # -- reads and maintenance -----------------------------------------------------------

    async def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Read through the reader connection (after `flush()` when freshness matters)."""
        return list(await self._reader().execute_fetchall(sql, params))

    async def get_generation(
        self, gen_id: str, key_name: str | None, *, wait_s: float = 2.0
    ) -> dict[str, Any] | None:
        return await find_generation(self, gen_id, key_name, wait_s)

    async def spend_by_key(self) -> dict[str, float]:
        try:
            rows = await self._reader().execute_fetchall(_SPEND)
        except sqlite3.DatabaseError as exc:  # garbled pages behind a valid header
            raise _open_error(self.path, exc) from exc
        return {str(name): float(total) for name, total in rows}

    async def spend_snapshot(self, at_cut: Callable[[], None] | None = None
                             ) -> dict[str, float]:
        """Spend per key as of one instant, rows not yet written included (writer.py)."""
        return await self.writer.spend_snapshot(self.spend_by_key, at_cut)

    async def recover_interrupted(self) -> list[Interrupted]:
        """At start, before serving: the requests that a process now gone had in flight
        become usage rows with status `interrupted`, charged at their reservation."""
        found = await asyncio.to_thread(self._recover)
        log_recovered(found)
        return found

    def _recover(self) -> list[Interrupted]:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout_s)
        except sqlite3.Error as exc:
            raise _open_error(self.path, exc) from exc
        try:
            return recover_sqlite(db, self.path, self.owner)
        except sqlite3.Error as exc:
            raise _open_error(self.path, exc) from exc
        finally:
            db.close()

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
        self.retention.start(retention_days, interval_s)

    def _reader(self) -> aiosqlite.Connection:
        if self._rdb is None:
            raise StoreError("the usage store is not open")
        return self._rdb


def _open_error(path: Path, exc: sqlite3.Error) -> StoreError:
    if isinstance(exc, sqlite3.OperationalError):  # CANTOPEN, locked, permissions
        return StoreError(f"cannot open usage database {path}: {exc}")
    return StoreError(f"usage database {path} is corrupt or not a SQLite database ({exc}); "
                      "move it aside to start a new one")
