"""`anyrouter-proxy usage` report over a usage log written by the real SqliteStore."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest

from anyrouter_proxy.storage.activity import Filters
from anyrouter_proxy.storage.report import (
    GROUPS,
    build_report,
    format_report,
    parse_time,
    plain_decimal,
)
from anyrouter_proxy.storage.sqlite import SqliteStore
from anyrouter_proxy.types import GenerationRecord
from tests.usage_records import DAY, DAY1, RECORDS, rec


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "usage.db"

    async def write() -> None:
        store = SqliteStore(path)
        await store.open()
        for record in RECORDS:
            assert store.record(record)
        await store.close()

    asyncio.run(write())
    return path


def test_by_model(db_path: Path) -> None:
    assert build_report(db_path) == [
        {"model": "anthropic/claude-sonnet-4", "requests": 1, "errors": 0, "cancelled": 1,
         "tokens_prompt": 1000, "tokens_completion": 200, "tokens_cached": 10,
         "tokens_reasoning": 5, "cost": 2.0, "avg_latency_ms": 1000.0},
        {"model": "openai/gpt-4o-mini", "requests": 3, "errors": 2, "cancelled": 0,
         "tokens_prompt": 110, "tokens_completion": 55, "tokens_cached": 0,
         "tokens_reasoning": 0, "cost": 0.75, "avg_latency_ms": 134.0},
    ]


def test_errors_are_status_400_and_up(tmp_path: Path) -> None:
    path = tmp_path / "e.db"

    async def write() -> None:
        store = SqliteStore(path)
        await store.open()
        for n, status in enumerate((200, 399, 400, 404)):
            store.record(rec(n, status_code=status))
        await store.close()

    asyncio.run(write())
    assert [(r["requests"], r["errors"]) for r in build_report(path)] == [(4, 2)]


def test_by_key_ordered_by_cost(db_path: Path) -> None:
    report = build_report(db_path, by="key")
    assert [(r["key"], r["requests"], r["cost"]) for r in report] == [
        ("bob", 2, 2.0), ("alice", 2, 0.75)]


def test_by_provider_keeps_requests_without_one(db_path: Path) -> None:
    report = build_report(db_path, by="provider")
    assert [(r["provider"], r["requests"]) for r in report] == [
        ("anthropic", 1), ("openai", 2), (None, 1)]


def test_by_day_in_date_order(db_path: Path) -> None:
    report = build_report(db_path, by="day")
    assert [(r["day"], r["requests"], r["cost"]) for r in report] == [
        ("2024-05-01", 1, 0.5), ("2024-05-02", 2, 2.25), ("2024-05-03", 1, 0.0)]


def test_since_is_inclusive_until_exclusive(db_path: Path) -> None:
    report = build_report(db_path, by="day", since=DAY1 + DAY, until=DAY1 + 2 * DAY + 1)
    assert [r["day"] for r in report] == ["2024-05-02"]
    assert build_report(db_path, since=DAY1 + 10 * DAY) == []


def test_since_until_from_dates_cover_whole_days(db_path: Path) -> None:
    since, until = parse_time("2024-05-02"), parse_time("2024-05-02", end=True)
    report = build_report(db_path, by="key", since=since, until=until)
    assert [(r["key"], r["requests"]) for r in report] == [("bob", 1), ("alice", 1)]


def test_unknown_group_is_refused(db_path: Path) -> None:
    with pytest.raises(ValueError, match="key, model, provider, day"):
        build_report(db_path, by="color")
    assert GROUPS == ("key", "model", "provider", "day", "month")
    for by in ("key,key", "day,month", "key,model,provider", "key,"):
        with pytest.raises(ValueError, match="cannot group by"):
            build_report(db_path, by=by)


def test_missing_database(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="usage database not found"):
        build_report(tmp_path / "nope.db")
    assert not (tmp_path / "nope.db").exists()  # read-only: nothing created


def test_not_a_usage_database(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x)")
    db.close()
    with pytest.raises(ValueError, match="no such table: generations"):
        build_report(path)
    path.write_bytes(b"garbage" * 500)
    with pytest.raises(ValueError, match="not a database"):
        build_report(path)


async def test_report_reads_while_the_server_writes(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "live.db")
    await store.open()
    try:
        store.record(RECORDS[0])
        await store.flush()  # committed to the WAL, not yet checkpointed into the file
        assert [r["requests"] for r in build_report(store.path)] == [1]
        store.record(RECORDS[2])
        await store.flush()
        assert [r["requests"] for r in build_report(store.path, by="key")] == [1, 1]
    finally:
        await store.close()


def test_report_never_writes(db_path: Path) -> None:
    before = db_path.read_bytes()
    build_report(db_path, by="day")
    assert db_path.read_bytes() == before


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-05-01", DAY1),
    ("2024-05-01T06:30", DAY1 + 6.5 * 3600),
    ("2024-05-01 06:30:00Z", DAY1 + 6.5 * 3600),
    ("2024-05-01T08:30:00+02:00", DAY1 + 6.5 * 3600),
])
def test_parse_time(text: str, expected: float) -> None:
    assert parse_time(text) == expected


def test_parse_time_end_of_day() -> None:
    assert parse_time("2024-05-01", end=True) == DAY1 + DAY
    assert parse_time("2024-05-01T06:00", end=True) == DAY1 + 6 * 3600  # only bare dates


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01", "01/05/2024", ""])
def test_parse_time_rejects_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match="ISO date or date-time"):
        parse_time(text)


def test_format_table_aligned_with_total(db_path: Path) -> None:
    out = format_report(build_report(db_path), by="model", fmt="table")
    lines = out.splitlines()
    assert lines[0].split() == ["model", "requests", "errors", "cancelled", "prompt",
                                "completion", "cached", "reasoning", "cost_usd", "avg_ms"]
    assert lines[1].split() == ["anthropic/claude-sonnet-4", "1", "0", "1", "1000", "200",
                                "10", "5", "2.000000", "1000.0"]
    # Total latency is weighted by requests: (1000 + 3 * 134) / 4.
    assert lines[-1].split() == ["TOTAL", "4", "2", "1", "1110", "255", "10", "5",
                                 "2.750000", "350.5"]
    assert len({len(line) for line in lines}) == 1  # every column lines up
    assert lines[0].index("avg_ms") + len("avg_ms") == len(lines[0])


def test_format_table_shows_missing_provider_as_dash(db_path: Path) -> None:
    out = format_report(build_report(db_path, by="provider"), by="provider", fmt="table")
    assert out.splitlines()[3].split()[:2] == ["-", "1"]


def test_format_table_empty_has_zero_total() -> None:
    out = format_report([], by="day", fmt="table")
    assert out.splitlines()[-1].split() == ["TOTAL", "0", "0", "0", "0", "0", "0", "0",
                                            "0.000000", "0.0"]


def test_format_csv(db_path: Path) -> None:
    out = format_report(build_report(db_path, by="day"), by="day", fmt="csv")
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert list(parsed[0]) == ["day", "requests", "errors", "cancelled", "tokens_prompt",
                               "tokens_completion", "tokens_cached", "tokens_reasoning",
                               "cost", "avg_latency_ms"]
    assert [(r["day"], r["requests"], r["cost"]) for r in parsed] == [
        ("2024-05-01", "1", "0.5"), ("2024-05-02", "2", "2.25"), ("2024-05-03", "1", "0.0")]


def test_format_json_round_trips(db_path: Path) -> None:
    report = build_report(db_path, by="key")
    assert json.loads(format_report(report, by="key", fmt="json")) == report


def test_format_unknown_is_refused() -> None:
    with pytest.raises(ValueError, match="table, csv, json"):
        format_report([], by="key", fmt="xml")


# -- filters, months, two-way breakdowns, plain decimals ----------------------------------


def test_filters_by_key_model_and_provider(db_path: Path) -> None:
    by_key = build_report(db_path, by="model", filters=Filters(key="bob"))
    assert [(r["model"], r["requests"]) for r in by_key] == [
        ("anthropic/claude-sonnet-4", 1), ("openai/gpt-4o-mini", 1)]
    by_model = build_report(db_path, by="key", filters=Filters(model="openai/gpt-4o-mini"))
    assert [(r["key"], r["requests"]) for r in by_model] == [("alice", 2), ("bob", 1)]
    by_provider = build_report(db_path, by="day", filters=Filters(provider="openai"))
    assert [(r["day"], r["requests"]) for r in by_provider] == [
        ("2024-05-01", 1), ("2024-05-02", 1)]
    both = build_report(db_path, filters=Filters(key="alice", provider="anthropic"))
    assert both == []


def test_by_month(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    june = DAY1 + 31 * DAY  # 2024-06-01
    write(path, [rec(1, cost=1.0), rec(2, created_at=DAY1 + 30 * DAY + 86399, cost=2.0),
                 rec(3, created_at=june, cost=4.0, latency_ms=10.0)])
    report = build_report(path, by="month")
    assert [(r["month"], r["requests"], r["cost"]) for r in report] == [
        ("2024-05", 2, 3.0), ("2024-06", 1, 4.0)]
    assert report[1]["avg_latency_ms"] == 10.0


def test_two_way_breakdown(db_path: Path) -> None:
    report = build_report(db_path, by="key,model")
    assert [(r["key"], r["model"], r["requests"], r["cost"]) for r in report] == [
        ("bob", "anthropic/claude-sonnet-4", 1, 2.0),
        ("alice", "openai/gpt-4o-mini", 2, 0.75),
        ("bob", "openai/gpt-4o-mini", 1, 0.0)]
    by_day = build_report(db_path, by="day,provider")
    assert [(r["day"], r["provider"]) for r in by_day] == [
        ("2024-05-01", "openai"), ("2024-05-02", "anthropic"), ("2024-05-02", "openai"),
        ("2024-05-03", None)]
    table = format_report(report, by="key,model", fmt="table").splitlines()
    assert table[0].split()[:3] == ["key", "model", "requests"]
    assert table[1].split()[:3] == ["bob", "anthropic/claude-sonnet-4", "1"]
    assert table[-1].split()[:2] == ["TOTAL", "4"]
    assert len({len(line) for line in table}) == 1
    rows = list(csv.DictReader(io.StringIO(format_report(report, by="key,model", fmt="csv"))))
    assert list(rows[0])[:3] == ["key", "model", "requests"]


def test_costs_in_plain_decimals_in_csv_and_json(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    write(path, [rec(1, cost=8.709e-05), rec(2, model="m/tiny", cost=1e-10),
                 rec(3, model="m/big", cost=12.5)])
    report = build_report(path)
    for fmt in ("csv", "json"):
        out = format_report(report, by="model", fmt=fmt)
        assert "e-" not in out and "E-" not in out
        assert "0.00008709" in out and "0.0000000001" in out and "12.5" in out
    assert json.loads(format_report(report, by="model", fmt="json")) == report
    assert plain_decimal(0.0) == "0.0" and plain_decimal(2.0) == "2.0"
    assert plain_decimal(1.5e-07) == "0.00000015"


def write(path: Path, records: list[GenerationRecord]) -> None:
    async def run() -> None:
        store = SqliteStore(path)
        await store.open()
        for record in records:
            assert store.record(record)
        await store.close()

    asyncio.run(run())
