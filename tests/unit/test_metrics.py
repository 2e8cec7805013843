"""The per-request series are exposed exactly as prometheus-client's own Counter and
Histogram would expose the same observations (names, labels, buckets, sums, _created)."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from anyrouter_proxy.metrics import LATENCY_BUCKETS, TTFT_BUCKETS, Metrics
from anyrouter_proxy.types import Attempt, GenerationRecord, Usage

# (latency ms, ttft ms or None, status): values on bucket bounds, between, above the last
CASES = [(5.0, None, 200), (10.0, 10.0, 200), (12.5, 4.0, 200), (100.0, 25.0, 502),
         (600_000.0, 120_000.0, 200), (900_000.0, 250.0, 200), (0.1, 0.01, 429)]


def record(i: int, latency_ms: float, ttft_ms: float | None, status: int) -> GenerationRecord:
    rec = GenerationRecord(id=f"gen-{i}", created_at=0.0, key_name="alice", endpoint="chat",
                           model="openai/gpt-4o-mini", trace_id=None, streamed=ttft_ms is not None)
    rec.provider, rec.status_code = "openai", status
    rec.latency_ms, rec.ttft_ms = latency_ms, ttft_ms
    rec.attempts = [Attempt("openai", 200 if status == 200 else status, latency_ms)]
    rec.usage = Usage(prompt_tokens=10 + i, completion_tokens=i, reasoning_tokens=3 * (i % 2))
    rec.cost = 0.001 * i
    return rec


def reference(records: list[GenerationRecord]) -> bytes:
    """The same observations through prometheus-client's collectors."""
    r = CollectorRegistry()
    requests = Counter("anyrouter_requests", "Proxied requests by outcome.",
                       ["endpoint", "model", "provider", "key", "status_class"], registry=r)
    duration = Histogram("anyrouter_request_duration_seconds",
                         "Proxied request duration, end to end.", ["endpoint", "model"],
                         buckets=LATENCY_BUCKETS, registry=r)
    ttft = Histogram("anyrouter_time_to_first_token_seconds", "Time to the first streamed event.",
                     ["model", "provider"], buckets=TTFT_BUCKETS, registry=r)
    attempts = Histogram("anyrouter_upstream_attempt_duration_seconds",
                         "One upstream attempt, by provider and outcome.",
                         ["provider", "outcome"], buckets=LATENCY_BUCKETS, registry=r)
    tokens = Counter("anyrouter_tokens", "Tokens by direction.",
                     ["model", "provider", "key", "direction"], registry=r)
    cost = Counter("anyrouter_cost_usd", "Cost in USD.", ["model", "key"], registry=r)
    for rec in records:
        assert rec.provider is not None
        requests.labels(rec.endpoint, rec.model, rec.provider, rec.key_name,
                        f"{rec.status_code // 100}xx").inc()
        duration.labels(rec.endpoint, rec.model).observe(rec.latency_ms / 1000)
        if rec.ttft_ms is not None:
            ttft.labels(rec.model, rec.provider).observe(rec.ttft_ms / 1000)
        for attempt in rec.attempts:
            outcome = "ok" if attempt.status == 200 else str(attempt.status)
            attempts.labels(attempt.provider, outcome).observe(attempt.latency_ms / 1000)
        for direction, count in (("prompt", rec.usage.prompt_tokens),
                                 ("completion", rec.usage.completion_tokens),
                                 ("reasoning", rec.usage.reasoning_tokens)):
            if count:
                tokens.labels(rec.model, rec.provider, rec.key_name, direction).inc(count)
        if rec.cost:
            cost.labels(rec.model, rec.key_name).inc(rec.cost)
    return generate_latest(r)


def samples(text: bytes, names: set[str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        if family.name in names:
            for s in family.samples:
                value = 0.0 if s.name.endswith("_created") else s.value  # when, not what
                out[(s.name, tuple(sorted(s.labels.items())))] = value
    return out


def test_series_match_prometheus_client() -> None:
    records = [record(i, *case) for i, case in enumerate(CASES)]
    metrics = Metrics()
    for rec in records:
        metrics.observe(rec)
    ours, theirs = metrics.render(), reference(records)
    names = {"anyrouter_requests", "anyrouter_request_duration_seconds",
             "anyrouter_time_to_first_token_seconds",
             "anyrouter_upstream_attempt_duration_seconds", "anyrouter_tokens",
             "anyrouter_cost_usd"}
    expected = samples(theirs, names)
    assert len(expected) > 100
    assert samples(ours, names) == expected
    helps = set(re.findall(rb"^# (?:HELP|TYPE) anyrouter_\S+ .*$", theirs, re.M))
    assert helps <= set(re.findall(rb"^# (?:HELP|TYPE) anyrouter_\S+ .*$", ours, re.M))


def test_in_flight_gauges() -> None:
    metrics = Metrics()
    metrics.series.in_flight += 2
    metrics.series.streams += 1
    found = samples(metrics.render(), {"anyrouter_in_flight_requests",
                                       "anyrouter_in_flight_streams"})
    assert found == {("anyrouter_in_flight_requests", ()): 2.0,
                     ("anyrouter_in_flight_streams", ()): 1.0}
