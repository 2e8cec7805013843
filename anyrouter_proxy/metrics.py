"""Prometheus metrics, one registry per app.

The per-request series (requests, latencies, tokens, cost, in-flight gauges) are plain
dicts and ints added to on the event loop and turned into metric families only when
/metrics is scraped: prometheus-client takes a lock on every increment and walks the
buckets in Python on every observation, which cost a few percent of a request. The rare
ones (reloads, rejections, scrape-time gauges) stay prometheus-client collectors.

Labels stay low-cardinality: endpoint, model, provider, key name, status class, outcome.
Never raw paths, ids or anything a client can invent.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from .types import GenerationRecord

# LLM latencies run from milliseconds (embeddings, cache hits) to minutes (long answers).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120,
                   300, 600)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)

Labels = tuple[str, ...]
_le: Callable[[float], str] = floatToGoString  # a bound as prometheus-client writes `le`


def _created_series() -> bool:
    """prometheus-client's own switch (PROMETHEUS_DISABLE_CREATED_SERIES)."""
    return bool(getattr(prometheus_metrics, "_use_created", True))


class Tally:
    """A labelled counter: exposed as prometheus-client exposes a Counter (`_total`,
    `_created` when the series first counted)."""

    __slots__ = ("created", "doc", "labelnames", "name", "values")

    def __init__(self, name: str, doc: str, labelnames: Labels) -> None:
        self.name, self.doc, self.labelnames = name, doc, labelnames
        self.values: dict[Labels, float] = {}
        self.created: dict[Labels, float] = {}

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        values = self.values
        if labels in values:
            values[labels] += amount
        else:
            values[labels] = float(amount)
            self.created[labels] = time.time()

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        created = self.created if _created_series() else {}
        for labels, value in self.values.items():
            family.add_metric(labels, value, created=created.get(labels))
        return family


class Spread:
    """A labelled histogram: a count per bucket and the sum, cumulated at scrape time into
    what prometheus-client's Histogram exposes (`_bucket`, `_count`, `_sum`, `_created`)."""

    __slots__ = ("bounds", "created", "doc", "labelnames", "les", "name", "series")

    def __init__(self, name: str, doc: str, labelnames: Labels,
                 buckets: tuple[float, ...]) -> None:
        self.name, self.doc, self.labelnames = name, doc, labelnames
        self.bounds = tuple(float(b) for b in buckets)
        self.les = [_le(b) for b in self.bounds] + ["+Inf"]
        self.series: dict[Labels, list[float]] = {}  # per bucket (not cumulated), then sum
        self.created: dict[Labels, float] = {}

    def observe(self, labels: Labels, value: float) -> None:
        counts = self.series.get(labels)
        if counts is None:
            counts = self.series[labels] = [0.0] * (len(self.bounds) + 2)
            self.created[labels] = time.time()
        counts[bisect_left(self.bounds, value)] += 1  # the first bound >= value, as `le`
        counts[-1] += value

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        with_created = _created_series()
        for labels, counts in self.series.items():
            cumulated, total = [], 0.0
            for le, count in zip(self.les, counts, strict=False):
                total += count
                cumulated.append((le, total))
            family.add_metric(labels, cumulated, counts[-1])
            if with_created:
                family.samples.append(Sample(self.name + "_created",
                                             dict(zip(self.labelnames, labels, strict=True)),
                                             self.created[labels], None, None))
        return family


class RequestSeries:
    """The series every proxied request adds to, as one collector of the registry."""

    def __init__(self) -> None:
        self.requests = Tally("anyrouter_requests", "Proxied requests by outcome.",
                              ("endpoint", "model", "provider", "key", "status_class"))
        self.duration = Spread("anyrouter_request_duration_seconds",
                               "Proxied request duration, end to end.", ("endpoint", "model"),
                               LATENCY_BUCKETS)
        self.ttft = Spread("anyrouter_time_to_first_token_seconds",
                           "Time to the first streamed event.", ("model", "provider"),
                           TTFT_BUCKETS)
        self.attempts = Spread("anyrouter_upstream_attempt_duration_seconds",
                               "One upstream attempt, by provider and outcome.",
                               ("provider", "outcome"), LATENCY_BUCKETS)
        self.tokens = Tally("anyrouter_tokens", "Tokens by direction.",
                            ("model", "provider", "key", "direction"))
        self.cost = Tally("anyrouter_cost_usd", "Cost in USD.", ("model", "key"))
        self.in_flight = 0
        self.streams = 0

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.requests.name, self.requests.doc),
                HistogramMetricFamily(self.duration.name, self.duration.doc),
                HistogramMetricFamily(self.ttft.name, self.ttft.doc),
                HistogramMetricFamily(self.attempts.name, self.attempts.doc),
                CounterMetricFamily(self.tokens.name, self.tokens.doc),
                CounterMetricFamily(self.cost.name, self.cost.doc),
                GaugeMetricFamily("anyrouter_in_flight_requests", ""),
                GaugeMetricFamily("anyrouter_in_flight_streams", "")]

    def collect(self) -> Iterator[Metric]:
        yield self.requests.family()
        yield self.duration.family()
        yield self.ttft.family()
        yield self.attempts.family()
        yield self.tokens.family()
        yield self.cost.family()
        yield GaugeMetricFamily("anyrouter_in_flight_requests", "Proxied requests in flight.",
                                value=self.in_flight)
        yield GaugeMetricFamily("anyrouter_in_flight_streams", "Streams in flight.",
                                value=self.streams)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.series = RequestSeries()
        r.register(self.series)
        self.rejections = Counter("anyrouter_rejections", "Requests refused by a limit.",
                                  ["key", "reason"], registry=r)
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
        series = self.series
        provider = rec.provider or "none"
        model = rec.wildcard or rec.model  # a wildcard's ids count under the wildcard
        key_name = rec.key_name
        series.requests.inc((rec.endpoint, model, provider, key_name,
                             f"{rec.status_code // 100}xx"))
        if not rec.attempts:  # refused before routing: counted, but no latency to speak of
            return
        series.duration.observe((rec.endpoint, model), rec.latency_ms / 1000)
        if rec.ttft_ms is not None:
            series.ttft.observe((model, provider), rec.ttft_ms / 1000)
        for attempt in rec.attempts:
            outcome = "ok" if attempt.status == 200 else str(attempt.status)
            series.attempts.observe((attempt.provider, outcome), attempt.latency_ms / 1000)
        usage = rec.usage
        tokens = series.tokens
        for direction, count in (("prompt", usage.prompt_tokens),
                                 ("completion", usage.completion_tokens),
                                 ("cached", usage.cached_tokens),
                                 ("reasoning", usage.reasoning_tokens)):
            if count:
                tokens.inc((model, provider, key_name, direction), count)
        if rec.cost:
            series.cost.inc((model, key_name), rec.cost)

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
