"""Stored responses (table `responses`, migration 5 of either backend): the proxy's own
conversation state for POST /responses with `store` (the default), written through the
store's single writer, on SQLite or PostgreSQL alike.

A row keeps every input item the model read (earlier turns included, so that a
continuation is one row away however long the conversation), the whole output (encrypted
reasoning included), and the response object as its client got it. A row is queued
before its answer goes out, and reads let the writer catch up first, so a response is
readable (and continuable) as soon as its client has it. The items it brought are also
indexed by id (response_items.py), for `item_reference` input items.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import orjson

from ..config.model import KeyConfig
from .response_items import DELETE_ITEMS, insert_statements, lookup_queries, pick_items
from .store import Store

READ_WAIT_S = 2.0  # how long a read waits for the writer before it says "not found"
_COLUMNS = """
        id TEXT PRIMARY KEY, key_name TEXT NOT NULL, created_at {time} NOT NULL,
        input_items TEXT NOT NULL,  -- JSON list: every item the model read, earlier turns too
        output_items TEXT NOT NULL,  -- JSON list: the whole output, encrypted reasoning too
        response TEXT NOT NULL  -- JSON: the response object as its client got it
"""
_TABLE = "CREATE TABLE responses ({columns});\n" \
    "CREATE INDEX responses_created ON responses (created_at);"
RESPONSES_SQLITE = _TABLE.format(columns=_COLUMNS.format(time="REAL"))
RESPONSES_POSTGRES = _TABLE.format(columns=_COLUMNS.format(time="DOUBLE PRECISION"))
_INSERT = ("INSERT INTO responses (id, key_name, created_at, input_items, output_items, "
           "response) VALUES (?, ?, ?, ?, ?, ?)")
_SELECT = "SELECT * FROM responses WHERE id = ?"
_DELETE = "DELETE FROM responses WHERE id = ?"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    key_name: str
    created_at: float
    input_items: list[dict[str, Any]]
    output_items: list[dict[str, Any]]
    response: dict[str, Any]

    @property
    def conversation(self) -> list[dict[str, Any]]:
        """What a response that continues this one reads before its own input."""
        return [*self.input_items, *self.output_items]


class ResponseStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    def keep(self, response_id: str, key_name: str, input_items: list[dict[str, Any]],
             output_items: list[dict[str, Any]], response: dict[str, Any], *,
             new_items: list[dict[str, Any]]) -> None:
        """Queue a response (never awaits; not dropped when the queue is full).
        `new_items`: the input items its own request brought (indexed with its output)."""
        created = time.time()
        enqueue = self.store.enqueue
        enqueue(_INSERT, (
            response_id, key_name, created, orjson.dumps(input_items).decode(),
            orjson.dumps(output_items).decode(), orjson.dumps(response).decode()),
            bounded=False)
        for sql, params in insert_statements(response_id, key_name, created,
                                             [*new_items, *output_items]):
            enqueue(sql, params, bounded=False)

    async def items(self, ids: list[str], key: KeyConfig) -> dict[str, dict[str, Any]]:
        """The stored items of `ids` that `key` may use (its own; any key's for an admin
        key), by id; ids not found are absent."""
        ids = list(dict.fromkeys(ids))
        found = await self._items(ids, key)
        if len(found) < len(ids):
            # An item of a response just answered may still be in the writer's queue.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.store.flush(), READ_WAIT_S)
            found = await self._items(ids, key)
        return found

    async def _items(self, ids: list[str], key: KeyConfig) -> dict[str, dict[str, Any]]:
        rows = [row for sql, params in lookup_queries(ids, key)
                for row in await self.store.fetch(sql, params)]
        return pick_items(rows, key)

    async def get(self, response_id: str, key: KeyConfig) -> StoredResponse | None:
        """The response if `key` may read it (its own, or any for an admin key)."""
        row = await self._fetch(response_id)
        if row is None:
            # Just answered, maybe still in the writer's queue: let it catch up (bounded).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.store.flush(), READ_WAIT_S)
            row = await self._fetch(response_id)
        if row is None or (row["key_name"] != key.name and not key.admin):
            return None
        return StoredResponse(row["id"], row["key_name"], float(row["created_at"]),
                              orjson.loads(row["input_items"]),
                              orjson.loads(row["output_items"]),
                              orjson.loads(row["response"]))

    async def delete(self, response_id: str) -> None:
        """Delete a response; returns once the deletion is written (a continuation that
        follows finds it gone)."""
        self.store.enqueue(_DELETE, (response_id,), bounded=False)
        self.store.enqueue(DELETE_ITEMS, (response_id,), bounded=False)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.store.flush(), READ_WAIT_S)

    async def _fetch(self, response_id: str) -> Any:
        rows = await self.store.fetch(_SELECT, (response_id,))
        return rows[0] if rows else None
