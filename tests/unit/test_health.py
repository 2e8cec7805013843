"""health.py: the circuit breaker state machine, uptime windows and percentiles, under a
fake clock (every call takes `now` explicitly)."""

from __future__ import annotations

import logging

import pytest

from anyrouter_proxy.health import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerPolicy,
    HealthBoard,
    ProviderHealth,
)

T0 = 1_000_020.0  # a little past a minute boundary (1_000_020 = 16_667 * 60)


def breaker(failures: int = 2, cooldown_s: float = 10.0) -> ProviderHealth:
    return ProviderHealth("acme", BreakerPolicy(failures=failures, cooldown_s=cooldown_s))


def opened(at: float = T0) -> ProviderHealth:
    health = breaker()
    health.failure(at)
    health.failure(at)
    assert health.state == OPEN
    return health


# -- the state machine ----------------------------------------------------------------------


def test_closed_until_n_consecutive_failures() -> None:
    health = breaker(failures=3)
    assert health.state == CLOSED and health.available(T0)
    health.failure(T0)
    health.failure(T0 + 1)
    assert health.state == CLOSED and health.available(T0 + 1)
    health.failure(T0 + 2)
    assert health.state == OPEN
    assert health.snapshot(T0 + 2)["consecutive_failures"] == 3


def test_success_resets_the_consecutive_count() -> None:
    health = breaker(failures=2)
    for i in range(5):  # failure, success, failure, success...: never two in a row
        health.failure(T0 + i)
        health.success(T0 + i, latency_ms=10)
    assert health.state == CLOSED
    assert health.snapshot(T0 + 5)["consecutive_failures"] == 0


def test_open_skips_during_cooldown_without_claiming() -> None:
    health = opened()
    assert not health.available(T0)
    assert not health.available(T0 + 9.99)
    assert not health.would_be_available(T0 + 9.99)
    assert health.state == OPEN


def test_half_open_allows_exactly_one_probe() -> None:
    health = opened()
    assert health.would_be_available(T0 + 10)  # reporting claims nothing...
    assert health.would_be_available(T0 + 10)
    assert health.state == OPEN
    assert health.available(T0 + 10)  # ...the first real request claims the probe
    assert health.state == HALF_OPEN
    assert not health.available(T0 + 10.5)  # a concurrent request is still skipped
    assert not health.available(T0 + 60)
    assert not health.would_be_available(T0 + 60)


def test_probe_success_closes() -> None:
    health = opened()
    assert health.available(T0 + 10)
    health.success(T0 + 10, latency_ms=50)
    assert health.state == CLOSED
    assert health.available(T0 + 10) and health.available(T0 + 10)
    assert health.snapshot(T0 + 10)["consecutive_failures"] == 0


def test_probe_failure_reopens_for_a_new_cooldown() -> None:
    health = opened()
    assert health.available(T0 + 10)
    health.failure(T0 + 12)  # a single failure is enough while half-open
    assert health.state == OPEN
    assert not health.available(T0 + 21.9)  # cooldown counted from the re-opening
    assert health.available(T0 + 22)
    assert health.state == HALF_OPEN


def test_release_probe_lets_the_next_request_probe() -> None:
    health = opened()
    assert health.available(T0 + 10)
    assert not health.available(T0 + 10)
    health.release_probe()  # e.g. the provider's own limit turned the request away
    assert health.state == HALF_OPEN
    assert health.would_be_available(T0 + 10)
    assert health.available(T0 + 10)
    assert not health.available(T0 + 10)


def test_release_probe_when_closed_is_harmless() -> None:
    health = breaker()
    health.release_probe()
    assert health.state == CLOSED and health.available(T0)


def test_snapshot_reports_open_then_half_open_after_cooldown() -> None:
    health = opened()
    assert health.snapshot(T0 + 5)["circuit"] == OPEN
    assert health.snapshot(T0 + 10)["circuit"] == HALF_OPEN  # the next request will probe
    assert health.state == OPEN  # ...but reporting changed nothing


def test_state_changes_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="anyrouter_proxy.health"):
        health = opened()
        health.available(T0 + 10)
        health.success(T0 + 10, latency_ms=1)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["circuit breaker of provider acme: closed -> open",
                        "circuit breaker of provider acme: open -> half_open",
                        "circuit breaker of provider acme: half_open -> closed"]


# -- uptime windows --------------------------------------------------------------------------


def test_uptime_is_none_without_traffic() -> None:
    assert breaker().snapshot(T0)["uptime"] == {"5m": None, "30m": None, "1d": None}


def test_uptime_windows() -> None:
    health = breaker(failures=100)
    now = T0 + 3 * 3600
    health.failure(now - 3 * 3600 + 5)  # in 1d only
    health.failure(now - 3000)  # in 1d only
    health.failure(now - 1200)  # in 30m and 1d
    for _ in range(3):
        health.success(now - 100, latency_ms=10)  # everywhere
    assert health.snapshot(now)["uptime"] == {"5m": 100.0, "30m": 75.0, "1d": 50.0}
    assert health.uptime(now, 300) == 100.0


def test_uptime_forgets_after_a_day() -> None:
    health = breaker(failures=100)
    health.failure(T0)
    health.success(T0 + 86400 + 120, latency_ms=1)
    assert health.uptime(T0 + 86400 + 120, 86400) == 100.0


def test_uptime_rounds_to_two_decimals() -> None:
    health = breaker(failures=100)
    health.failure(T0)
    health.success(T0, latency_ms=1)
    health.success(T0, latency_ms=1)
    assert health.uptime(T0 + 1, 300) == 66.67


# -- latency, ttft and throughput percentiles -----------------------------------------------


def test_percentiles() -> None:
    health = breaker()
    for ms in range(101, 0, -1):  # 1..101 ms, fed in reverse
        health.success(T0, latency_ms=float(ms), ttft_ms=ms / 10)
    snap = health.snapshot(T0)
    assert snap["latency_ms"] == {"p50": 51.0, "p90": 91.0, "p99": 100.0}
    assert snap["ttft_ms"] == {"p50": 5.1, "p90": 9.1, "p99": 10.0}
    assert health.median_latency() == 51.0


def test_percentiles_absent_without_samples() -> None:
    health = breaker()
    health.success(T0, latency_ms=20)  # a non-streamed answer: no ttft
    snap = health.snapshot(T0)
    assert snap["latency_ms"] == {"p50": 20.0, "p90": 20.0, "p99": 20.0}
    assert snap["ttft_ms"] is None and snap["throughput_tps"] is None
    assert health.median_throughput() is None
    assert breaker().median_latency() is None


def test_throughput_is_tokens_per_second_after_the_first_token() -> None:
    health = breaker()
    health.success(T0, latency_ms=1100, ttft_ms=100, tokens=50)  # 50 tokens in 1 s
    health.success(T0, latency_ms=600, ttft_ms=100, tokens=50)  # 50 tokens in 0.5 s
    health.success(T0, latency_ms=100, ttft_ms=100, tokens=50)  # no generation time: skipped
    assert health.snapshot(T0)["throughput_tps"] == {"p50": 50.0, "p90": 100.0, "p99": 100.0}
    assert health.median_throughput() == 50.0


# -- the board -------------------------------------------------------------------------------


def test_board_keeps_state_across_reconfigure_and_updates_policy() -> None:
    clock = [T0]
    board = HealthBoard({"a": BreakerPolicy(2, 10), "b": BreakerPolicy(2, 10)},
                        clock=lambda: clock[0])
    a = board.get("a")
    a.failure(board.clock())
    a.failure(board.clock())
    assert board.states() == {"a": OPEN, "b": CLOSED}
    board.reconfigure({"a": BreakerPolicy(5, 1), "c": BreakerPolicy()})
    assert board.get("a") is a and a.state == OPEN
    assert a.policy == BreakerPolicy(5, 1)  # the new cooldown applies at once
    assert board.states() == {"a": OPEN, "c": CLOSED}
    clock[0] += 1
    assert board.get("a").available(board.clock())


def test_board_makes_room_for_a_provider_of_an_older_config() -> None:
    board = HealthBoard({"a": BreakerPolicy()})
    gone = board.get("gone")
    assert gone.state == CLOSED and gone.policy == BreakerPolicy()
    assert board.get("gone") is gone
