"""Per-provider circuit breakers and recent stats, fed by live traffic (pure, no I/O).

A breaker opens after `failures` consecutive failures and skips its provider for
`cooldown_s`; then it is half-open: the next real request probes it (one at a time), and
its outcome closes or re-opens the breaker. No synthetic upstream calls: they cost money.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
STATE_CODES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
WINDOWS_S = {"5m": 300, "30m": 1800, "1d": 86400}
SAMPLES = 512  # latency samples kept per provider for percentiles
BUCKET_S = 60  # outcome counts are kept per minute, for a day


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failures: int = 5
    cooldown_s: float = 30.0


class ProviderHealth:
    __slots__ = ("_buckets", "_failures", "_latency", "_opened_at", "_probing", "_tps",
                 "_ttft", "policy", "provider", "state")

    def __init__(self, provider: str, policy: BreakerPolicy) -> None:
        self.provider = provider
        self.policy = policy
        self.state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._latency: deque[float] = deque(maxlen=SAMPLES)
        self._ttft: deque[float] = deque(maxlen=SAMPLES)
        self._tps: deque[float] = deque(maxlen=SAMPLES)
        self._buckets: deque[list[float]] = deque()  # [minute start, ok, failed]

    def available(self, now: float) -> bool:
        """May a request go to this provider now? Claims the probe when half-open."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and now - self._opened_at >= self.policy.cooldown_s:
            self._set(HALF_OPEN)
        if self.state == HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def would_be_available(self, now: float) -> bool:
        """The same question without claiming anything (health reports)."""
        if self.state == OPEN:
            return now - self._opened_at >= self.policy.cooldown_s
        return self.state == CLOSED or not self._probing

    def release_probe(self) -> None:
        """A claimed half-open probe that was not used after all."""
        self._probing = False

    def success(self, now: float, latency_ms: float, ttft_ms: float | None = None,
                tokens: int = 0) -> None:
        self._count(now, ok=True)
        self._failures = 0
        self._probing = False
        if self.state != CLOSED:
            self._set(CLOSED)
        self._latency.append(latency_ms)
        if ttft_ms is not None:
            self._ttft.append(ttft_ms)
        if tokens and latency_ms > (ttft_ms or 0):
            self._tps.append(tokens / ((latency_ms - (ttft_ms or 0)) / 1000))

    def failure(self, now: float) -> None:
        self._count(now, ok=False)
        self._failures += 1
        self._probing = False
        if self.state == HALF_OPEN or (self.state == CLOSED
                                        and self._failures >= self.policy.failures):
            self._opened_at = now
            self._set(OPEN)

    def _set(self, state: str) -> None:
        log.warning("circuit breaker of provider %s: %s -> %s", self.provider, self.state,
                    state)
        self.state = state

    def _count(self, now: float, *, ok: bool) -> None:
        minute = now - now % BUCKET_S
        buckets = self._buckets
        if not buckets or buckets[-1][0] != minute:
            buckets.append([minute, 0, 0])
            while buckets and buckets[0][0] < now - WINDOWS_S["1d"]:
                buckets.popleft()
        buckets[-1][1 if ok else 2] += 1

    def uptime(self, now: float, window_s: float) -> float | None:
        ok = failed = 0.0
        for minute, good, bad in self._buckets:
            if minute >= now - window_s:
                ok, failed = ok + good, failed + bad
        return None if ok + failed == 0 else round(ok / (ok + failed) * 100, 2)

    def circuit(self, now: float) -> str:
        """The breaker's effective state: open past its cool-down reads half-open."""
        return self.state if self.state != OPEN or not self.would_be_available(now) \
            else HALF_OPEN

    def snapshot(self, now: float) -> dict[str, object]:
        return {
            "circuit": self.circuit(now),
            "consecutive_failures": self._failures,
            "uptime": {name: self.uptime(now, window) for name, window in WINDOWS_S.items()},
            "latency_ms": _percentiles(self._latency),
            "ttft_ms": _percentiles(self._ttft),
            "throughput_tps": _percentiles(self._tps),
        }

    def median_latency(self) -> float | None:
        return _percentile(sorted(self._latency), 50) if self._latency else None

    def median_throughput(self) -> float | None:
        return _percentile(sorted(self._tps), 50) if self._tps else None


def _percentile(ordered: list[float], p: float) -> float:
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return round(ordered[index], 1)


def _percentiles(samples: Iterable[float]) -> dict[str, float] | None:
    ordered = sorted(samples)
    if not ordered:
        return None
    return {f"p{p}": _percentile(ordered, p) for p in (50, 90, 99)}


class HealthBoard:
    """Every provider's health, surviving config reloads for providers that remain."""

    def __init__(self, policies: dict[str, BreakerPolicy],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._providers: dict[str, ProviderHealth] = {}
        self.reconfigure(policies)

    def reconfigure(self, policies: dict[str, BreakerPolicy]) -> None:
        kept = {pid: self._providers.get(pid) or ProviderHealth(pid, policy)
                for pid, policy in policies.items()}
        for pid, health in kept.items():
            health.policy = policies[pid]
        self._providers = kept

    def get(self, provider: str) -> ProviderHealth:
        health = self._providers.get(provider)
        if health is None:  # a provider of an older config, still finishing requests
            health = self._providers[provider] = ProviderHealth(provider, BreakerPolicy())
        return health

    def states(self) -> dict[str, str]:
        """Each breaker's effective state (open past its cool-down reads half-open)."""
        now = self.clock()
        return {pid: h.circuit(now) for pid, h in self._providers.items()}
