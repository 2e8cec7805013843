"""What the Redis quota hands out and queues: the admission and reservation handles
(`Held`, `Reserved`; synchronous, their settling queued for the background sender), and
the small records of its scopes, periods, queued operations and header cache."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..config.model import Limits
from .budget import Window
from .credits import CreditReservation
from .quota import MemoryQuota


class Settlements(Protocol):
    """The quota's side of a handle: where its settling is queued."""

    local: MemoryQuota

    def enqueue_op(self, kind: str, owner: str, keys: tuple[str, ...],
                   args: tuple[str | int, ...], *, window: Window | None = None) -> None: ...

    def settle_spend(self, name: str, rid: str, actual: float, *, orphan: bool,
                     period: Period | None = None) -> None: ...

    def new_id(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Scope:
    owner: str  # the hash tag: "key:NAME" or "provider:ID"
    bucket: str  # hash: rpm and tpm buckets
    inflight: str  # sorted set: concurrency slots
    limits: Limits
    pattern: str | None = None  # the model_limits entry, for a model scope


@dataclass(slots=True)
class Op:
    """One queued operation of lua/settle.lua, retried as is until it is sent."""

    kind: str  # t (tokens), r (release), s (settle credit)
    owner: str  # ops of one owner go in one script call
    keys: tuple[str, ...]
    args: tuple[str | int, ...]
    created: float
    seq: int
    window: Window | None = None  # the budget period a settlement counts in


@dataclass(frozen=True, slots=True)
class Period:
    """The budget period a reservation counts in: its spend's Redis key and expiry."""

    key: str
    window: Window
    expire_at_ms: int


@dataclass(slots=True)
class RateCache:
    capacity: int
    level: float
    until_full: float
    at: float  # monotonic


class _NoLimits:
    """A provider without limits: nothing to hold, no round trip."""

    def settle_tokens(self, actual_tokens: int) -> None:
        pass

    def release(self) -> None:
        pass


NO_LIMITS = _NoLimits()


class RedisHeld:
    """An admission in Redis; settling and releasing are queued, never awaited."""

    __slots__ = ("_estimate", "_inflight", "_member", "_owner", "_quota", "_released",
                 "_settled", "_tpm")

    def __init__(self, quota: Settlements, member: str, scopes: Sequence[Scope],
                 estimate: int) -> None:
        self._quota = quota
        self._owner = scopes[0].owner
        self._member = member
        self._inflight = tuple(s.inflight for s in scopes)
        self._tpm = tuple((s.bucket, s.limits.tokens_per_minute) for s in scopes
                          if s.limits.tokens_per_minute is not None)
        self._estimate = estimate
        self._settled = False
        self._released = False

    def settle_tokens(self, actual_tokens: int) -> None:
        if self._settled:
            return
        self._settled = True
        diff = max(0, actual_tokens) - self._estimate
        if diff == 0 or not self._tpm:
            return
        self._quota.enqueue_op("t", self._owner, tuple(b for b, _ in self._tpm),
                             (diff, *(cap for _, cap in self._tpm)))

    def release(self) -> None:
        self._settled = True
        if self._released:
            return
        self._released = True
        self._quota.enqueue_op("r", self._owner, self._inflight, (self._member,))


class RedisReserved:
    """A credit reservation in Redis; settling is queued, never awaited."""

    __slots__ = ("_at", "_done", "_period", "_quota", "amount", "key_name", "rid")

    def __init__(self, quota: Settlements, key_name: str, rid: str, amount: float,
                 at: float, period: Period | None = None) -> None:
        self._quota = quota
        self._done = False
        self._at = at
        self._period = period
        self.key_name = key_name
        self.rid = rid
        self.amount = amount

    def settle(self, actual_cost: float) -> None:
        """The real cost becomes spend (in full, even above the reservation); first call wins."""
        if self._done:
            return
        self._done = True
        if not math.isfinite(actual_cost):
            actual_cost = self.amount
        actual_cost = max(0.0, actual_cost)
        self._quota.settle_spend(self.key_name, self.rid, actual_cost, orphan=False,
                            period=self._period)
        self._quota.local.ledger.note_period_spend(self.key_name, self._at, actual_cost)

    def cancel(self) -> None:
        self.settle(0.0)


class LocalReserved:
    """A reservation on this process's ledger (Redis unreachable, credits fail open); its
    spend is also queued for Redis, so the shared spend catches up when Redis returns."""

    __slots__ = ("_inner", "_period", "_quota", "key_name")

    def __init__(self, quota: Settlements, key_name: str, inner: CreditReservation,
                 period: Period | None = None) -> None:
        self._quota = quota
        self._inner = inner
        self._period = period
        self.key_name = key_name

    def settle(self, actual_cost: float) -> None:
        if self._inner.settled:
            return
        self._inner.settle(actual_cost)
        if not math.isfinite(actual_cost):
            actual_cost = self._inner.amount
        actual_cost = max(0.0, actual_cost)
        self._quota.settle_spend(self.key_name, self._quota.new_id(), actual_cost, orphan=True,
                            period=self._period)

    def cancel(self) -> None:
        self.settle(0.0)
