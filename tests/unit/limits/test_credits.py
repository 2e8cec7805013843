"""Cost arithmetic, prompt estimates and the credit ledger (credits and budgets)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from types import MappingProxyType

import pytest

from anyrouter_proxy.config.model import Budget, KeyConfig, Limits, Pricing
from anyrouter_proxy.errors import InsufficientCredits
from anyrouter_proxy.limits.credits import CreditLedger
from anyrouter_proxy.pricing import (
    IMAGE_TOKENS,
    estimate_prompt_tokens,
    request_cost,
    worst_case_cost,
)
from anyrouter_proxy.types import Usage


def make_key(credits: float | None, name: str = "alice") -> KeyConfig:
    return KeyConfig(name=name, key_sha256="0" * 64, limits=Limits(), credits=credits)


# --- request_cost ---------------------------------------------------------------------------


def test_cost_plain_prompt_and_completion() -> None:
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=500_000)
    assert request_cost(Pricing(prompt=0.15, completion=0.60), usage) == pytest.approx(0.45)


def test_cost_bills_cached_tokens_at_cached_price() -> None:
    usage = Usage(prompt_tokens=1000, cached_tokens=400, completion_tokens=0)
    pricing = Pricing(prompt=3.0, completion=15.0, cached_prompt=0.3)
    assert request_cost(pricing, usage) == pytest.approx((600 * 3.0 + 400 * 0.3) / 1e6)


def test_cost_cached_tokens_without_cached_price_pay_prompt_price() -> None:
    usage = Usage(prompt_tokens=1000, cached_tokens=400)
    assert request_cost(Pricing(prompt=3.0), usage) == pytest.approx(1000 * 3.0 / 1e6)


def test_cost_bills_reasoning_inside_completion_at_reasoning_price() -> None:
    usage = Usage(completion_tokens=1000, reasoning_tokens=800)
    pricing = Pricing(completion=10.0, reasoning=20.0)
    assert request_cost(pricing, usage) == pytest.approx((800 * 20.0 + 200 * 10.0) / 1e6)


def test_cost_reasoning_without_reasoning_price_is_plain_completion() -> None:
    usage = Usage(completion_tokens=1000, reasoning_tokens=800)
    assert request_cost(Pricing(completion=10.0), usage) == pytest.approx(0.01)


def test_cost_is_rounded_to_ten_decimals() -> None:
    cost = request_cost(Pricing(prompt=0.15), Usage(prompt_tokens=1))
    assert cost == 1.5e-07
    assert request_cost(Pricing(prompt=1 / 3), Usage(prompt_tokens=1)) == 3.333e-07


def test_cost_tolerates_inconsistent_counts() -> None:
    usage = Usage(prompt_tokens=10, cached_tokens=50, completion_tokens=5, reasoning_tokens=9)
    pricing = Pricing(prompt=1.0, completion=1.0, cached_prompt=0.5, reasoning=2.0)
    assert request_cost(pricing, usage) == pytest.approx((10 * 0.5 + 5 * 2.0) / 1e6)


# --- worst_case_cost ------------------------------------------------------------------------


def test_worst_case_is_prompt_and_output_at_their_prices() -> None:
    pricing = Pricing(prompt=1.0, completion=2.0)
    assert worst_case_cost(pricing, 1000, 100) == pytest.approx((1000 + 200) / 1e6)


def test_worst_case_of_no_output_is_the_prompt_alone() -> None:
    assert worst_case_cost(Pricing(prompt=1.0, completion=2.0), 1000, 0) == pytest.approx(
        1000 / 1e6)


def test_worst_case_uses_the_dearer_of_completion_and_reasoning() -> None:
    pricing = Pricing(prompt=0.0, completion=2.0, reasoning=5.0)
    assert worst_case_cost(pricing, 0, 1000) == pytest.approx(5000 / 1e6)


def test_worst_case_bounds_the_real_cost() -> None:
    pricing = Pricing(prompt=3.0, completion=15.0, cached_prompt=0.3, reasoning=20.0)
    usage = Usage(prompt_tokens=900, cached_tokens=100, completion_tokens=256,
                  reasoning_tokens=200)
    assert request_cost(pricing, usage) <= worst_case_cost(pricing, 900, 256)


# --- estimate_prompt_tokens -----------------------------------------------------------------


def test_estimate_chat_messages_counts_text_and_overhead() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 296}]}
    # "user" + 296 chars = 300 chars -> 100 tokens, + 4 per message + 3 priming
    assert estimate_prompt_tokens(body) == 107


def test_estimate_ignores_non_prompt_fields() -> None:
    body = {"model": "a-very-long-model-name" * 100, "user": "u" * 9999, "messages": []}
    assert estimate_prompt_tokens(body) == 3


def test_estimate_counts_images_flat_not_by_base64_length() -> None:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 10**6}}
    body = {"messages": [{"role": "user", "content": [part]}]}
    assert estimate_prompt_tokens(body) == IMAGE_TOKENS + 2 + 4 + 3  # "user" rounds to 2


def test_estimate_token_arrays_count_one_each() -> None:
    assert estimate_prompt_tokens({"prompt": [1, 2, 3, 4]}) == 4
    assert estimate_prompt_tokens({"input": [[1, 2], [3]]}) == 3


def test_estimate_anthropic_system_and_tools() -> None:
    body = {"system": "s" * 30, "tools": [{"name": "n" * 30}], "messages": []}
    assert estimate_prompt_tokens(body) == 20 + 3


def test_estimate_counts_non_ascii_by_utf8_bytes() -> None:
    assert estimate_prompt_tokens({"prompt": "日本語"}) == 3  # 9 bytes


def test_estimate_counts_kin_of_json_types_as_json() -> None:
    """Bodies built in code (batch items, translations) may hold tuples, mappings other
    than dict, str subclasses: counted as the JSON they become."""
    class Text(str):
        pass

    json_body = {"messages": [{"role": "user", "content": ["x" * 30, 1.5, True, None]}],
                 "tools": [{"name": "n" * 9, "image": {"type": "image_url"}}]}
    kin_body = {"messages": [MappingProxyType({"role": Text("user"),
                                               "content": ("x" * 30, 1.5, True, None)})],
                "tools": ({"name": Text("n" * 9), "image": MappingProxyType(
                    {"type": "image_url"})},)}
    assert estimate_prompt_tokens(kin_body) == estimate_prompt_tokens(json_body) \
        == IMAGE_TOKENS + 2 + 15 + 4 + 3  # 2 numbers; "user" + 30 + 9 chars round to 15


@pytest.mark.parametrize(
    "body",
    [{}, {"messages": None}, {"messages": "text"}, {"messages": [None, 3, {"content": {}}]},
     {"prompt": {"x": [object()]}}, {"input": True}],
)
def test_estimate_never_raises_on_odd_shapes(body: dict[str, object]) -> None:
    assert estimate_prompt_tokens(body) >= 0


def test_estimate_survives_deep_nesting() -> None:
    nested: object = "abc"
    for _ in range(5000):
        nested = [nested]
    assert estimate_prompt_tokens({"input": nested}) == 1


# --- CreditLedger ---------------------------------------------------------------------------


def test_reservation_exactly_at_credits_fits() -> None:
    ledger, key = CreditLedger(), make_key(1.00)
    reservation = ledger.reserve(key, 1.00)
    assert ledger.reserved("alice") == 1.00
    assert ledger.remaining(key) == 0.0
    reservation.settle(1.00)
    assert ledger.spent("alice") == 1.00


def test_reservation_one_cent_over_is_refused_with_402() -> None:
    ledger, key = CreditLedger(), make_key(1.00)
    with pytest.raises(InsufficientCredits) as info:
        ledger.reserve(key, 1.01)
    assert info.value.status == 402 and info.value.code == "insufficient_credits"
    assert info.value.message == (
        "Insufficient credits for key alice: $1.00 remaining, this request may cost up to $1.01"
    )
    assert ledger.reserved("alice") == 0.0


def test_hundred_reservations_against_credit_for_ten_admit_exactly_ten() -> None:
    ledger, key = CreditLedger(), make_key(0.30)
    admitted, refused = [], 0
    for _ in range(100):
        try:
            admitted.append(ledger.reserve(key, 0.03))
        except InsufficientCredits:
            refused += 1
    assert (len(admitted), refused) == (10, 90)
    for i, reservation in enumerate(admitted):
        reservation.settle(0.01 + 0.002 * i)  # real costs below the worst case
    assert ledger.spent("alice") <= 0.30
    assert ledger.reserved("alice") == 0.0


def test_settle_is_idempotent_and_releases_the_rest() -> None:
    ledger, key = CreditLedger(), make_key(1.00)
    reservation = ledger.reserve(key, 0.50)
    reservation.settle(0.20)
    reservation.settle(0.40)
    reservation.cancel()
    assert ledger.spent("alice") == pytest.approx(0.20)
    assert ledger.reserved("alice") == 0.0
    assert ledger.remaining(key) == pytest.approx(0.80)


def test_cancel_releases_without_spending() -> None:
    ledger, key = CreditLedger(), make_key(1.00)
    ledger.reserve(key, 0.60).cancel()
    assert ledger.spent("alice") == 0.0
    ledger.reserve(key, 1.00)


def test_reserved_counts_only_open_reservations() -> None:
    ledger, key = CreditLedger(), make_key(1.00)
    first, second = ledger.reserve(key, 0.1), ledger.reserve(key, 0.2)
    first.settle(0.05)
    assert ledger.reserved("alice") == pytest.approx(0.2)
    assert ledger.remaining(key) == pytest.approx(0.75)
    second.cancel()


def test_settle_above_reservation_records_the_real_spend() -> None:
    ledger, key = CreditLedger(), make_key(1.00)
    ledger.reserve(key, 0.10).settle(1.50)
    assert ledger.spent("alice") == 1.50
    assert ledger.remaining(key) == 0.0
    with pytest.raises(InsufficientCredits):
        ledger.reserve(key, 0.0)


def test_load_spend_makes_a_restarted_ledger_refuse() -> None:
    key = make_key(1.00)
    before = CreditLedger()
    before.reserve(key, 0.90).settle(0.90)
    restarted = CreditLedger()
    restarted.load_spend({"alice": before.spent("alice")})
    assert restarted.remaining(key) == pytest.approx(0.10)
    with pytest.raises(InsufficientCredits):
        restarted.reserve(key, 0.20)


def test_unlimited_key_still_records_spend() -> None:
    ledger, key = CreditLedger(), make_key(None)
    reservation = ledger.reserve(key, 10**6)
    assert ledger.remaining(key) is None
    reservation.settle(2.5)
    assert ledger.spent("alice") == 2.5


def test_raised_credits_apply_at_once() -> None:
    ledger = CreditLedger()
    ledger.reserve(make_key(1.00), 1.00).settle(1.00)
    with pytest.raises(InsufficientCredits):
        ledger.reserve(make_key(1.00), 0.01)
    ledger.reserve(make_key(2.00), 0.50)


def test_keys_have_separate_budgets() -> None:
    ledger = CreditLedger()
    ledger.reserve(make_key(1.00, "alice"), 1.00).settle(1.00)
    ledger.reserve(make_key(1.00, "bob"), 1.00)
    assert ledger.spent("bob") == 0.0


# --- budgets ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, iso: str) -> None:
        self.now = at(iso)

    def __call__(self) -> float:
        return self.now


def at(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).replace(tzinfo=dt.UTC).timestamp()


def budget_key(usd: float, period: str = "day", credits: float | None = None) -> KeyConfig:
    return dataclasses.replace(make_key(credits), budget=Budget(usd=usd, period=period))


def test_budget_boundary_is_exact_and_counts_open_reservations() -> None:
    ledger = CreditLedger(FakeClock("2025-03-05T12:00:00"))
    key = budget_key(1.00)
    ledger.reserve(key, 0.40).settle(0.40)
    held = ledger.reserve(key, 0.50)  # 0.40 spent + 0.50 held + 0.10 = 1.00: fits
    ledger.reserve(key, 0.10)
    with pytest.raises(InsufficientCredits) as info:
        ledger.reserve(key, 0.01)
    exc = info.value
    assert (exc.status, exc.type, exc.code) == (402, "insufficient_credits", "budget_exceeded")
    assert exc.message == (
        "Budget exceeded for key alice: $0.00 of its daily budget of $1.00 remaining until "
        "it resets at 2025-03-06T00:00:00Z, this request may cost up to $0.01")
    assert exc.metadata == {
        "key": "alice", "usd": 1.0, "period": "day", "period_start": "2025-03-05T00:00:00Z",
        "resets_at": "2025-03-06T00:00:00Z", "spent": pytest.approx(0.40),
        "reserved": pytest.approx(0.60), "remaining": pytest.approx(0.0),
        "requested": 0.01}
    held.settle(0.05)  # the rest of the worst case goes back to the period
    ledger.reserve(key, 0.45)
    status = ledger.budget(key)
    assert status is not None
    assert (status.spent, status.reserved) == (pytest.approx(0.45), pytest.approx(0.55))


def test_hundred_reservations_on_a_budget_for_ten_admit_exactly_ten() -> None:
    ledger = CreditLedger(FakeClock("2025-03-05T12:00:00"))
    key = budget_key(0.30, "week")
    admitted = []
    for _ in range(100):
        try:
            admitted.append(ledger.reserve(key, 0.03))
        except InsufficientCredits as exc:
            assert exc.code == "budget_exceeded"
    assert len(admitted) == 10
    for reservation in admitted:
        reservation.settle(0.03)
    assert ledger.period_spent("alice", "week") == pytest.approx(0.30)


def test_budget_resets_at_the_rollover_without_a_restart() -> None:
    clock = FakeClock("2025-03-09T23:00:00")  # a Sunday
    ledger, key = CreditLedger(clock), budget_key(1.00, "day")
    ledger.reserve(key, 1.00).settle(1.00)
    with pytest.raises(InsufficientCredits):
        ledger.reserve(key, 0.01)
    clock.now = at("2025-03-10T00:00:00")
    ledger.reserve(key, 1.00).settle(0.25)
    status = ledger.budget(key)
    assert status is not None
    assert status.as_json()["period_start"] == "2025-03-10T00:00:00Z"
    assert (status.spent, status.remaining) == (0.25, 0.75)
    assert ledger.spent("alice") == 1.25  # the lifetime spend goes on
    weekly = budget_key(1.00, "week")  # a reload to a weekly budget: a new week, too
    assert ledger.period_spent("alice", "week") == 0.25
    ledger.reserve(weekly, 0.75)


def test_request_across_midnight_is_the_old_days_spend_and_holds_meanwhile() -> None:
    clock = FakeClock("2025-03-05T23:59:50")
    ledger, key = CreditLedger(clock), budget_key(1.00, "day")
    running = ledger.reserve(key, 0.80)
    clock.now = at("2025-03-06T00:00:10")
    with pytest.raises(InsufficientCredits):  # still held: the new day cannot spend it yet
        ledger.reserve(key, 0.30)
    running.settle(0.70)
    assert ledger.period_spent("alice", "day") == 0.0
    assert ledger.period_spent("alice", "month") == pytest.approx(0.70)
    ledger.reserve(key, 1.00)


def test_credits_are_checked_before_the_budget() -> None:
    ledger = CreditLedger(FakeClock("2025-03-05T12:00:00"))
    key = budget_key(1.00, credits=0.50)
    with pytest.raises(InsufficientCredits) as info:
        ledger.reserve(key, 2.00)
    assert info.value.code == "insufficient_credits"
    with pytest.raises(InsufficientCredits) as info:
        ledger.reserve(budget_key(1.00, credits=5.00), 2.00)
    assert info.value.code == "budget_exceeded"


def test_zero_budget_refuses_all_but_free_requests() -> None:
    ledger, key = CreditLedger(FakeClock("2025-03-05T12:00:00")), budget_key(0.0, "month")
    ledger.reserve(key, 0.0).settle(0.0)
    with pytest.raises(InsufficientCredits):
        ledger.reserve(key, 1e-9)


def test_loaded_period_spend_makes_a_restarted_ledger_refuse() -> None:
    clock = FakeClock("2025-03-05T12:00:00")
    key = budget_key(1.00, "month")
    restarted = CreditLedger(clock)
    assert restarted.load_period_spend("month", at("2025-03-01T00:00:00"), {"alice": 0.9})
    assert not restarted.load_period_spend("month", at("2025-02-01T00:00:00"), {"alice": 5})
    with pytest.raises(InsufficientCredits):
        restarted.reserve(key, 0.2)
    restarted.reserve(key, 0.1)


def test_a_budget_added_by_a_reload_counts_its_period_from_the_start() -> None:
    ledger = CreditLedger(FakeClock("2025-03-05T12:00:00"))
    ledger.reserve(make_key(None), 0.8).settle(0.8)  # no budget yet: spend still counted
    with pytest.raises(InsufficientCredits):
        ledger.reserve(budget_key(1.00, "week"), 0.3)


def test_key_without_budget_reports_none() -> None:
    assert CreditLedger().budget(make_key(1.0)) is None
