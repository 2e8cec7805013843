"""Limits and credits shared by several replicas on Redis (docs/operations.md, "Scale-out").

`RedisQuota` implements `quota.Quota` with the semantics of the in-process
`MemoryQuota` (ratelimit.py's token buckets, credits.py's ledger), atomically across
every replica that uses the same Redis and `state.key_prefix`:

* One round trip per check. `admit` runs lua/admit.lua: with Redis's own clock (TIME) it
  refills and checks every bucket of the admission — the key's requests_per_minute,
  tokens_per_minute and concurrency, and each matching model_limits entry — and takes
  from all or from none. It answers the key's request bucket level too, so the
  X-RateLimit-* headers of that response need no second trip (cached briefly per key).
  `reserve` runs lua/reserve.lua. Scripts run by EVALSHA, loaded with SCRIPT LOAD at
  start-up (`load_spend`) and again on NOSCRIPT (after a Redis restart).
* Concurrency slots are sorted-set members (request id, score = lease expiry), credit
  reservations carry the same lease: a replica that dies holding them does not pin a
  key's slots or credit for longer than the lease (15 min, or longer when the providers'
  `timeouts.total_s` times the attempts allow longer requests).
* Settling (tokens reconciled to the real usage, slots released, reservations settled or
  cancelled) never blocks a request: `Held` / `Reserved` are synchronous and queue the
  work; one background task sends what is queued as one lua/settle.lua call per key
  (pipelined), retries on failure (idempotent where it matters) for up to
  `OUTBOX_RETRY_S`, and is drained by `close()`. Reads of in-flight counts and spend
  first wait (up to `state.timeout_s`) for this replica's queue: read your own writes.
* A check whose answer is lost (timeout, cancelled request) may still have run: its
  slots are released and its reservation cancelled `state.timeout_s` later, when it
  has run or never will (undoing earlier could overtake it).
* Money is stored in integer units of 1e-10 USD (the precision costs are computed to),
  so sums never drift and the credit boundary is exact.
* Budgets: a key with a `budget` has its period's spend in a key of its own, named by
  the period's start on this replica's clock (keep replicas on NTP) and expiring an hour
  after the period ends. The same reserve.lua call checks it against the budget (spend +
  every open reservation of the key + amount) and the same settle.lua operation adds the
  cost to the period it was reserved in: no extra round trip. It is seeded like the
  lifetime spend: from the usage log at start-up where Redis has none, and from the
  highest value this replica saw when Redis lost it.
* Spend: Redis is the live truth while it is up. `load_spend` (the usage log's sums at
  start-up) writes a key's spend only where Redis has none (HSETNX): a replica starting
  beside running ones does not overwrite live spend. Each replica also keeps the highest
  spend it has seen per key (the loaded sum, then every answer of Redis) and re-seeds a
  key that Redis lost from it until the spend is rebuilt.
* Spend lost by Redis (a restart without persistence, FLUSHALL, eviction) is rebuilt
  from the usage log. The spend marker (`<prefix>spend:marker`) is written with the
  spend; the outbox task looks at it every `SPEND_CHECK_S` and at once when a settlement
  finds its reservation gone. While it is gone, a settlement whose reservation vanished
  still counts its spend (once per reservation). The replica that finds it gone first
  rebuilds (lua/rebuild.lua): every key's spend becomes the usage log's sum plus this
  replica's usage rows not yet written (`spend_source`, read at one instant with nothing
  written meanwhile), settlements queued before that instant no longer add their spend
  (their rows are in the sum), and its reservations still open are put back. Every other
  replica, seeing a new marker, puts its own open reservations back. Exact for one
  replica; with several, usage rows another replica had not yet written at the instant of
  the rebuild may be missed.

When Redis is unreachable (connection refused, timeout `state.timeout_s`, loading):
`state.on_error.limits: open` (default) admits against this process's own buckets (the
`MemoryQuota` passed in) and `closed` answers 503 `state_unavailable`;
`state.on_error.credits: closed` (default) answers 503 `state_unavailable` to keys with
credits (unlimited keys always fall back: there is nothing to protect) and `open`
reserves on this process's ledger, whose spend is pushed to Redis when it returns.
Reads (/credits, /auth/key, headers, /metrics) never fail: they show this replica's view.
After a failure Redis is skipped for `retry_s` (1 s), then tried again; a warning is
logged at most every `warn_every_s`, and `fallbacks` / `refusals` count the requests
served locally / refused, by "limits" and "credits".

Beside it: redis_scripts.py (the Lua scripts and money units) and redis_handles.py (the
`Held` / `Reserved` handles it returns and the records it queues).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ..config.model import Budget, Config, KeyConfig, Limits, ProviderConfig
from ..errors import RateLimited, ServiceUnavailable
from ..types import Interrupted
from .budget import BudgetStatus, Window, window
from .credits import budget_exceeded, insufficient_credits
from .quota import Held, MemoryQuota, Reserved
from .ratelimit import LIMIT_NAMES, model_matcher, rate_headers, rate_limited
from .redis_handles import (
    NO_LIMITS,
    LocalReserved,
    Op,
    Period,
    RateCache,
    RedisHeld,
    RedisReserved,
    Scope,
)
from .redis_scripts import (
    ADMIT,
    CREDIT_STATE,
    PEEK,
    REBUILD,
    RESERVE,
    SCRIPTS,
    SETTLE,
    Script,
    from_units,
    to_units,
)

log = logging.getLogger(__name__)

LEASE_MIN_S = 900.0  # concurrency slots and credit reservations of a dead replica expire
LEASE_MARGIN_S = 60.0
HEADER_CACHE_S = 1.0  # X-RateLimit-* from the last admission of the key, for this long
SCOPE_CACHE_MAX = 4096
OUTBOX_MAX = 100_000  # settlements waiting for Redis; the oldest are dropped beyond this
OUTBOX_BATCH = 256
OUTBOX_RETRY_S = 300.0  # a settlement not delivered within this is dropped (logged)
DONE_TTL_S = 2 * OUTBOX_RETRY_S  # dedup window of spend recorded without a reservation
CLOSE_GRACE_S = 5.0
BUDGET_KEY_MARGIN_S = 3600.0  # a period's spend outlives the period (clock skew, late settles)
SPEND_CHECK_S = 1.0  # how often the spend marker is looked at
SPEND_RETRY_S = 10.0  # a rebuild that failed (the usage log unreadable) is tried again
REBUILD_TIMEOUT_S = 30.0

# What "Redis is unreachable" means here; other errors (a script bug) are logged too.
UNAVAILABLE: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
FAILED_OR_CANCELLED = (RedisError, OSError, TimeoutError, asyncio.CancelledError)


# Spend per key as of one instant (the usage log plus rows not yet written); the callback
# runs at that instant (Store.spend_snapshot).
SpendSource = Callable[[Callable[[], None] | None], Awaitable[Mapping[str, float]]]


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _cap(value: int | None) -> int:
    return -1 if value is None else value


def default_lease_s(config: Config) -> float:
    """Longer than any request can last: every attempt may run its provider's total_s."""
    longest = max((p.timeouts.total_s for p in config.providers.values()), default=0.0)
    return max(LEASE_MIN_S, longest * (config.server.retries + 1) + LEASE_MARGIN_S)


class RedisQuota:
    """`Quota` on Redis, with `local` (this process's buckets and ledger) as the fallback.

    Counters for metrics: `fallbacks["limits" | "credits"]` (requests admitted or reserved
    locally because Redis was unreachable), `refusals[...]` (503 state_unavailable),
    `errors` (failed Redis calls, background ones included), `dropped` (settlements given
    up), and `available` (False while Redis is being skipped after a failure).
    """

    def __init__(self, config: Config, local: MemoryQuota, *, client: Redis | None = None,
                 retry_s: float = 1.0, warn_every_s: float = 10.0,
                 on_fallback: Callable[[str], None] | None = None,
                 lease_s: float | None = None,
                 spend_source: SpendSource | None = None) -> None:
        state = config.state
        self.local = local
        self.prefix = state.key_prefix
        self._state = state
        self.client: Redis = client if client is not None else Redis.from_url(
            state.url or "redis://127.0.0.1:6379/0",
            socket_timeout=state.timeout_s, socket_connect_timeout=state.timeout_s,
            # One immediate retry on a fresh connection (a pooled one may be stale after
            # a Redis restart); never on a timeout, which would double the wait.
            retry=Retry(NoBackoff(), 1, (RedisConnectionError,)))
        self.retry_s = retry_s
        self.warn_every_s = warn_every_s
        self.on_fallback = on_fallback
        self.fallbacks: collections.Counter[str] = collections.Counter()
        self.refusals: collections.Counter[str] = collections.Counter()
        self.errors = 0
        self.dropped = 0
        self._down_until = 0.0
        self._down = False
        self._last_warning = -math.inf
        self._replica = os.urandom(6).hex()
        self._ids = itertools.count()
        self._lease_s = lease_s  # None: default_lease_s(config)
        self._lease_ms = 0
        self._providers: dict[str, Scope] = {}
        self._scopes: dict[tuple[str, str], tuple[KeyConfig, tuple[Scope, ...]]] = {}
        self._rates: dict[str, RateCache] = {}
        self._seen: dict[str, float] = {}  # the highest spend seen per key: a lower bound
        # ... and per key and budget period: {name: {period: (start, spent)}}
        self._seen_periods: dict[str, dict[str, tuple[float, float]]] = {}
        self._windows: dict[str, Window] = {}
        self._budgets: dict[str, Budget] = {}
        self._outbox: collections.deque[Op] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._progress: asyncio.Condition | None = None
        self._worker: asyncio.Task[None] | None = None
        self._delayed: dict[asyncio.TimerHandle, tuple[str, str, tuple[str, ...],
                                                       tuple[str | int, ...]]] = {}
        self._queued = 0  # sequence number of the last settlement queued
        self._done = 0  # ... and of the last one sent (or given up)
        self._closing = False
        self._closed = False
        # Spend lost by Redis: the marker written with the spend and the last one seen,
        # the reservations of this replica not yet settled in Redis (id -> key, units).
        self.spend_source = spend_source
        self._marker = f"{self.prefix}spend:marker"
        self._epoch: str | None = None
        self._open: dict[str, tuple[str, int]] = {}
        self._check_at = 0.0
        self._suspect = False
        self._checked = asyncio.Event()  # replaced after each look at the marker
        self._from_log: set[str] = set()  # keys whose spend load_spend wrote to Redis
        self._configure(config)

    # -- configuration --------------------------------------------------------------

    def _configure(self, config: Config) -> None:
        lease = self._lease_s if self._lease_s is not None else default_lease_s(config)
        self._lease_ms = math.ceil(lease * 1000)
        self._providers = {
            pid: self._provider_scope(pid, provider.limits)
            for pid, provider in config.providers.items()
            if provider.limits is not None and provider.limits != Limits()}
        self._scopes.clear()
        self._budgets = {name: key.budget for name, key in config.keys.items()
                         if key.budget is not None}
        ledger = self.local.ledger
        for name, budget in self._budgets.items():  # a budget new to Redis starts from here
            self._saw_period(name, self._window(budget.period),
                             ledger.period_spent(name, budget.period))

    def reconfigure(self, config: Config) -> None:
        """Limits and credits follow reloads (capacities resize in Redis on the next
        check); `state:` itself (url, key_prefix) is read once: changing it needs a restart.
        The failure policies apply at once."""
        self.local.reconfigure(config)
        new, old = config.state, self._state
        if (new.backend, new.url, new.key_prefix, new.timeout_s) != \
                (old.backend, old.url, old.key_prefix, old.timeout_s):
            log.warning("state: backend, url, key_prefix and timeout_s take effect at the "
                        "next restart; the running process keeps its Redis connection")
        # The running connection's settings, with the new failure policies.
        self._state = dataclasses.replace(old, limits_on_error=new.limits_on_error,
                                          credits_on_error=new.credits_on_error)
        self._configure(config)

    # -- naming ---------------------------------------------------------------------

    def _key(self, owner: str, suffix: str) -> str:
        # The {hash tag} keeps all keys of one key (or provider) in one cluster slot.
        return f"{self.prefix}{{{owner}}}:{suffix}"

    def _provider_scope(self, pid: str, limits: Limits) -> Scope:
        owner = f"provider:{pid}"
        return Scope(owner, self._key(owner, "b"), self._key(owner, "cc"), limits)

    def _window(self, period: str, at: float | None = None) -> Window:
        """The `period` holding `at` (default: now, on the local ledger's clock)."""
        at = self.local.ledger.clock() if at is None else at
        current = self._windows.get(period)
        if current is not None and current.holds(at):
            return current
        found = window(period, at)
        if current is None or found.start > current.start:  # the latest one is cached
            self._windows[period] = found
        return found

    def _period(self, name: str, budget: Budget, at: float | None = None) -> Period:
        span = self._window(budget.period, at)
        return Period(self._key(f"key:{name}", f"budget:{span.period}:{int(span.start)}"),
                       span, math.ceil((span.end + BUDGET_KEY_MARGIN_S) * 1000))

    def _key_scope(self, name: str) -> tuple[str, str]:
        return self._key(f"key:{name}", "b"), self._key(f"key:{name}", "cc")

    def _credit_keys(self, name: str) -> tuple[str, str, str, str]:
        owner = f"key:{name}"
        return (self._key(owner, "credit"), self._key(owner, "res"),
                self._key(owner, "resx"), self._key(owner, "done"))

    def _scopes_for(self, key: KeyConfig, model_id: str) -> tuple[Scope, ...]:
        cached = self._scopes.get((key.name, model_id))
        if cached is not None and cached[0] is key:
            return cached[1]
        owner = f"key:{key.name}"
        bucket, inflight = self._key_scope(key.name)
        scopes = [Scope(owner, bucket, inflight, key.limits)]
        for pattern, limits in key.model_limits.items():
            if model_matcher(pattern)(model_id):
                scopes.append(Scope(owner, self._key(owner, f"m:{pattern}:b"),
                                     self._key(owner, f"m:{pattern}:cc"), limits, pattern))
        if len(self._scopes) >= SCOPE_CACHE_MAX:
            self._scopes.clear()
        self._scopes[(key.name, model_id)] = (key, result := tuple(scopes))
        return result

    def new_id(self) -> str:
        return f"{self._replica}-{next(self._ids)}"

    # -- Redis calls and the failure policy -----------------------------------------

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    async def probe(self) -> bool:
        """Ask Redis now (PING, bounded by timeout_s), for /health: `available` alone
        only knows how the last real call went."""
        try:
            async with asyncio.timeout(self._state.timeout_s):
                await self.client.ping()
        except Exception as exc:  # any failure means: not usable now
            self._failed(exc, "health probe")
            return False
        self._succeeded()
        return True

    async def _eval(self, script: Script, keys: Sequence[str],
                    args: Sequence[str | int | float]) -> Any:
        try:
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.client.script_load(script.text)
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)

    def _failed(self, exc: BaseException, what: str) -> None:
        self.errors += 1
        now = time.monotonic()
        self._down_until = now + self.retry_s
        self._down = True
        if now - self._last_warning >= self.warn_every_s:
            self._last_warning = now
            log.warning("Redis state backend unreachable (%s: %s: %s); limits fail %s, "
                        "credits fail %s until it answers", what, type(exc).__name__, exc,
                        self._state.limits_on_error, self._state.credits_on_error,
                        # An error answer (not a lost connection) may be a bug: say where.
                        exc_info=exc if isinstance(exc, ResponseError) else None)

    def _succeeded(self) -> None:
        if self._down:
            self._down = False
            self._down_until = 0.0
            log.warning("Redis state backend reachable again: limits and credits are "
                        "shared again")

    def _limits_unavailable(self) -> None:
        if self._state.limits_on_error == "closed":
            self.refusals["limits"] += 1
            raise ServiceUnavailable(
                "Rate limit state is unavailable (the proxy cannot reach Redis); "
                "try again shortly", code="state_unavailable", headers={"Retry-After": "1"})
        self.fallbacks["limits"] += 1
        if self.on_fallback is not None:
            self.on_fallback("limits")

    def _credits_unavailable(self, key: KeyConfig) -> None:
        metered = key.credits is not None or key.budget is not None
        if metered and self._state.credits_on_error == "closed":
            self.refusals["credits"] += 1
            raise ServiceUnavailable(
                "Credit state is unavailable (the proxy cannot reach Redis), so requests on "
                "keys with credits or a budget are refused until it answers; try again "
                "shortly",
                code="state_unavailable", headers={"Retry-After": "1"})
        self.fallbacks["credits"] += 1
        if self.on_fallback is not None:
            self.on_fallback("credits")

    # -- limits ---------------------------------------------------------------------

    async def admit(self, key: KeyConfig, model_id: str, estimated_tokens: int) -> Held:
        estimate = max(0, estimated_tokens)
        scopes = self._scopes_for(key, model_id)
        if not self.available:
            self._limits_unavailable()
            return await self.local.admit(key, model_id, estimated_tokens)
        member = self.new_id()
        try:
            result = await self._run_admit(scopes, estimate, member)
        except FAILED_OR_CANCELLED as exc:
            # Admitted or not, nobody will release it: give the slots back (idempotent).
            self._compensate("r", scopes[0].owner, tuple(s.inflight for s in scopes),
                             (member,))
            if isinstance(exc, asyncio.CancelledError):
                raise
            self._failed(exc, "admit")
            self._limits_unavailable()
            return await self.local.admit(key, model_id, estimated_tokens)
        self._succeeded()
        ok = int(result[0]) == 1
        level, until_full = (float(result[1]), float(result[2])) if ok else \
            (float(result[4]), float(result[5]))
        rpm = key.limits.requests_per_minute
        if rpm is not None:
            self._rates[key.name] = RateCache(rpm, level, until_full, time.monotonic())
        if ok:
            return RedisHeld(self, member, scopes, estimate)
        scope = scopes[int(result[1]) - 1]
        raise self._rejection(key, model_id, scope, LIMIT_NAMES[int(result[2]) - 1],
                              float(result[3]))

    async def _run_admit(self, scopes: Sequence[Scope], estimate: int, member: str) -> Any:
        keys: list[str] = []
        args: list[str | int | float] = [estimate, member, self._lease_ms]
        for scope in scopes:
            keys += (scope.bucket, scope.inflight)
            limits = scope.limits
            args += (_cap(limits.requests_per_minute), _cap(limits.tokens_per_minute),
                     _cap(limits.concurrent_requests))
        return await self._eval(ADMIT, keys, args)

    def _rejection(self, key: KeyConfig, model_id: str, scope: Scope, name: str,
                   wait: float) -> RateLimited:
        return rate_limited(key, model_id, scope.limits, scope.pattern, name, wait,
                            self._cached_headers(key))

    async def admit_provider(self, provider: ProviderConfig,
                             estimated_tokens: int) -> Held | None:
        scope = self._providers.get(provider.id)
        if scope is None or scope.limits != provider.limits:
            if provider.limits is None or provider.limits == Limits():
                return NO_LIMITS
            scope = self._provider_scope(provider.id, provider.limits)
        return await self._admit_or_skip(
            (scope,), estimated_tokens, "admit_provider",
            lambda: self.local.admit_provider(provider, estimated_tokens))

    async def admit_model(self, key: KeyConfig, model_id: str, admitted_model_id: str,
                          estimated_tokens: int) -> Held | None:
        held = {scope.pattern for scope in self._scopes_for(key, admitted_model_id)}
        scopes = tuple(scope for scope in self._scopes_for(key, model_id)[1:]
                       if scope.pattern not in held)
        if not scopes:
            return NO_LIMITS
        return await self._admit_or_skip(
            scopes, estimated_tokens, "admit_model",
            lambda: self.local.admit_model(key, model_id, admitted_model_id,
                                           estimated_tokens))

    async def _admit_or_skip(self, scopes: tuple[Scope, ...], estimated_tokens: int,
                             what: str, locally: Callable[[], Awaitable[Held | None]]
                             ) -> Held | None:
        """Admit against `scopes` (all or nothing), or None when one is exhausted: for
        what routing skips rather than refuses (a provider, a fallback model)."""
        if not self.available:
            self._limits_unavailable()
            return await locally()
        estimate = max(0, estimated_tokens)
        member = self.new_id()
        try:
            result = await self._run_admit(scopes, estimate, member)
        except FAILED_OR_CANCELLED as exc:
            self._compensate("r", scopes[0].owner, tuple(s.inflight for s in scopes),
                             (member,))
            if isinstance(exc, asyncio.CancelledError):
                raise
            self._failed(exc, what)
            self._limits_unavailable()
            return await locally()
        self._succeeded()
        if int(result[0]) != 1:
            return None
        return RedisHeld(self, member, scopes, estimate)

    def _cached_headers(self, key: KeyConfig) -> dict[str, str]:
        cache = self._rates.get(key.name)
        if cache is None or cache.capacity != key.limits.requests_per_minute:
            return {}
        capacity = cache.capacity
        elapsed = max(0.0, time.monotonic() - cache.at)
        level = cache.level
        if level < capacity:
            level = min(float(capacity), level + elapsed * capacity / 60.0)
        until_full = max(0.0, cache.until_full - elapsed)
        return rate_headers(capacity, level, time.time() + until_full)

    async def rate_headers(self, key: KeyConfig) -> dict[str, str]:
        """From the key's last admission on this replica (up to HEADER_CACHE_S old), else
        one read; this replica's own buckets when Redis is unreachable. Never raises."""
        rpm = key.limits.requests_per_minute
        if rpm is None:
            return {}
        cache = self._rates.get(key.name)
        if cache is not None and cache.capacity == rpm and \
                time.monotonic() - cache.at < HEADER_CACHE_S:
            return self._cached_headers(key)
        if not self.available:
            return await self.local.rate_headers(key)
        try:
            level, until_full, _ = await self._eval(PEEK, self._key_scope(key.name), (rpm,))
        except UNAVAILABLE as exc:
            self._failed(exc, "rate_headers")
            return await self.local.rate_headers(key)
        self._succeeded()
        self._rates[key.name] = RateCache(rpm, float(level), float(until_full),
                                           time.monotonic())
        return self._cached_headers(key)

    async def in_flight(self, key_name: str) -> int:
        """Requests of the key holding a slot, on every replica. Never raises."""
        if not self.available:
            return await self.local.in_flight(key_name)
        await self._caught_up()
        try:
            _, _, count = await self._eval(PEEK, self._key_scope(key_name), (-1,))
        except UNAVAILABLE as exc:
            self._failed(exc, "in_flight")
            return await self.local.in_flight(key_name)
        self._succeeded()
        return int(count)

    # -- credits --------------------------------------------------------------------

    def _floor(self, name: str) -> int:
        return to_units(self._seen.get(name, 0.0))

    def _saw(self, name: str, spent: float) -> None:
        if spent > self._seen.get(name, 0.0):
            self._seen[name] = spent

    def _period_floor(self, name: str, span: Window) -> int:
        start, spent = self._seen_periods.get(name, {}).get(span.period, (None, 0.0))
        return to_units(spent) if start == span.start else 0

    def _saw_period(self, name: str, span: Window, spent: float) -> None:
        periods = self._seen_periods.setdefault(name, {})
        start, before = periods.get(span.period, (-math.inf, 0.0))
        if span.start > start or (span.start == start and spent > before):
            periods[span.period] = (span.start, spent)

    def _sync_local(self, name: str) -> None:
        """Bring the local ledger's spend (in all, and in its budget periods) up to the
        highest spend seen in Redis."""
        ledger = self.local.ledger
        seen = self._seen.get(name, 0.0)
        if ledger.spent(name) < seen:
            ledger.load_spend({name: seen})
        for period, (start, spent) in self._seen_periods.get(name, {}).items():
            if ledger.period_spent(name, period) < spent:
                ledger.load_period_spend(period, start, {name: spent})

    async def reserve(self, key: KeyConfig, amount: float) -> Reserved:
        if not math.isfinite(amount):
            raise ValueError(f"credit reservation must be finite, got {amount!r}")
        name, amount = key.name, max(0.0, amount)
        if not self.available:
            return self._reserve_locally(key, amount)
        rid, at = self.new_id(), self.local.ledger.clock()
        credits = -1 if key.credits is None else to_units(key.credits)
        keys: tuple[str, ...] = self._credit_keys(name)[:3]
        args: tuple[str | int, ...] = (to_units(amount), credits, rid, self._lease_ms,
                                       self._floor(name))
        budget, period = key.budget, None
        if budget is not None:
            period = self._period(name, budget, at)
            keys += (period.key,)
            args += (to_units(budget.usd), self._period_floor(name, period.window),
                     period.expire_at_ms)
        try:
            ok, spent_u, reserved_u, period_u = await self._eval(RESERVE, keys, args)
        except FAILED_OR_CANCELLED as exc:
            self._compensate("s", f"key:{name}", self._credit_keys(name),  # reserved or not
                             (rid, 0, "0", 0, 0))
            if isinstance(exc, asyncio.CancelledError):
                raise
            self._failed(exc, "reserve")
            return self._reserve_locally(key, amount)
        self._succeeded()
        spent, reserved = from_units(float(spent_u)), from_units(float(reserved_u))
        self._saw(name, spent)
        if period is not None:
            self._saw_period(name, period.window, from_units(float(period_u)))
        if int(ok) == 1:
            self._open[rid] = (name, to_units(amount))
            return RedisReserved(self, name, rid, amount, at, period)
        if int(ok) == 2:
            assert budget is not None and period is not None
            raise budget_exceeded(name, BudgetStatus(
                budget, period.window, from_units(float(period_u)), reserved), amount)
        assert key.credits is not None
        raise insufficient_credits(name, key.credits, spent, reserved, amount)

    def _reserve_locally(self, key: KeyConfig, amount: float) -> Reserved:
        self._credits_unavailable(key)
        self._sync_local(key.name)
        inner = self.local.ledger.reserve(key, amount)
        period = None if key.budget is None else self._period(key.name, key.budget, inner.at)
        return LocalReserved(self, key.name, inner, period)

    def settle_spend(self, name: str, rid: str, actual: float, *, orphan: bool,
                period: Period | None = None) -> None:
        if orphan and actual <= 0:
            return
        keys: tuple[str, ...] = (*self._credit_keys(name), self._marker)
        args: tuple[str | int, ...] = (rid, to_units(actual), "1" if orphan else "0",
                                       math.ceil(DONE_TTL_S * 1000), self._floor(name))
        if period is not None:  # the cost counts in the period it was reserved in
            keys += (period.key,)
            args += (self._period_floor(name, period.window), period.expire_at_ms)
        self.enqueue_op("s", f"key:{name}", keys, args,
                      window=None if period is None else period.window)

    async def spent(self, key_name: str) -> float:
        """The key's spend across replicas (USD). Never raises: this replica's view when
        Redis is unreachable."""
        if not self.available:
            return self._local_spent(key_name)
        await self._caught_up()
        try:
            value = await cast(Awaitable[Any],
                               self.client.hget(self._credit_keys(key_name)[0], "spent"))
        except UNAVAILABLE as exc:
            self._failed(exc, "spent")
            return self._local_spent(key_name)
        self._succeeded()
        if value is None:  # never spent, or Redis lost it: the floor it restarts from
            return self._seen.get(key_name, 0.0)
        spent = from_units(float(value))
        self._saw(key_name, spent)
        return spent

    def _local_spent(self, name: str) -> float:
        return max(self.local.ledger.spent(name), self._seen.get(name, 0.0))

    async def remaining(self, key: KeyConfig) -> float | None:
        """Credits minus spent and reserved across replicas, floored at 0; None when
        unlimited. Never raises: this replica's view when Redis is unreachable."""
        if key.credits is None:
            return None
        if self.available:
            await self._caught_up()
            try:
                spent_u, reserved_u = await self._eval(
                    CREDIT_STATE, self._credit_keys(key.name)[:3], (self._floor(key.name),))
            except UNAVAILABLE as exc:
                self._failed(exc, "remaining")
            else:
                self._succeeded()
                self._saw(key.name, from_units(float(spent_u)))
                left = to_units(key.credits) - int(float(spent_u)) - int(float(reserved_u))
                return max(0.0, from_units(left))
        self._sync_local(key.name)
        return self.local.ledger.remaining(key)

    async def budget(self, key: KeyConfig) -> BudgetStatus | None:
        """The key's budget in its current period across replicas. Never raises: this
        replica's view when Redis is unreachable."""
        budget = key.budget
        if budget is None:
            return None
        name = key.name
        if self.available:
            period = self._period(name, budget)
            await self._caught_up()
            try:
                spent_u, reserved_u, period_u = await self._eval(
                    CREDIT_STATE, (*self._credit_keys(name)[:3], period.key),
                    (self._floor(name), self._period_floor(name, period.window)))
            except UNAVAILABLE as exc:
                self._failed(exc, "budget")
            else:
                self._succeeded()
                self._saw(name, from_units(float(spent_u)))
                spent = from_units(float(period_u))
                self._saw_period(name, period.window, spent)
                return BudgetStatus(budget, period.window, spent,
                                    from_units(float(reserved_u)))
        self._sync_local(name)
        return self.local.ledger.budget(key)

    async def load_period_spend(self, period: str, start: float,
                                spend_by_key: Mapping[str, float]) -> None:
        """Like load_spend, for the current `period` (which began at `start`): a lower
        bound for every key, written to Redis for the keys with a budget of that period
        where Redis has none (SET NX)."""
        await self.local.load_period_spend(period, start, spend_by_key)
        span = self._window(period)
        if span.start != start:  # that period is over already: nothing of it counts
            return
        for name, amount in spend_by_key.items():
            self._saw_period(name, span, max(0.0, float(amount)))
        seeds = [(self._period(name, budget), to_units(max(0.0, spend_by_key[name])))
                 for name, budget in self._budgets.items()
                 if budget.period == period and spend_by_key.get(name, 0.0) > 0]
        if not seeds:
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for target, units in seeds:
                    pipe.set(target.key, units, nx=True, pxat=target.expire_at_ms)
                await pipe.execute()
        except UNAVAILABLE as exc:
            self._failed(exc, "load_period_spend")
            log.warning("could not seed budget spend in Redis at start-up; each key is "
                        "seeded from the usage log on its first request instead")
        else:
            self._succeeded()

    async def load_spend(self, spend_by_key: Mapping[str, float]) -> None:
        """The usage log's spend per key, at start-up: kept as this replica's lower bound
        and written to Redis only where Redis has none (HSETNX; Redis is the live truth
        while it is up) — or everywhere, when the spend marker says Redis lost its data
        (or never had it)."""
        await self.local.load_spend(spend_by_key)
        for name, amount in spend_by_key.items():
            self._saw(name, float(amount))
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for script in SCRIPTS:  # now rather than on the first requests
                    pipe.script_load(script.text)
                pipe.get(self._marker)
                marker = _text((await pipe.execute())[-1])
            rebuilt = False
            if marker is None:
                rebuilt, marker = await self._rebuild_spend(
                    "claim", self._new_marker(), spend_by_key, {})
            self._epoch = marker
            if rebuilt:
                self._from_log = set(spend_by_key)
            else:
                names = list(spend_by_key)
                async with self.client.pipeline(transaction=False) as pipe:
                    for name in names:
                        pipe.hsetnx(self._credit_keys(name)[0], "spent",
                                    to_units(max(0.0, float(spend_by_key[name]))))
                    written = await pipe.execute()
                self._from_log = {name for name, new in zip(names, written, strict=True)
                                  if new}
        except UNAVAILABLE as exc:
            self._failed(exc, "load_spend")
            log.warning("could not seed spend in Redis at start-up; each key is seeded "
                        "from the usage log on its first request instead")
        else:
            self._succeeded()
        self._start_worker()

    async def charge_interrupted(self, charges: Sequence[Interrupted]) -> None:
        """Spend without a reservation, once per generation id; nothing for the keys whose
        spend load_spend wrote from the usage log (the sums hold it). Budget periods are
        left to their own seeding."""
        for charge in charges:
            if charge.key_name not in self._from_log:
                self.settle_spend(charge.key_name, charge.gen_id, charge.cost, orphan=True)

    # -- spend lost by Redis ---------------------------------------------------------

    def _new_marker(self) -> str:
        return f"{time.time():.3f}-{self._replica}"

    def _spend_check_due(self) -> bool:
        return (self.spend_source is not None and not self._closing and self.available
                and (self._suspect or time.monotonic() >= self._check_at))

    async def _check_spend(self) -> None:
        """Has Redis lost the spend (no marker) or has another replica rebuilt it (a marker
        this replica has not seen)? Then rebuild, or put this replica's reservations back."""
        self._suspect = False
        self._check_at = time.monotonic() + SPEND_CHECK_S
        try:
            async with asyncio.timeout(REBUILD_TIMEOUT_S):
                marker = _text(await cast(Awaitable[Any], self.client.get(self._marker)))
                if marker is None:
                    marker = await self._claim()
                if marker is not None and marker != self._epoch:
                    await self._join(marker)
        except UNAVAILABLE:  # looked at again in SPEND_CHECK_S; requests keep trying
            self.errors += 1  # Redis themselves (not skipped for retry_s on its account)
        except Exception as exc:  # the usage log unreadable, a script bug: later
            self._check_at = time.monotonic() + SPEND_RETRY_S
            log.warning("could not rebuild the spend in Redis (trying again in %g s): %s: %s",
                        SPEND_RETRY_S, type(exc).__name__, exc)
        else:
            self._succeeded()
        finally:
            checked, self._checked = self._checked, asyncio.Event()
            checked.set()

    async def check_spend(self) -> None:
        """Have the outbox task look at the spend marker now, and wait until it has (it
        does so every SPEND_CHECK_S anyway)."""
        if self.spend_source is None:
            return
        self._start_worker()
        checked = self._checked
        self._suspect = True
        assert self._wake is not None
        self._wake.set()
        with contextlib.suppress(TimeoutError):  # Redis being skipped: no look for now
            async with asyncio.timeout(REBUILD_TIMEOUT_S):
                await checked.wait()

    async def _claim(self) -> str | None:
        """Rebuild every key's spend from the usage log; the marker another replica wrote
        first, or None when this replica did it."""
        assert self.spend_source is not None
        cut: dict[str, Any] = {}

        def at_cut() -> None:
            cut["seq"], cut["open"] = self._queued, dict(self._open)

        spend = await self.spend_source(at_cut)
        token = self._new_marker()
        done, marker = await self._rebuild_spend("claim", token, spend, cut["open"])
        if not done:
            return marker
        for op in self._outbox:  # their usage rows were in the sums
            if op.kind == "s" and op.seq <= cut["seq"]:
                op.args = (op.args[0], 0, *op.args[2:])
        for name, amount in spend.items():
            self._saw(name, amount)
        self._epoch = token
        log.warning("Redis had lost the spend of every key: rebuilt from the usage log "
                    "(%d keys) and %d open reservations put back", len(spend),
                    len(cut["open"]))
        return None

    async def _join(self, marker: str) -> None:
        """Another replica rebuilt the spend: put this replica's open reservations back."""
        done, _ = await self._rebuild_spend("join", marker, {}, dict(self._open))
        if done:
            self._epoch = marker
            log.warning("Redis had lost its data and another replica rebuilt the spend; "
                        "%d open reservations of this replica put back", len(self._open))

    async def _rebuild_spend(self, mode: str, marker: str, spend: Mapping[str, float],
                             held: Mapping[str, tuple[str, int]]) -> tuple[bool, str]:
        """lua/rebuild.lua: (done, the marker now)."""
        by_key: dict[str, list[tuple[str, int]]] = {}
        for rid, (name, units) in held.items():
            by_key.setdefault(name, []).append((rid, units))
        keys = [self._marker]
        args: list[str | int | float] = [mode, marker, self._lease_ms]
        for name in {*spend, *by_key}:
            keys += self._credit_keys(name)[:3]
            reservations = by_key.get(name, [])
            amount = spend.get(name)
            args += [-1 if amount is None else to_units(max(0.0, amount)), len(reservations)]
            for rid, units in reservations:
                args += [rid, units]
        done, now = await self._eval(REBUILD, keys, args)
        return int(done) == 1, _text(now) or ""

    # -- the background outbox ----------------------------------------------------

    def enqueue_op(self, kind: str, owner: str, keys: tuple[str, ...],
                 args: tuple[str | int, ...], *, window: Window | None = None) -> None:
        if self._closed:  # a request that outlived the shutdown: nothing left to send with
            self._drop(1, "the quota is closed")
            return
        self._queued += 1
        self._outbox.append(Op(kind, owner, keys, args, time.monotonic(), self._queued,
                                window))
        if len(self._outbox) > OUTBOX_MAX:
            self._forget(self._outbox.popleft())
            self._drop(1, "the queue of settlements for Redis is full")
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): sent with the next one
            return
        self._start_worker()
        assert self._wake is not None
        self._wake.set()

    def _start_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._progress = asyncio.Condition()
            self._worker = asyncio.create_task(self._flush_loop(), name="redis-quota-outbox")

    def _compensate(self, kind: str, owner: str, keys: tuple[str, ...],
                    args: tuple[str | int, ...]) -> None:
        """Undo a check whose answer never came (timeout, cancelled): queued only after
        state.timeout_s, when the check has run in Redis or never will, so that the undo
        cannot overtake it."""
        def later() -> None:
            self._delayed.pop(handle, None)
            self.enqueue_op(kind, owner, keys, args)

        handle = asyncio.get_running_loop().call_later(self._state.timeout_s, later)
        self._delayed[handle] = (kind, owner, keys, args)

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        log.error("dropped %d settlement(s) for Redis: %s (limits recover by themselves; "
                  "spend stays in the usage log)", count, why)

    def _forget(self, op: Op) -> None:
        """A settlement sent or given up: its reservation is no longer this replica's."""
        if op.kind == "s":
            self._open.pop(str(op.args[0]), None)

    async def _flush_loop(self) -> None:
        assert self._wake is not None and self._progress is not None
        wake, progress = self._wake, self._progress
        while True:
            if self._spend_check_due():
                await self._check_spend()
            if not self._outbox:
                if self._closing:
                    return
                wake.clear()
                with contextlib.suppress(TimeoutError):  # the spend marker is looked at
                    async with asyncio.timeout(
                            SPEND_CHECK_S if self.spend_source is not None else None):
                        await wake.wait()
                continue
            wait = self._down_until - time.monotonic()
            if wait > 0 and not self._closing:  # Redis is skipped for now; close() wakes
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await wake.wait()
                continue
            batch = [self._outbox.popleft()
                     for _ in range(min(OUTBOX_BATCH, len(self._outbox)))]
            try:
                await self._send(batch)
            except UNAVAILABLE as exc:
                self._failed(exc, "settle")
                cutoff = time.monotonic() - OUTBOX_RETRY_S
                keep = [op for op in batch if op.created >= cutoff]
                if len(keep) < len(batch):
                    for op in batch:
                        if op.created < cutoff:
                            self._forget(op)
                    self._drop(len(batch) - len(keep), "Redis unreachable for too long")
                self._outbox.extendleft(reversed(keep))
                if self._closing:  # one last try at shutdown; close() drops the rest
                    return
                if not keep:
                    self._done = max(self._done, batch[-1].seq)
            else:
                self._succeeded()
                for op in batch:
                    self._forget(op)
                self._done = max(self._done, batch[-1].seq)
            async with progress:
                progress.notify_all()

    async def _caught_up(self) -> None:
        """Read your own writes: before a read, wait (up to state.timeout_s) until what
        this replica queued so far has reached Redis."""
        target = self._queued
        progress = self._progress
        if self._done >= target or progress is None or self._worker is None \
                or self._worker.done():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._state.timeout_s), progress:
                await progress.wait_for(lambda: self._done >= target or not self.available)

    async def _send(self, batch: Sequence[Op]) -> None:
        """One settle.lua call per owner (all its keys share a hash tag), pipelined."""
        groups: dict[str, list[Op]] = {}
        for op in batch:
            groups.setdefault(op.owner, []).append(op)
        calls = list(groups.values())
        answers = list(zip(calls, await self._pipeline(calls), strict=True))
        missing = [ops for ops, r in answers if isinstance(r, NoScriptError)]
        if missing:  # Redis restarted: load the script and send those again
            await self.client.script_load(SETTLE.text)
            answers += zip(missing, await self._pipeline(missing), strict=True)
        for ops, results in answers:
            if isinstance(results, NoScriptError):
                continue
            if isinstance(results, Exception):
                self.errors += 1
                log.error("settlements failed in Redis: %s", results)
                continue
            for op, result in zip(ops, results, strict=True):
                if op.kind == "s":
                    self._settled(op, result)

    def _settled(self, op: Op, result: Any) -> None:
        applied, spent, *period = (result.decode() if isinstance(result, bytes)
                                   else result).split()
        name = op.owner.removeprefix("key:")
        if applied == "2":  # its reservation went with Redis's data: look at once
            self._suspect = True
        elif applied != "1" and op.args[2] == "0" and int(op.args[1]) > 0:
            self._suspect = True
            log.info("no reservation %s of key %s left to settle (settled by an earlier "
                     "try, or expired: then its spend is in the usage log only)",
                     op.args[0], name)
        if float(spent) >= 0:
            self._saw(name, from_units(float(spent)))
        if period and op.window is not None:
            self._saw_period(name, op.window, from_units(float(period[0])))

    async def _pipeline(self, calls: Sequence[Sequence[Op]]) -> list[Any]:
        """settle.lua once per call; an error answer comes back in place of its result."""
        async with self.client.pipeline(transaction=False) as pipe:
            for ops in calls:
                keys: list[str] = []
                argv: list[str | int] = [len(ops)]
                for op in ops:
                    keys += op.keys
                    argv += (op.kind, len(op.keys), len(op.args), *op.args)
                pipe.evalsha(SETTLE.sha, len(keys), *keys, *argv)
            return await pipe.execute(raise_on_error=False)

    async def flush(self) -> None:
        """Wait until every settlement queued so far has been sent (tests, benchmarks)."""
        target = self._queued
        while self._done < target and self._worker is not None and not self._worker.done():
            await asyncio.sleep(0.001)

    async def close(self) -> None:
        """Send what is queued (up to CLOSE_GRACE_S), then close the connections."""
        self._closing = True
        for handle, op in list(self._delayed.items()):  # undos: now, not later
            handle.cancel()
            self.enqueue_op(*op)
        self._delayed.clear()
        worker = self._worker
        if worker is not None and not worker.done():
            assert self._wake is not None
            self._wake.set()
            done, _ = await asyncio.wait({worker}, timeout=CLOSE_GRACE_S)
            if not done:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError, *UNAVAILABLE):
                    await worker
        if self._outbox:
            self._drop(len(self._outbox), "Redis unreachable at shutdown")
            self._outbox.clear()
        self._open.clear()
        self._closed = True
        await self.client.aclose()

