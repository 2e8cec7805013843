"""The `Store` that `storage.backend` names, built from the storage section."""

from __future__ import annotations

from ..config.model import StorageConfig
from .sqlite import SqliteStore
from .store import Store


def build_store(storage: StorageConfig) -> Store:
    if storage.backend == "postgres":  # imported only when used: start-up time
        from .postgres import PostgresStore

        return PostgresStore(storage.dsn or "", queue_max=storage.queue_max,
                             flush_interval_s=storage.flush_interval_s,
                             audit_queue_max=storage.audit_queue_max)
    return SqliteStore(storage.sqlite_path, queue_max=storage.queue_max,
                       flush_interval_s=storage.flush_interval_s,
                       audit_queue_max=storage.audit_queue_max)
