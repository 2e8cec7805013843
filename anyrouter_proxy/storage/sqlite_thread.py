"""A plain sqlite3 connection that lives on a thread of its own, for the usage writer.

Every call into aiosqlite is a round trip: the request goes to its thread, the answer
comes back through the event loop. At saturation the loop takes tens of milliseconds to
come round, so a batch of ~20 statements took ~800 ms and the writer fell behind the
queue at 3,000 requests/s (rows dropped). Here a whole transaction is one function run on
the thread: one round trip per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class ThreadConnection:
    def __init__(self, executor: ThreadPoolExecutor, db: sqlite3.Connection) -> None:
        self._executor = executor
        self._db = db

    @classmethod
    async def open(cls, path: Path, busy_timeout_s: float) -> ThreadConnection:
        """Connect on the thread (sqlite3 connections stay on the thread that made them)."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-writer")

        def connect() -> sqlite3.Connection:
            db = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_s)
            try:
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")  # WAL keeps it safe on crash
            except BaseException:
                db.close()
                raise
            return db

        try:
            db = await asyncio.get_running_loop().run_in_executor(executor, connect)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, db)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(connection)` on the connection's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, self._db)

    async def transaction(self, fn: Callable[[sqlite3.Connection], None]) -> None:
        """`fn` inside BEGIN IMMEDIATE ... COMMIT, rolled back if it raises."""
        def run(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                fn(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):  # keep the original error
                        db.rollback()
                raise

        await self.run(run)

    async def close(self) -> None:
        # Queued behind a write still running on the thread, which finishes first.
        try:
            await self.run(sqlite3.Connection.close)
        finally:
            self._executor.shutdown(wait=False)
