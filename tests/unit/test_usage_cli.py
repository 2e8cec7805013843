"""`anyrouter-proxy usage` flags: --key, --model, --provider filters, --by month and
two-way breakdowns, plain decimal costs (in process, over a log the real store wrote)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import pytest

from anyrouter_proxy.cli import main
from anyrouter_proxy.storage.sqlite import SqliteStore
from anyrouter_proxy.types import GenerationRecord, Usage

MAY_1 = 1_714_521_600.0  # 2024-05-01T00:00:00Z
DAY = 86_400.0


def rec(n: int, key: str, model: str, provider: str | None, at: float,
        cost: float) -> GenerationRecord:
    return GenerationRecord(id=f"gen-{n}", created_at=at, key_name=key, endpoint="chat",
                            model=model, provider=provider, cost=cost, latency_ms=100.0,
                            usage=Usage(prompt_tokens=10, completion_tokens=5))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "usage.db"
    records = [
        rec(1, "alice", "openai/gpt-4o-mini", "openai", MAY_1 + 60, 8.709e-05),
        rec(2, "alice", "anthropic/claude", "anthropic", MAY_1 + 40 * DAY, 0.5),
        rec(3, "bob", "openai/gpt-4o-mini", "azure", MAY_1 + 41 * DAY, 1.25),
        rec(4, "bob", "openai/gpt-4o-mini", "openai", MAY_1 + 2 * DAY, 2e-07),
    ]

    async def write() -> None:
        store = SqliteStore(path)
        await store.open()
        for record in records:
            assert store.record(record)
        await store.close()

    asyncio.run(write())
    return path


def usage(capsys: pytest.CaptureFixture[str], db: Path, *args: str) -> str:
    assert main(["usage", "--db", str(db), *args]) == 0
    return capsys.readouterr().out


def test_filters(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = json.loads(usage(capsys, db, "--key", "alice", "--by", "provider",
                            "--format", "json"))
    assert [(r["provider"], r["requests"]) for r in rows] == [("anthropic", 1), ("openai", 1)]
    rows = json.loads(usage(capsys, db, "--model", "openai/gpt-4o-mini", "--provider",
                            "openai", "--by", "key", "--format", "json"))
    assert [(r["key"], r["requests"]) for r in rows] == [("alice", 1), ("bob", 1)]


def test_by_month_and_key(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = usage(capsys, db, "--by", "month,key", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["month"], r["key"], r["requests"], r["cost"]) for r in rows] == [
        ("2024-05", "alice", "1", "0.00008709"), ("2024-05", "bob", "1", "0.0000002"),
        ("2024-06", "bob", "1", "1.25"), ("2024-06", "alice", "1", "0.5")]
    assert "e-0" not in out


def test_json_costs_are_plain_decimals(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = usage(capsys, db, "--by", "key,model", "--format", "json")
    assert "e-0" not in out and '"cost": 0.00008709' in out
    rows = json.loads(out)
    assert {(r["key"], r["model"]): r["cost"] for r in rows}[
        ("bob", "openai/gpt-4o-mini")] == 1.2500002


def test_table_two_groups_with_total(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = usage(capsys, db, "--by", "key,provider", "--since", "2024-06-01").splitlines()
    assert lines[0].split()[:3] == ["key", "provider", "requests"]
    assert [line.split()[:3] for line in lines[1:-1]] == [
        ["bob", "azure", "1"], ["alice", "anthropic", "1"]]
    assert lines[-1].split()[:2] == ["TOTAL", "2"]


def test_bad_group_is_an_error(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["usage", "--db", str(db), "--by", "day,month"]) == 1
    assert "cannot group by 'day,month'" in capsys.readouterr().err
