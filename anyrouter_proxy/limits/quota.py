"""Where limits and credits live: in this process (`MemoryQuota`, the default) or shared
by several replicas (`redis_quota.RedisQuota`). The gateway only sees `Quota`.

Admissions and reservations are settled synchronously by the request's books; a shared
backend settles them in the background.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from ..config.model import Config, KeyConfig, ProviderConfig
from ..types import Interrupted
from .budget import BudgetStatus
from .credits import CreditLedger
from .ratelimit import Limiter


class Held(Protocol):
    """A limits admission: tokens settled to the real count, slots released."""

    def settle_tokens(self, actual_tokens: int) -> None: ...

    def release(self) -> None: ...


class Reserved(Protocol):
    """A credit reservation, held against the key's credits and its budget's period at
    once: settled to the real cost (or cancelled)."""

    def settle(self, actual_cost: float) -> None: ...

    def cancel(self) -> None: ...


class _NothingHeld:
    """An admission that holds no limit."""

    def settle_tokens(self, actual_tokens: int) -> None:
        pass

    def release(self) -> None:
        pass


NOTHING_HELD: Held = _NothingHeld()


class Quota(Protocol):
    def reconfigure(self, config: Config) -> None: ...

    async def admit(self, key: KeyConfig, model_id: str, estimated_tokens: int) -> Held: ...

    async def admit_provider(self, provider: ProviderConfig,
                             estimated_tokens: int) -> Held | None: ...

    async def admit_model(self, key: KeyConfig, model_id: str, admitted_model_id: str,
                          estimated_tokens: int) -> Held | None:
        """An attempt on a fallback model: its model_limits entries not already held by
        the admission of `admitted_model_id`; None when one is exhausted."""
        ...

    async def rate_headers(self, key: KeyConfig) -> dict[str, str]: ...

    async def in_flight(self, key_name: str) -> int: ...

    async def reserve(self, key: KeyConfig, amount: float) -> Reserved: ...

    async def spent(self, key_name: str) -> float: ...

    async def remaining(self, key: KeyConfig) -> float | None: ...

    async def load_spend(self, spend_by_key: Mapping[str, float]) -> None: ...

    async def charge_interrupted(self, charges: Sequence[Interrupted]) -> None:
        """After `load_spend` at start: requests an earlier process died with, whose usage
        rows the start has just written (each charge once, whatever the backend saw)."""
        ...

    async def budget(self, key: KeyConfig) -> BudgetStatus | None:
        """The key's budget in its current period; None when it has none."""
        ...

    async def load_period_spend(self, period: str, start: float,
                                spend_by_key: Mapping[str, float]) -> None:
        """The usage log's spend per key since `start`, the start of the current `period`
        (day, week or month), at start-up."""
        ...

    async def close(self) -> None: ...

    async def probe(self) -> bool:
        """Is the backend usable right now (health checks)?"""
        ...


class MemoryQuota:
    """Token buckets and the credit ledger in this process (the default; Redis is the
    other backend, docs/operations.md)."""

    def __init__(self, limiter: Limiter, ledger: CreditLedger) -> None:
        self.limiter = limiter
        self.ledger = ledger

    def reconfigure(self, config: Config) -> None:
        self.limiter.reconfigure(config)

    async def admit(self, key: KeyConfig, model_id: str, estimated_tokens: int) -> Held:
        return self.limiter.admit(key, model_id, estimated_tokens)

    async def admit_provider(self, provider: ProviderConfig,
                             estimated_tokens: int) -> Held | None:
        return self.limiter.admit_provider(provider, estimated_tokens)

    async def admit_model(self, key: KeyConfig, model_id: str, admitted_model_id: str,
                          estimated_tokens: int) -> Held | None:
        return self.limiter.admit_model(key, model_id, admitted_model_id, estimated_tokens)

    async def rate_headers(self, key: KeyConfig) -> dict[str, str]:
        return self.limiter.headers(key)

    async def in_flight(self, key_name: str) -> int:
        return self.limiter.in_flight(key_name)

    async def reserve(self, key: KeyConfig, amount: float) -> Reserved:
        return self.ledger.reserve(key, amount)

    async def spent(self, key_name: str) -> float:
        return self.ledger.spent(key_name)

    async def remaining(self, key: KeyConfig) -> float | None:
        return self.ledger.remaining(key)

    async def load_spend(self, spend_by_key: Mapping[str, float]) -> None:
        self.ledger.load_spend(spend_by_key)

    async def charge_interrupted(self, charges: Sequence[Interrupted]) -> None:
        pass  # load_spend's sums, read after the rows were written, hold them already

    async def budget(self, key: KeyConfig) -> BudgetStatus | None:
        return self.ledger.budget(key)

    async def load_period_spend(self, period: str, start: float,
                                spend_by_key: Mapping[str, float]) -> None:
        self.ledger.load_period_spend(period, start, spend_by_key)

    async def close(self) -> None:
        pass

    async def probe(self) -> bool:
        return True
