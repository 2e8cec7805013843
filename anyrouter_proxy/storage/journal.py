"""The reservation journal: one row per proxied request in flight, so that a request the
process dies in the middle of is still charged.

A request's journal row is queued when its books open (its credit reserved) and removed in
the same transaction that writes its usage row; the usage store's single writer
(writer.py) does both,
so the request path never waits for the disk. A row whose usage row never came (the
process was killed, the machine lost power) is turned into a usage row with status
`interrupted` at the next start, charged at the amount reserved: the most the upstream may
have spent, the only bound the proxy knows. Both backends use this SQL; `?` placeholders
are rewritten for PostgreSQL by postgres.py.

Several processes may share one database (PostgreSQL replicas; two processes on one
SQLite file during a restart): each journals under an `owner` id of its own, and only the
rows of owners that are gone are recovered. SQLite tells the living by a lock file per
owner beside the database (flock, released by the kernel when the process dies);
PostgreSQL by a session advisory lock (released when the session ends).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import logging
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..types import GenerationRecord, Interrupted

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"  # the row's error_code
INTERRUPTED_STATUS = 500  # the proxy itself failed the request: a server error
INTERRUPTED_SOURCE = "estimated"  # usage_source: the cost is the reservation, not a report

JOURNAL_COLUMNS = (
    "id", "owner", "created_at", "key_name", "trace_id", "endpoint", "model", "streamed",
    "reserved", "prompt_estimate",
)
INSERT_JOURNAL = (
    f"INSERT INTO reservation_journal ({', '.join(JOURNAL_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(JOURNAL_COLUMNS))})"
)
DELETE_MAX = 256  # ids per DELETE statement (a power of two: few distinct statements)

# The migration that adds the table, per backend (REAL is DOUBLE PRECISION on PostgreSQL).
JOURNAL_TABLE = """
    CREATE TABLE reservation_journal (
        id TEXT PRIMARY KEY, owner BIGINT NOT NULL, created_at {real} NOT NULL,
        key_name TEXT NOT NULL, trace_id TEXT, endpoint TEXT NOT NULL, model TEXT NOT NULL,
        streamed INTEGER NOT NULL, reserved {real} NOT NULL, prompt_estimate BIGINT NOT NULL
    );
    CREATE INDEX reservation_journal_owner ON reservation_journal (owner);
"""

# generations column <- journal expression, for the usage row of an interrupted request.
_RECOVERED = {
    "id": "id", "created_at": "created_at", "key_name": "key_name", "trace_id": "trace_id",
    "endpoint": "endpoint", "model": "model", "streamed": "streamed", "cancelled": "0",
    "status_code": str(INTERRUPTED_STATUS), "error_code": f"'{INTERRUPTED}'",
    "tokens_prompt": "prompt_estimate", "tokens_completion": "0", "tokens_cached": "0",
    "tokens_reasoning": "0", "tokens_cache_write": "0",
    "usage_source": f"'{INTERRUPTED_SOURCE}'", "cost": "reserved", "latency_ms": "0",
    "attempts": "'[]'",
}
RECOVERED_COLUMNS = ", ".join(_RECOVERED)
RECOVERED_VALUES = ", ".join(_RECOVERED.values())


def delete_statements(ids: Sequence[str]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """DELETEs of the journal rows of `ids`, each statement with one row of parameters:
    many ids a statement (one step, not one per id), in power-of-two sizes."""
    out: list[tuple[str, list[tuple[Any, ...]]]] = []
    start, size = 0, DELETE_MAX
    while start < len(ids):
        while size > len(ids) - start:
            size //= 2
        out.append((_delete_sql(size), [tuple(ids[start:start + size])]))
        start += size
    return out


@functools.lru_cache(maxsize=16)
def _delete_sql(count: int) -> str:
    return f"DELETE FROM reservation_journal WHERE id IN ({', '.join('?' * count)})"


def new_owner() -> int:
    """A random owner id, positive and within 31 bits (PostgreSQL's advisory lock key)."""
    return int.from_bytes(os.urandom(4), "big") % (2**31 - 2) + 1


def journal_params(owner: int, record: GenerationRecord, reserved: float,
                   prompt_estimate: int) -> tuple[object, ...]:
    return (str(record.id), owner, float(record.created_at), str(record.key_name),
            record.trace_id, str(record.endpoint), str(record.model), int(record.streamed),
            float(reserved), int(prompt_estimate))


# -- who is alive, on SQLite: a lock file per owner beside the database ------------------


def _live_file(db_path: Path, owner: int) -> Path:
    return db_path.with_name(f"{db_path.name}.live-{owner}")


class LiveLock:
    """Held while this owner runs; the kernel drops it when the process dies."""

    def __init__(self, db_path: Path, owner: int) -> None:
        self.path = _live_file(db_path, owner)
        self._fd: int | None = None

    def hold(self) -> None:
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


def owner_alive(db_path: Path, owner: int) -> bool:
    """Is `owner` a process still running on this database? A gone owner's lock file is
    removed on the way."""
    path = _live_file(db_path, owner)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        path.unlink()
    return False


def recover_sqlite(db: sqlite3.Connection, db_path: Path, owner: int) -> list[Interrupted]:
    """Turn the journal rows of gone owners into usage rows (one transaction); `db` is a
    plain autocommit connection to the database at `db_path`."""
    owners = {int(o) for (o,) in db.execute(
        "SELECT DISTINCT owner FROM reservation_journal WHERE owner != ?", (owner,))}
    for path in db_path.parent.glob(f"{glob.escape(db_path.name)}.live-*"):  # killed ones
        other = path.name.rpartition("-")[2]
        if other.isdigit() and int(other) != owner:
            owners.add(int(other))
    gone = [o for o in owners if not owner_alive(db_path, o)]
    if not gone:
        return []
    marks = ", ".join("?" * len(gone))
    pending = (f"FROM reservation_journal j WHERE owner IN ({marks}) AND NOT EXISTS "
               "(SELECT 1 FROM generations g WHERE g.id = j.id)")
    db.execute("BEGIN IMMEDIATE")
    try:
        found = db.execute(f"SELECT id, key_name, reserved {pending}", gone).fetchall()
        db.execute(f"INSERT INTO generations ({RECOVERED_COLUMNS}) "
                   f"SELECT {RECOVERED_VALUES} {pending}", gone)
        db.execute(f"DELETE FROM reservation_journal WHERE owner IN ({marks})", gone)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.rollback()
        raise
    return [Interrupted(str(i), str(k), float(c)) for i, k, c in found]


def log_recovered(found: Sequence[Interrupted]) -> None:
    if found:
        log.warning("charged %d request(s) interrupted by the end of an earlier process at "
                    "the amount they had reserved ($%.6f in all); their usage rows say "
                    "status_code 500, error_code interrupted",
                    len(found), sum(i.cost for i in found))
