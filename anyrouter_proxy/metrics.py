"""Prometheus metrics (prometheus-client), one registry per app, label children cached.

Labels stay low-cardinality: endpoint, model, provider, key name, status class, outcome.
Never raw paths, ids or anything a client can invent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .types import GenerationRecord

# LLM latencies run from milliseconds (embeddings, cache hits) to minutes (long answers).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120,
                   300, 600)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("anyrouter_requests", "Proxied requests by outcome.",
                                ["endpoint", "model", "provider", "key", "status_class"],
                                registry=r)
        self.duration = Histogram("anyrouter_request_duration_seconds",
                                  "Proxied request duration, end to end.",
                                  ["endpoint", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("anyrouter_time_to_first_token_seconds",
                              "Time to the first streamed event.", ["model", "provider"],
                              buckets=TTFT_BUCKETS, registry=r)
        self.attempts = Histogram("anyrouter_upstream_attempt_duration_seconds",
                                  "One upstream attempt, by provider and outcome.",
                                  ["provider", "outcome"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("anyrouter_tokens", "Tokens by direction.",
                              ["model", "provider", "key", "direction"], registry=r)
        self.cost = Counter("anyrouter_cost_usd", "Cost in USD.", ["model", "key"], registry=r)
        self.rejections = Counter("anyrouter_rejections", "Requests refused by a limit.",
                                  ["key", "reason"], registry=r)
        self.in_flight = Gauge("anyrouter_in_flight_requests", "Proxied requests in flight.",
                               registry=r)
        self.streams = Gauge("anyrouter_in_flight_streams", "Streams in flight.", registry=r)
        self.circuit = Gauge("anyrouter_circuit_state",
                             "Circuit breaker per provider: 0 closed, 1 half-open, 2 open.",
                             ["provider"], registry=r)
        self.queue_depth = Gauge("anyrouter_usage_queue_depth",
                                 "Usage rows waiting for the writer.", registry=r)
        self.dropped = Gauge("anyrouter_usage_rows_dropped",
                             "Usage rows dropped because the queue was full (since start).",
                             registry=r)
        self.dropped_by_kind = Counter("anyrouter_usage_rows_dropped_by_kind",
                                       "Rows of the usage log dropped (queue full, closed, or "
                                       "unstorable), by kind: billing (usage rows) or audit.",
                                       ["kind"], registry=r)
        self._dropped_seen: dict[str, int] = {}
        self.reloads = Counter("anyrouter_config_reloads", "Config reloads by result.",
                               ["result"], registry=r)
        self.config_loaded = Gauge("anyrouter_config_loaded_timestamp_seconds",
                                   "When the config in force was loaded.", registry=r)
        self.config_loaded.set(time.time())
        self.state_fallbacks = Gauge("anyrouter_state_fallbacks",
                                     "Requests whose limits or credits were handled in this "
                                     "process because the shared state (Redis) was "
                                     "unreachable, since start.", ["kind"], registry=r)
        self.state_available = Gauge("anyrouter_state_available",
                                     "1 when the shared state backend answers (always 1 for "
                                     "memory).", registry=r)
        self.credits_remaining = Gauge("anyrouter_key_credits_remaining_usd",
                                       "Credit left per key with credits (USD), at scrape "
                                       "time.", ["key"], registry=r)
        self.budget_remaining = Gauge("anyrouter_key_budget_remaining_usd",
                                      "Budget left in the current period per key with a "
                                      "budget (USD), at scrape time.", ["key"], registry=r)
        self.overspend = Counter("anyrouter_overspend_usd",
                                 "USD charged beyond what was reserved, because a provider "
                                 "reported more usage than the request's cap allowed.",
                                 ["key"], registry=r)
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, rec: GenerationRecord) -> None:
        provider = rec.provider or "none"
        status_class = f"{rec.status_code // 100}xx"
        model = rec.wildcard or rec.model  # a wildcard's ids count under the wildcard
        self._child(self.requests, rec.endpoint, model, provider, rec.key_name,
                    status_class).inc()
        if not rec.attempts:  # refused before routing: counted, but no latency to speak of
            return
        self._child(self.duration, rec.endpoint, model).observe(rec.latency_ms / 1000)
        if rec.ttft_ms is not None:
            self._child(self.ttft, model, provider).observe(rec.ttft_ms / 1000)
        for attempt in rec.attempts:
            outcome = "ok" if attempt.status == 200 else str(attempt.status)
            self._child(self.attempts, attempt.provider, outcome).observe(
                attempt.latency_ms / 1000)
        usage = rec.usage
        for direction, count in (("prompt", usage.prompt_tokens),
                                 ("completion", usage.completion_tokens),
                                 ("cached", usage.cached_tokens),
                                 ("reasoning", usage.reasoning_tokens)):
            if count:
                self._child(self.tokens, model, provider, rec.key_name, direction).inc(count)
        if rec.cost:
            self._child(self.cost, model, rec.key_name).inc(rec.cost)

    def dropped_rows(self, by_kind: Mapping[str, int]) -> None:
        """Bring the dropped-rows counter up to the store's counts (at scrape time)."""
        for kind, count in by_kind.items():
            seen = self._dropped_seen.get(kind)
            if seen is None or count > seen:
                self._child(self.dropped_by_kind, kind).inc(count - (seen or 0))
                self._dropped_seen[kind] = count

    def overspent(self, key_name: str, usd: float) -> None:
        self._child(self.overspend, key_name).inc(usd)

    def rejected(self, key_name: str, reason: str) -> None:
        self._child(self.rejections, key_name, reason).inc()

    def render(self, refresh: Callable[[], None] | None = None) -> bytes:
        if refresh is not None:
            refresh()
        return generate_latest(self.registry)
