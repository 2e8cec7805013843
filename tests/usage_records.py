"""Usage records for the storage tests of both backends (tests/unit/storage/)."""

from __future__ import annotations

from typing import Any

from anyrouter_proxy.types import Attempt, GenerationRecord, Usage


def make_record(n: int = 1, **overrides: Any) -> GenerationRecord:
    fields: dict[str, Any] = {
        "id": f"gen-{n}",
        "created_at": 1_714_564_800.25 + n,  # 2024-05-01T12:00:00.250Z + n s
        "key_name": "alice",
        "endpoint": "chat/completions",
        "model": "openai/gpt-4o-mini",
    }
    fields.update(overrides)
    return GenerationRecord(**fields)


def full_record() -> GenerationRecord:
    """Every field set to something other than its default."""
    return GenerationRecord(
        id="gen-full", created_at=1_714_564_800.25, key_name="bob", endpoint="messages",
        model="anthropic/claude-sonnet-4", trace_id="trace-1", provider="anthropic",
        upstream_model="claude-sonnet-4-20250514", upstream_id="msg_123", streamed=True,
        cancelled=True, finish_reason="length", status_code=499, error_code="client_gone",
        usage=Usage(prompt_tokens=11, completion_tokens=22, cached_tokens=3,
                    reasoning_tokens=4, cache_write_tokens=5, source="estimated"),
        cost=0.0123, latency_ms=1234.4, ttft_ms=56.6, generation_time_ms=1100.2,
        attempts=[Attempt("openai", 503, 12.34), Attempt("anthropic", "timeout", 30000.0)],
        operator_cost=0.0456,
    )


# The report's rows: two keys, three days, errors, a cancel, one without a provider.
DAY1 = 1_714_521_600.0  # 2024-05-01T00:00:00Z
DAY = 86_400.0


def rec(n: int, **fields: Any) -> GenerationRecord:
    base: dict[str, Any] = {
        "id": f"gen-{n}", "created_at": DAY1, "key_name": "alice",
        "endpoint": "chat/completions", "model": "openai/gpt-4o-mini", "provider": "openai",
    }
    base.update(fields)
    return GenerationRecord(**base)


RECORDS = [
    rec(1, created_at=DAY1 + 3600, cost=0.5, latency_ms=100.0,
        usage=Usage(prompt_tokens=100, completion_tokens=50)),
    rec(2, created_at=DAY1 + DAY + 60, cost=0.25, latency_ms=300.0, status_code=502,
        error_code="upstream_error", usage=Usage(prompt_tokens=10, completion_tokens=5)),
    rec(3, created_at=DAY1 + DAY + 7200, key_name="bob", model="anthropic/claude-sonnet-4",
        provider="anthropic", cost=2.0, latency_ms=1000.0, cancelled=True,
        usage=Usage(prompt_tokens=1000, completion_tokens=200, cached_tokens=10,
                    reasoning_tokens=5)),
    rec(4, created_at=DAY1 + 2 * DAY + 1, key_name="bob", provider=None, status_code=429,
        error_code="rate_limited", latency_ms=2.0),
]
