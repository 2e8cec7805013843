"""Budget periods (anyrouter_proxy/budget.py): UTC day, week (from Monday) and calendar
month boundaries, the per-period spend and its rollover on a fake clock."""

from __future__ import annotations

import datetime as dt

import pytest

from anyrouter_proxy.config.model import Budget
from anyrouter_proxy.limits.budget import BudgetStatus, PeriodSpend, Window, iso, window


def ts(text: str) -> float:
    """Unix seconds of an ISO date-time in UTC."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(("now", "period", "start", "end"), [
    # a Wednesday afternoon
    ("2025-03-05T13:45:10", "day", "2025-03-05T00:00:00", "2025-03-06T00:00:00"),
    ("2025-03-05T13:45:10", "week", "2025-03-03T00:00:00", "2025-03-10T00:00:00"),
    ("2025-03-05T13:45:10", "month", "2025-03-01T00:00:00", "2025-04-01T00:00:00"),
    # the first instant of a period belongs to it, the last before it to the one before
    ("2025-03-03T00:00:00", "week", "2025-03-03T00:00:00", "2025-03-10T00:00:00"),
    ("2025-03-02T23:59:59.999", "week", "2025-02-24T00:00:00", "2025-03-03T00:00:00"),
    ("2025-03-02T23:59:59.999", "day", "2025-03-02T00:00:00", "2025-03-03T00:00:00"),
    ("2025-03-01T00:00:00", "month", "2025-03-01T00:00:00", "2025-04-01T00:00:00"),
    ("2025-02-28T23:59:59", "month", "2025-02-01T00:00:00", "2025-03-01T00:00:00"),
    # a week across a month and a year; December into January; a leap February
    ("2025-01-01T08:00:00", "week", "2024-12-30T00:00:00", "2025-01-06T00:00:00"),
    ("2024-12-31T23:00:00", "month", "2024-12-01T00:00:00", "2025-01-01T00:00:00"),
    ("2024-02-29T12:00:00", "month", "2024-02-01T00:00:00", "2024-03-01T00:00:00"),
    ("2024-02-29T12:00:00", "day", "2024-02-29T00:00:00", "2024-03-01T00:00:00"),
    # Sunday is the last day of the week
    ("2025-03-09T23:00:00", "week", "2025-03-03T00:00:00", "2025-03-10T00:00:00"),
])
def test_period_boundaries_are_utc(now: str, period: str, start: str, end: str) -> None:
    span = window(period, ts(now))
    assert span == Window(period, ts(start), ts(end))
    assert span.holds(ts(now))
    assert span.holds(ts(start)) and not span.holds(ts(end))


def test_unknown_period_is_an_error() -> None:
    with pytest.raises(ValueError, match="fortnight"):
        window("fortnight", 0.0)


def test_iso_is_utc_to_the_second_with_z() -> None:
    assert iso(ts("2025-03-10T00:00:00")) == "2025-03-10T00:00:00Z"
    assert iso(ts("2025-03-10T07:08:09.75")) == "2025-03-10T07:08:09Z"


def test_status_remaining_counts_reservations_and_is_floored() -> None:
    span = window("day", ts("2025-03-05T12:00:00"))
    status = BudgetStatus(Budget(usd=1.0, period="day"), span, spent=0.25, reserved=0.5)
    assert status.remaining == pytest.approx(0.25)
    assert status.as_json() == {
        "usd": 1.0, "period": "day", "period_start": "2025-03-05T00:00:00Z",
        "resets_at": "2025-03-06T00:00:00Z", "spent": 0.25, "reserved": 0.5,
        "remaining": 0.25}
    over = BudgetStatus(Budget(usd=1.0, period="day"), span, spent=1.5, reserved=0.0)
    assert over.remaining == 0.0


def test_spend_rolls_over_each_period_at_its_own_boundary() -> None:
    sunday = ts("2025-03-09T23:59:00")  # the last day of a week, in March
    spend = PeriodSpend(sunday)
    spend.add("alice", sunday, 1.0, sunday)
    spend.add("bob", sunday, 0.5, sunday)
    assert [spend.spent("alice", p, sunday) for p in ("day", "week", "month")] == [1, 1, 1]

    monday = ts("2025-03-10T00:00:00")
    assert spend.spent("alice", "day", monday) == 0  # a new day and a new week
    assert spend.spent("alice", "week", monday) == 0
    assert spend.spent("alice", "month", monday) == 1.0  # the same month
    assert spend.spent("bob", "month", monday) == 0.5
    assert spend.current("week", monday).start == monday

    april = ts("2025-04-01T00:00:01")
    assert spend.spent("alice", "month", april) == 0
    assert spend.current("month", april).start == ts("2025-04-01T00:00:00")


def test_cost_counts_in_the_periods_of_its_reservation() -> None:
    """A request reserved before midnight and settled after it is the old day's spend
    (as its usage row's created_at says), not the new day's; same month, so the month's."""
    before, after = ts("2025-03-05T23:59:59"), ts("2025-03-06T00:00:30")
    spend = PeriodSpend(before)
    spend.add("alice", before, 2.0, after)
    assert spend.spent("alice", "day", after) == 0
    assert spend.spent("alice", "week", after) == 2.0
    assert spend.spent("alice", "month", after) == 2.0
    spend.add("alice", after, 0.5, after)
    assert spend.spent("alice", "day", after) == 0.5


def test_load_sets_the_current_period_only() -> None:
    now = ts("2025-03-05T12:00:00")
    spend = PeriodSpend(now)
    spend.add("alice", now, 9.0, now)
    day = window("day", now)
    assert spend.load("day", day.start, {"alice": 1.5, "bob": -3}, now) is True
    assert spend.spent("alice", "day", now) == 1.5  # set, not added
    assert spend.spent("bob", "day", now) == 0.0
    assert spend.spent("alice", "week", now) == 9.0  # other periods untouched
    yesterday = window("day", now - 86400)
    assert spend.load("day", yesterday.start, {"alice": 7.0}, now) is False
    assert spend.spent("alice", "day", now) == 1.5
