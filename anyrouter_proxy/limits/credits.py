"""Credit ledger (docs/api.md, "Money rules"); the cost arithmetic is in pricing.py.
Pure logic, no I/O.

Before dispatch the gateway reserves a request's worst-case cost against the key's
remaining credit and what its periodic budget has left (budget.py); afterwards the
reservation is settled to the real cost and the rest released. The ledger is only touched
from the event loop and never awaits, so check-and-reserve is atomic: N concurrent
requests cannot all see the same headroom.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

from anyrouter_proxy.config.model import Budget, KeyConfig
from anyrouter_proxy.errors import InsufficientCredits
from anyrouter_proxy.limits.budget import ADJECTIVES, BudgetStatus, PeriodSpend, iso

TOLERANCE = 1e-12  # float slack on the credit check (sums of reservations drift)


def insufficient_credits(name: str, credits: float, spent: float, reserved: float,
                         amount: float) -> InsufficientCredits:
    """The 402 for a key that cannot cover `amount`: one wording whichever backend keeps
    the balance (this process or Redis)."""
    remaining = max(0.0, credits - spent - reserved)
    return InsufficientCredits(
        f"Insufficient credits for key {name}: ${_usd(remaining)} remaining, "
        f"this request may cost up to ${_usd(amount)}",
        metadata={"key": name, "credits": credits, "spent": round(spent, 10),
                  "reserved": round(reserved, 10), "remaining": round(remaining, 10),
                  "requested": amount})


def budget_exceeded(name: str, status: BudgetStatus, amount: float) -> InsufficientCredits:
    """The 402 for a key whose budget period cannot cover `amount` (whichever backend keeps
    the balance): what is left, and when the period resets."""
    budget = status.budget
    return InsufficientCredits(
        f"Budget exceeded for key {name}: ${_usd(status.remaining)} of its "
        f"{ADJECTIVES[budget.period]} budget of ${_usd(budget.usd)} remaining until it "
        f"resets at {iso(status.window.end)}, this request may cost up to ${_usd(amount)}",
        code="budget_exceeded",
        metadata={"key": name, **status.as_json(), "requested": amount})


def _usd(amount: float) -> str:
    """Dollars with cents, and more decimals only when the amount needs them."""
    text = f"{amount:.6f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"{whole}.{cents.ljust(2, '0')}"


class CreditReservation:
    """A worst-case amount held against a key until the request's real cost is known."""

    __slots__ = ("_done", "_ledger", "amount", "at", "key_name")

    def __init__(self, ledger: CreditLedger, key_name: str, amount: float, at: float) -> None:
        self._ledger = ledger
        self._done = False
        self.key_name = key_name
        self.amount = amount
        self.at = at  # when it was reserved: its cost counts in that moment's periods

    @property
    def settled(self) -> bool:
        return self._done

    def settle(self, actual_cost: float) -> None:
        """Record the real cost as spent and release the reservation (first call wins).

        The real cost is recorded in full even above the reservation: spend is never hidden.
        A non-finite cost (broken pricing) is taken as the reserved amount.
        """
        if self._done:
            return
        self._done = True
        if not math.isfinite(actual_cost):
            actual_cost = self.amount
        self._ledger._settle(self.key_name, self.amount, max(0.0, actual_cost), self.at)

    def cancel(self) -> None:
        """Release without spending: the request never reached upstream."""
        self.settle(0.0)


class CreditLedger:
    """Spent (in all, and per budget period) and reserved USD per key name, in memory;
    rebuilt from the usage log at start. `clock` (Unix seconds) places periods."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._spent: dict[str, float] = {}
        self._reserved: dict[str, float] = {}
        self._open: dict[str, int] = {}  # outstanding reservations per key
        self._periods = PeriodSpend(clock())

    def load_spend(self, spend_by_key: Mapping[str, float]) -> None:
        """Set (not add) the spend of the given keys, e.g. sums from the usage log."""
        for name, amount in spend_by_key.items():
            self._spent[name] = max(0.0, float(amount))

    def load_period_spend(self, period: str, start: float,
                          spend_by_key: Mapping[str, float]) -> bool:
        """Set the spend of the given keys in the `period` that began at `start` (sums from
        the usage log); False when that period is over by now (nothing set)."""
        return self._periods.load(period, start, spend_by_key, self.clock())

    def reserve(self, key: KeyConfig, amount: float) -> CreditReservation:
        """Hold `amount` USD for a request, or raise InsufficientCredits (402): code
        insufficient_credits when the credits cannot cover it, else budget_exceeded when
        the budget's period cannot (its spend + all open reservations + amount > usd).

        Keys with `credits: None` are unlimited but still get a reservation, so their
        spend is recorded. `key.credits` and `key.budget` are read on every call: reloads
        apply at once.
        """
        if not math.isfinite(amount):
            raise ValueError(f"credit reservation must be finite, got {amount!r}")
        name, amount = key.name, max(0.0, amount)
        spent, reserved = self._spent.get(name, 0.0), self._reserved.get(name, 0.0)
        if key.credits is not None and spent + reserved + amount > key.credits + TOLERANCE:
            raise insufficient_credits(name, key.credits, spent, reserved, amount)
        now = self.clock()
        budget = key.budget
        if budget is not None and self._periods.spent(name, budget.period, now) + reserved \
                + amount > budget.usd + TOLERANCE:
            raise budget_exceeded(name, self._budget_status(name, budget, now), amount)
        self._reserved[name] = reserved + amount
        self._open[name] = self._open.get(name, 0) + 1
        return CreditReservation(self, name, amount, now)

    def _settle(self, name: str, reserved: float, actual: float, at: float) -> None:
        left = self._open.get(name, 0) - 1
        if left <= 0:  # nothing outstanding: drop accumulated float drift
            self._open.pop(name, None)
            self._reserved.pop(name, None)
        else:
            self._open[name] = left
            self._reserved[name] = max(0.0, self._reserved.get(name, 0.0) - reserved)
        self._spent[name] = self._spent.get(name, 0.0) + actual
        if actual:
            self._periods.add(name, at, actual, self.clock())

    def spent(self, key_name: str) -> float:
        return self._spent.get(key_name, 0.0)

    def reserved(self, key_name: str) -> float:
        return self._reserved.get(key_name, 0.0)

    def remaining(self, key: KeyConfig) -> float | None:
        """Credits minus spent and reserved, floored at 0; None when unlimited."""
        if key.credits is None:
            return None
        return max(0.0, key.credits - self.spent(key.name) - self.reserved(key.name))

    def note_period_spend(self, key_name: str, at: float, amount: float) -> None:
        """Count spend settled elsewhere (on the shared backend) in the periods holding
        `at`: this process's lower bound of a key's period spend."""
        if amount > 0:
            self._periods.add(key_name, at, amount, self.clock())

    def period_spent(self, key_name: str, period: str) -> float:
        """The key's spend in the current `period` (day, week or month)."""
        return self._periods.spent(key_name, period, self.clock())

    def budget(self, key: KeyConfig) -> BudgetStatus | None:
        """The key's budget in its current period; None when it has none."""
        if key.budget is None:
            return None
        return self._budget_status(key.name, key.budget, self.clock())

    def _budget_status(self, name: str, budget: Budget, now: float) -> BudgetStatus:
        return BudgetStatus(budget, self._periods.current(budget.period, now),
                            self._periods.spent(name, budget.period, now), self.reserved(name))
