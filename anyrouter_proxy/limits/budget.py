"""Periodic budgets: UTC periods, the spend per key in the current ones, and a key's
standing in its period. Pure logic, no I/O (the ledger in credits.py uses it).

A period is a UTC day (from 00:00), week (from Monday 00:00) or calendar month (from
the 1st, 00:00). A request is charged to the period in which its cost was reserved,
which is also the period of its usage row's `created_at`: the spend rebuilt from the
usage log at start-up is the spend counted live. A request still running when its period
ends keeps its reservation held (against the new period too) until it settles.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config.model import Budget

PERIODS = ("day", "week", "month")
ADJECTIVES = {"day": "daily", "week": "weekly", "month": "monthly"}


@dataclass(frozen=True, slots=True)
class Window:
    """One period: [start, end) in Unix seconds."""

    period: str
    start: float
    end: float

    def holds(self, at: float) -> bool:
        return self.start <= at < self.end


def window(period: str, now: float) -> Window:
    """The period (day, week or month, UTC) that contains `now` (Unix seconds)."""
    day = dt.datetime.fromtimestamp(now, dt.UTC).replace(hour=0, minute=0, second=0,
                                                         microsecond=0)
    if period == "day":
        start, end = day, day + dt.timedelta(days=1)
    elif period == "week":
        start = day - dt.timedelta(days=day.weekday())  # Monday is 0
        end = start + dt.timedelta(days=7)
    elif period == "month":
        start = day.replace(day=1)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 \
            else start.replace(month=start.month + 1)
    else:
        raise ValueError(f"unknown budget period {period!r}")
    return Window(period, start.timestamp(), end.timestamp())


def iso(ts: float) -> str:
    """ISO 8601 UTC with a Z, to the second: 2025-01-06T00:00:00Z."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds") \
        .replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """A key's budget in its current period: spent (settled) and reserved (in flight)."""

    budget: Budget
    window: Window
    spent: float
    reserved: float

    @property
    def remaining(self) -> float:
        return max(0.0, self.budget.usd - self.spent - self.reserved)

    def as_json(self) -> dict[str, Any]:
        return {"usd": self.budget.usd, "period": self.budget.period,
                "period_start": iso(self.window.start), "resets_at": iso(self.window.end),
                "spent": round(self.spent, 10), "reserved": round(self.reserved, 10),
                "remaining": round(self.remaining, 10)}


class PeriodSpend:
    """Spend per key in the current day, week and month, rolled over as time passes (each
    call says what time it is: the owner's clock).

    Every key and every period is counted, not only the budgets configured now, so that a
    budget added or changed by a reload counts its period from the start. A cost is added
    to the periods that hold the moment it was reserved (`at`): a request reserved before
    a rollover and settled after it counts in the period it began in.
    """

    def __init__(self, now: float) -> None:
        self._windows = {period: window(period, now) for period in PERIODS}
        self._spent: dict[str, dict[str, float]] = {period: {} for period in PERIODS}
        self._next_end = min(w.end for w in self._windows.values())

    def _roll(self, now: float) -> None:
        if now < self._next_end:
            return
        for period, current in self._windows.items():
            if now >= current.end:
                self._windows[period] = window(period, now)
                self._spent[period] = {}
        self._next_end = min(w.end for w in self._windows.values())

    def current(self, period: str, now: float) -> Window:
        self._roll(now)
        return self._windows[period]

    def spent(self, name: str, period: str, now: float) -> float:
        self._roll(now)
        return self._spent[period].get(name, 0.0)

    def add(self, name: str, at: float, amount: float, now: float) -> None:
        self._roll(now)
        for period, current in self._windows.items():
            if current.holds(at):
                spent = self._spent[period]
                spent[name] = spent.get(name, 0.0) + amount

    def load(self, period: str, start: float, spend_by_key: Mapping[str, float],
             now: float) -> bool:
        """Set (not add) the spend of the given keys in the period that began at `start`;
        False (nothing set) when that period is not the current one."""
        if self.current(period, now).start != start:
            return False
        spent = self._spent[period]
        for name, amount in spend_by_key.items():
            spent[name] = max(0.0, float(amount))
        return True
