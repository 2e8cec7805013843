"""Per-key, per-model and per-provider limits held in memory (docs/api.md, "Limits").

`requests_per_minute` and `tokens_per_minute` are token buckets with continuous refill
(capacity / 60 per second) and bursts up to the per-minute amount; `concurrent_requests`
is an in-flight counter that rejects rather than queues. Pure logic: the gateway calls
`Limiter.admit` before anything goes upstream and holds the `Admission` until the request
ends, however it ends.

A key's `model_limits` entry is one shared set of buckets per entry: `"openai/*": {rpm: 10}`
allows 10 requests per minute across every model the glob matches. Write exact model ids
for separate per-model budgets.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from fnmatch import translate

from anyrouter_proxy.config.model import Config, KeyConfig, Limits, ProviderConfig
from anyrouter_proxy.errors import RateLimited

Clock = Callable[[], float]  # monotonic seconds

EPSILON = 1e-9  # float slack so that waiting exactly the advertised time succeeds
CONCURRENCY_RETRY_S = 1.0  # a slot has no schedule; suggest retrying soon
MODEL_CACHE_MAX = 1024  # model id -> matching model_limits entries, per key
_GLOB_CHARS = frozenset("*?[")


class TokenBucket:
    """Continuous-refill bucket: holds up to `capacity`, refills `capacity` per minute.

    A request larger than the whole capacity is admitted when the bucket is full and
    leaves it in debt (negative level), so one big request is possible but the key then
    waits as long as that request's size warrants.
    """

    __slots__ = ("_capacity", "_level", "_rate", "_stamp")

    def __init__(self, capacity: float, *, now: float) -> None:
        self._capacity = max(0.0, float(capacity))
        self._rate = self._capacity / 60.0
        self._level = self._capacity
        self._stamp = now

    @property
    def capacity(self) -> float:
        return self._capacity

    def _refill(self, now: float) -> None:
        if now <= self._stamp:  # same instant, or a clock that went backwards
            return
        if self._level < self._capacity:
            refilled = self._level + (now - self._stamp) * self._rate
            self._level = min(self._capacity, refilled)
        self._stamp = now

    def wait(self, amount: float, now: float) -> float:
        """Seconds until `amount` could be taken (0.0: now); never consumes."""
        self._refill(now)
        if self._capacity <= 0.0:
            return math.inf if amount > 0 else 0.0
        needed = min(amount, self._capacity)
        if self._level >= needed - EPSILON:
            return 0.0
        return (needed - self._level) / self._rate

    def take(self, amount: float, now: float) -> float:
        """Take `amount` and return 0.0, or take nothing and return the wait in seconds."""
        delay = self.wait(amount, now)
        if delay == 0.0:
            self._level -= amount
        return delay

    def give_back(self, amount: float, now: float) -> None:
        self._refill(now)
        self._level = min(self._capacity, self._level + amount)

    def force_take(self, amount: float, now: float) -> None:
        """Take regardless of the level (it may go negative): real usage above an estimate."""
        self._refill(now)
        self._level -= amount

    def level(self, now: float) -> float:
        self._refill(now)
        return self._level

    def seconds_until_full(self, now: float) -> float:
        self._refill(now)
        if self._level >= self._capacity:
            return 0.0
        return (self._capacity - self._level) / self._rate

    def resize(self, capacity: float, now: float) -> None:
        """Change the capacity keeping the used fraction, hence the time until full."""
        self._refill(now)
        capacity = max(0.0, float(capacity))
        if capacity == self._capacity:
            return
        used = (self._capacity - self._level) / self._capacity if self._capacity > 0 else 0.0
        self._capacity = capacity
        self._rate = capacity / 60.0
        self._level = capacity * (1.0 - used)


def _resized(bucket: TokenBucket | None, capacity: int | None, now: float) -> TokenBucket | None:
    if capacity is None:
        return None
    if bucket is None:
        return TokenBucket(capacity, now=now)
    bucket.resize(capacity, now)
    return bucket


class _Gate:
    """The buckets and in-flight counter of one scope: a key, a model_limits entry, a provider."""

    __slots__ = ("in_flight", "limits", "pattern", "requests", "tokens")

    def __init__(self, limits: Limits, now: float, pattern: str | None = None) -> None:
        self.pattern = pattern  # the model_limits entry, for a model scope
        self.in_flight = 0  # counted even without a cap, so a reload that adds one is exact
        self.requests: TokenBucket | None = None
        self.tokens: TokenBucket | None = None
        self.limits = limits
        self.apply(limits, now)

    def apply(self, limits: Limits, now: float) -> None:
        self.requests = _resized(self.requests, limits.requests_per_minute, now)
        self.tokens = _resized(self.tokens, limits.tokens_per_minute, now)
        self.limits = limits

    def blocked(self, tokens: int, now: float) -> bool:
        """The hot path of `waits`: does any limit fail? No allocation."""
        cap = self.limits.concurrent_requests
        return (
            (cap is not None and self.in_flight >= cap)
            or (self.requests is not None and self.requests.wait(1, now) > 0.0)
            or (self.tokens is not None and self.tokens.wait(tokens, now) > 0.0)
        )

    def waits(self, tokens: int, now: float) -> tuple[float, float, float]:
        """Wait per limit, in check order: requests, tokens, concurrency (0.0 = passes)."""
        cap = self.limits.concurrent_requests
        return (
            self.requests.wait(1, now) if self.requests is not None else 0.0,
            self.tokens.wait(tokens, now) if self.tokens is not None else 0.0,
            CONCURRENCY_RETRY_S if cap is not None and self.in_flight >= cap else 0.0,
        )

    def consume(self, tokens: int, now: float) -> None:
        """After `blocked` said no at the same `now`: take without asking again."""
        if self.requests is not None:
            self.requests.force_take(1, now)
        if self.tokens is not None:
            self.tokens.force_take(tokens, now)
        self.in_flight += 1


LIMIT_NAMES = ("requests_per_minute", "tokens_per_minute", "concurrent_requests")


def model_matcher(pattern: str) -> Callable[[str], bool]:
    """A model_limits / allow-list pattern (shell glob, case-sensitive) as a predicate."""
    if _GLOB_CHARS.isdisjoint(pattern):
        return pattern.__eq__
    regex = re.compile(translate(pattern))  # case-sensitive, unlike fnmatch.fnmatch on Windows
    return lambda model_id: regex.match(model_id) is not None


class _KeyState:
    __slots__ = ("cache", "gate", "rules")

    def __init__(self, key: KeyConfig, now: float) -> None:
        self.gate = _Gate(key.limits, now)
        self.rules: tuple[tuple[Callable[[str], bool], _Gate], ...] = ()
        self.cache: dict[str, tuple[_Gate, ...]] = {}
        self.apply(key, now)

    def apply(self, key: KeyConfig, now: float) -> None:
        self.gate.apply(key.limits, now)
        old = {gate.pattern: gate for _, gate in self.rules}
        rules = []
        for pattern, limits in key.model_limits.items():
            gate = old.get(pattern)
            if gate is None:
                gate = _Gate(limits, now, pattern)
            else:
                gate.apply(limits, now)
            rules.append((model_matcher(pattern), gate))
        self.rules = tuple(rules)
        self.cache.clear()

    def gates_for(self, model_id: str) -> tuple[_Gate, ...]:
        gates = self.cache.get(model_id)
        if gates is None:
            gates = (self.gate, *(gate for match, gate in self.rules if match(model_id)))
            if len(self.cache) >= MODEL_CACHE_MAX:
                self.cache.clear()
            self.cache[model_id] = gates
        return gates


class Admission:
    """What one admitted request holds.

    `settle_tokens` and `release` are idempotent and safe on every exit path (success,
    error, client disconnect, cancelled stream): call `release` in a `finally`.
    """

    __slots__ = ("_buckets", "_clock", "_estimate", "_gates", "_released", "_settled")

    def __init__(self, clock: Clock, gates: tuple[_Gate, ...], estimate: int) -> None:
        self._clock = clock
        self._gates = gates
        self._buckets = [g.tokens for g in gates if g.tokens is not None]
        self._estimate = estimate
        self._settled = False
        self._released = False

    def settle_tokens(self, actual_tokens: int) -> None:
        """Reconcile the tokens-per-minute estimate with the real usage (first call wins)."""
        if self._settled:
            return
        self._settled = True
        diff = max(0, actual_tokens) - self._estimate
        if diff == 0 or not self._buckets:
            return
        now = self._clock()
        for bucket in self._buckets:
            if diff > 0:
                bucket.force_take(diff, now)
            else:
                bucket.give_back(-diff, now)

    def release(self) -> None:
        """Give the concurrency slot(s) back; an unsettled estimate stands as the usage."""
        self._settled = True
        if self._released:
            return
        self._released = True
        for gate in self._gates:
            gate.in_flight = max(0, gate.in_flight - 1)


class Limiter:
    """All limit state of one process; `reconfigure` carries it across config reloads."""

    def __init__(
        self, config: Config, *, clock: Clock = time.monotonic, wall: Clock = time.time
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._keys: dict[str, _KeyState] = {}
        self._providers: dict[str, _Gate] = {}
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Keep (and resize) the state of keys and providers that remain; drop the rest."""
        now = self._clock()
        keys: dict[str, _KeyState] = {}
        for name, key in config.keys.items():
            state = self._keys.get(name)
            if state is None:
                state = _KeyState(key, now)
            else:
                state.apply(key, now)
            keys[name] = state
        providers: dict[str, _Gate] = {}
        for pid, provider in config.providers.items():
            gate = self._providers.get(pid)
            limits = provider.limits or Limits()
            if gate is None:
                gate = _Gate(limits, now)
            else:
                gate.apply(limits, now)
            providers[pid] = gate
        self._keys, self._providers = keys, providers

    def _key_state(self, key: KeyConfig) -> _KeyState:
        state = self._keys.get(key.name)
        if state is None:  # a key outside the current config; the next reload prunes it
            state = self._keys[key.name] = _KeyState(key, self._clock())
        return state

    def admit(self, key: KeyConfig, model_id: str, estimated_tokens: int) -> Admission:
        """Consume one request and the token estimate from every matching scope, or raise
        RateLimited naming the first limit hit (key limits first) and consume nothing."""
        now = self._clock()
        estimate = max(0, estimated_tokens)
        gates = self._key_state(key).gates_for(model_id)
        for gate in gates:
            if gate.blocked(estimate, now):
                raise self._rejection(key, model_id, gates, estimate, now)
        for gate in gates:
            gate.consume(estimate, now)
        return Admission(self._clock, gates, estimate)

    def _rejection(
        self, key: KeyConfig, model_id: str, gates: tuple[_Gate, ...], estimate: int, now: float
    ) -> RateLimited:
        failures = [
            (gate, name, wait)
            for gate in gates
            for name, wait in zip(LIMIT_NAMES, gate.waits(estimate, now), strict=True)
            if wait > 0
        ]
        gate, name, _ = failures[0]
        return rate_limited(key, model_id, gate.limits, gate.pattern, name,
                            max(wait for _, _, wait in failures), self.headers(key))

    def admit_provider(self, provider: ProviderConfig, estimated_tokens: int) -> Admission | None:
        """Admit against the provider's own limits; None when exhausted (routing skips it)."""
        now = self._clock()
        estimate = max(0, estimated_tokens)
        gate = self._providers.get(provider.id)
        if gate is None:  # a provider outside the current config; the next reload prunes it
            gate = self._providers[provider.id] = _Gate(provider.limits or Limits(), now)
        if gate.blocked(estimate, now):
            return None
        gate.consume(estimate, now)
        return Admission(self._clock, (gate,), estimate)

    def admit_model(self, key: KeyConfig, model_id: str, admitted_model_id: str,
                    estimated_tokens: int) -> Admission | None:
        """Admit an attempt on a fallback model against its model_limits entries that the
        request's admission (for `admitted_model_id`) did not hold already; None when one
        is exhausted (routing skips the model)."""
        now = self._clock()
        estimate = max(0, estimated_tokens)
        state = self._key_state(key)
        held = state.gates_for(admitted_model_id)
        gates = tuple(g for g in state.gates_for(model_id)[1:] if g not in held)
        if any(gate.blocked(estimate, now) for gate in gates):
            return None
        for gate in gates:
            gate.consume(estimate, now)
        return Admission(self._clock, gates, estimate)

    def headers(self, key: KeyConfig) -> dict[str, str]:
        """X-RateLimit-* for the key's request bucket; reading never consumes.

        Empty when the key has no requests_per_minute limit at all.
        """
        bucket = self._key_state(key).gate.requests
        if bucket is None:
            return {}
        now = self._clock()
        return rate_headers(int(bucket.capacity), bucket.level(now),
                            self._wall() + bucket.seconds_until_full(now))

    def in_flight(self, key_name: str) -> int:
        """Requests of this key currently holding a concurrency slot."""
        state = self._keys.get(key_name)
        return state.gate.in_flight if state is not None else 0


def rate_headers(capacity: int, level: float, full_at: float) -> dict[str, str]:
    """X-RateLimit-* (docs/api.md) of a requests bucket, whichever backend keeps it; `full_at`
    is the wall-clock time it will be full again."""
    return {
        "X-RateLimit-Limit": str(capacity),
        "X-RateLimit-Remaining": str(max(0, math.floor(level + EPSILON))),
        "X-RateLimit-Reset": str(math.ceil(full_at)),
    }


def rate_limited(key: KeyConfig, model_id: str, limits: Limits, pattern: str | None,
                 name: str, wait_s: float, headers: Mapping[str, str]) -> RateLimited:
    """The 429 for `key` out of its `name` limit (of a model_limits entry when `pattern`
    is set): one wording whichever backend keeps the buckets (this process or Redis)."""
    retry_after = _retry_after(wait_s)
    value = getattr(limits, name)
    where = f"key {key.name}"
    metadata: dict[str, object] = {"limit": name, "limit_value": value, "scope": "key",
                                   "key": key.name, "retry_after_s": retry_after}
    if pattern is not None:
        where += f" on model {model_id} (model_limits {pattern!r})"
        metadata.update(scope="model", model=model_id, pattern=pattern)
    return RateLimited(f"Rate limit exceeded for {where}: {name} ({value})",
                       metadata=metadata, headers={"Retry-After": str(retry_after), **headers})


def _retry_after(seconds: float) -> int:
    """Whole seconds, at least 1; a bucket that never refills (capacity 0) says 60."""
    if not math.isfinite(seconds):
        return 60
    return max(1, math.ceil(seconds))
