"""The items of stored responses by their id (table `response_items`, migration 7 of either
backend), so that an `item_reference` in a Responses request finds the item it names
with one indexed query, however long the conversation that holds it.

A stored response indexes the items it brought: the input items its own request sent
(not the earlier turns it continued with `previous_response_id`, nor the items it resolved
from references) and its output items. One row per key and id: an item brought again (a
client that sends the whole conversation each turn, an upstream that reuses ids) belongs
to the latest response that brought it, so the table grows with the items, not with the
turns. A row goes with its response: deleted with it, pruned with it by retention.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from ..config.model import KeyConfig

_TABLE = """
CREATE TABLE response_items (
    item_id TEXT NOT NULL, key_name TEXT NOT NULL, response_id TEXT NOT NULL,
    created_at {time} NOT NULL,  -- the response's, so that retention prunes both alike
    item TEXT NOT NULL,  -- JSON: the item as stored, encrypted reasoning too
    PRIMARY KEY (item_id, key_name)  -- item_id first: an admin key's lookup uses it too
);
CREATE INDEX response_items_response ON response_items (response_id);
CREATE INDEX response_items_created ON response_items (created_at);
"""
# Responses stored before this migration: their output items (what references name).
_BACKFILL_SQLITE = """
INSERT OR IGNORE INTO response_items (item_id, key_name, response_id, created_at, item)
SELECT json_extract(value, '$.id'), key_name, responses.id, created_at, value
FROM responses, json_each(responses.output_items)
WHERE json_type(value, '$.id') = 'text';
"""
_BACKFILL_POSTGRES = """
INSERT INTO response_items (item_id, key_name, response_id, created_at, item)
SELECT item ->> 'id', r.key_name, r.id, r.created_at, item::text
FROM responses r, json_array_elements(r.output_items::json) AS item
WHERE json_typeof(item -> 'id') = 'string'
ON CONFLICT DO NOTHING;
"""
RESPONSE_ITEMS_SQLITE = _TABLE.format(time="REAL") + _BACKFILL_SQLITE
RESPONSE_ITEMS_POSTGRES = _TABLE.format(time="DOUBLE PRECISION") + _BACKFILL_POSTGRES
_INSERT = "INSERT INTO response_items (item_id, key_name, response_id, created_at, item) VALUES "
# The newer response wins even when the writer runs a batch's statements grouped, not in
# the order they were queued.
_UPSERT = (" ON CONFLICT (item_id, key_name) DO UPDATE SET response_id = excluded.response_id,"
           " created_at = excluded.created_at, item = excluded.item"
           " WHERE excluded.created_at >= response_items.created_at")
DELETE_ITEMS = "DELETE FROM response_items WHERE response_id = ?"
IDS_PER_QUERY = 200  # placeholders of one lookup (well within both backends' limits)
ITEMS_PER_INSERT = 128  # rows of one INSERT: 640 parameters, within even an old SQLite's 999


def insert_statements(response_id: str, key_name: str, created_at: float,
                      items: Sequence[dict[str, Any]]) -> list[tuple[str, tuple[Any, ...]]]:
    """The upserts of a response's items (those with an id; of one id, the last): one
    statement for the usual few, so that they take one place in the writer's queue."""
    latest = {item["id"]: item for item in items
              if isinstance(item.get("id"), str) and item["id"]}
    rows = [(item_id, key_name, response_id, created_at, orjson.dumps(item).decode())
            for item_id, item in latest.items()]
    statements = []
    for start in range(0, len(rows), ITEMS_PER_INSERT):
        chunk = rows[start:start + ITEMS_PER_INSERT]
        statements.append((_INSERT + ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk)) + _UPSERT,
                           tuple(value for row in chunk for value in row)))
    return statements


def lookup_queries(ids: Sequence[str], key: KeyConfig) -> list[tuple[str, tuple[str, ...]]]:
    """The SELECTs that find the rows of `ids` that `key` may use (its own; every key's
    for an admin key), a bounded number of ids each."""
    queries = []
    for start in range(0, len(ids), IDS_PER_QUERY):
        chunk = tuple(ids[start:start + IDS_PER_QUERY])
        sql = ("SELECT item_id, key_name, created_at, item FROM response_items "
               f"WHERE item_id IN ({', '.join('?' * len(chunk))})")
        queries.append((sql, chunk) if key.admin else (sql + " AND key_name = ?",
                                                       (*chunk, key.name)))
    return queries


def pick_items(rows: Iterable[Any], key: KeyConfig) -> dict[str, dict[str, Any]]:
    """Per id, the item `key` uses: its own; for an admin key, else the newest of another
    key's (admin keys read every key's responses)."""
    best: dict[str, tuple[bool, float, str]] = {}
    for row in rows:
        rank = (row["key_name"] == key.name, float(row["created_at"]), row["item"])
        if row["item_id"] not in best or rank[:2] > best[row["item_id"]][:2]:
            best[row["item_id"]] = rank
    return {item_id: orjson.loads(rank[2]) for item_id, rank in best.items()}
