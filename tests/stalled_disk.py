"""A stalled disk for a proxy's SQLite usage database, for the tests of what the usage
log does while it cannot write."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def locked(db_path: Path) -> Iterator[sqlite3.Connection]:
    """An exclusive write lock on the database, held by another connection: the proxy's
    writer waits its busy timeout, then fails with "database is locked" (a stalled disk)."""
    db = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    try:
        db.execute("BEGIN EXCLUSIVE")
        yield db
    finally:
        db.rollback()
        db.close()
