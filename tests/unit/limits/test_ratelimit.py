"""Token buckets, admission and headers under a fake clock."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from anyrouter_proxy.config.model import (
    Config,
    KeyConfig,
    Limits,
    ProviderConfig,
    ServerConfig,
    StorageConfig,
)
from anyrouter_proxy.errors import RateLimited
from anyrouter_proxy.limits.ratelimit import Limiter, TokenBucket

WALL_EPOCH = 1_700_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL_EPOCH + self.now


def make_key(
    name: str = "alice",
    *,
    rpm: int | None = 60,
    tpm: int | None = None,
    conc: int | None = None,
    model_limits: Mapping[str, Limits] | None = None,
) -> KeyConfig:
    return KeyConfig(
        name=name,
        key_sha256="0" * 64,
        limits=Limits(requests_per_minute=rpm, tokens_per_minute=tpm, concurrent_requests=conc),
        model_limits=dict(model_limits or {}),
    )


def make_config(*keys: KeyConfig, providers: tuple[ProviderConfig, ...] = ()) -> Config:
    return Config(
        path=Path("routes.yaml"),
        server=ServerConfig(),
        storage=StorageConfig(),
        providers={p.id: p for p in providers},
        models={},
        keys={k.name: k for k in keys},
    )


def make_limiter(*keys: KeyConfig, providers: tuple[ProviderConfig, ...] = ()) -> tuple[
    Limiter, FakeClock
]:
    clock = FakeClock()
    return Limiter(make_config(*keys, providers=providers), clock=clock, wall=clock.wall), clock


# --- TokenBucket -------------------------------------------------------------------------


def test_bucket_starts_full_and_bursts_up_to_capacity() -> None:
    bucket = TokenBucket(60, now=0.0)
    assert bucket.level(0.0) == 60
    for _ in range(60):
        assert bucket.take(1, 0.0) == 0.0
    assert bucket.take(1, 0.0) == pytest.approx(1.0)  # 60/min refills one a second


def test_bucket_refills_continuously_at_capacity_per_minute() -> None:
    bucket = TokenBucket(120, now=0.0)
    assert bucket.take(120, 0.0) == 0.0
    assert bucket.level(15.0) == pytest.approx(30.0)
    assert bucket.level(30.0) == pytest.approx(60.0)


def test_bucket_does_not_refill_above_capacity() -> None:
    bucket = TokenBucket(10, now=0.0)
    bucket.take(4, 0.0)
    assert bucket.level(3600.0) == 10
    bucket.give_back(100, 3600.0)
    assert bucket.level(3600.0) == 10
    assert bucket.seconds_until_full(3600.0) == 0.0


def test_failed_take_returns_wait_and_takes_nothing() -> None:
    bucket = TokenBucket(60, now=0.0)
    bucket.take(58, 0.0)
    assert bucket.take(5, 0.0) == pytest.approx(3.0)
    assert bucket.level(0.0) == pytest.approx(2.0)
    assert bucket.take(5, 2.9) > 0.0
    assert bucket.take(5, 3.0) == 0.0  # waiting exactly the advertised time is enough
    assert bucket.level(3.0) == pytest.approx(0.0)


def test_amount_above_capacity_allowed_only_from_full_and_leaves_debt() -> None:
    bucket = TokenBucket(60, now=0.0)
    bucket.take(1, 0.0)
    assert bucket.take(100, 0.0) == pytest.approx(1.0)  # wait until full, not forever
    assert bucket.take(100, 1.0) == 0.0
    assert bucket.level(1.0) == pytest.approx(-40.0)
    assert bucket.seconds_until_full(1.0) == pytest.approx(100.0)


def test_force_take_goes_negative_and_give_back_is_capped() -> None:
    bucket = TokenBucket(60, now=0.0)
    bucket.force_take(90, 0.0)
    assert bucket.level(0.0) == pytest.approx(-30.0)
    assert bucket.take(1, 0.0) == pytest.approx(31.0)
    bucket.give_back(200, 0.0)
    assert bucket.level(0.0) == 60


def test_resize_keeps_used_fraction_and_time_until_full() -> None:
    bucket = TokenBucket(60, now=0.0)
    bucket.take(15, 0.0)
    before = bucket.seconds_until_full(0.0)
    bucket.resize(120, 0.0)
    assert bucket.capacity == 120
    assert bucket.level(0.0) == pytest.approx(90.0)
    assert bucket.seconds_until_full(0.0) == pytest.approx(before)


def test_zero_capacity_bucket_never_admits() -> None:
    bucket = TokenBucket(0, now=0.0)
    assert bucket.take(1, 1e6) == float("inf")


# --- Limiter.admit -----------------------------------------------------------------------


def test_rpm_limit_names_itself_with_retry_after_and_headers() -> None:
    key = make_key(rpm=2)
    limiter, clock = make_limiter(key)
    limiter.admit(key, "m", 0).release()
    limiter.admit(key, "m", 0).release()
    with pytest.raises(RateLimited) as info:
        limiter.admit(key, "m", 0)
    err = info.value
    assert err.status == 429 and err.code == "rate_limited"
    assert err.message == "Rate limit exceeded for key alice: requests_per_minute (2)"
    assert err.metadata is not None and err.metadata["limit"] == "requests_per_minute"
    assert err.headers["Retry-After"] == "30"  # 2/min: one request every 30 s
    assert err.headers["X-RateLimit-Limit"] == "2"
    assert err.headers["X-RateLimit-Remaining"] == "0"
    clock.now += 30
    limiter.admit(key, "m", 0)


def test_tpm_limit_names_itself_and_consumes_nothing() -> None:
    key = make_key(rpm=60, tpm=1000)
    limiter, _ = make_limiter(key)
    limiter.admit(key, "m", 900)
    before = limiter.headers(key)["X-RateLimit-Remaining"]
    with pytest.raises(RateLimited) as info:
        limiter.admit(key, "m", 200)
    assert "tokens_per_minute (1000)" in info.value.message
    assert int(info.value.headers["Retry-After"]) >= 1
    assert limiter.headers(key)["X-RateLimit-Remaining"] == before  # rpm not consumed
    assert limiter.in_flight("alice") == 1  # concurrency not consumed


def test_concurrency_limit_rejects_and_release_is_idempotent() -> None:
    key = make_key(conc=2)
    limiter, _ = make_limiter(key)
    first = limiter.admit(key, "m", 0)
    limiter.admit(key, "m", 0)
    with pytest.raises(RateLimited) as info:
        limiter.admit(key, "m", 0)
    assert "concurrent_requests (2)" in info.value.message
    assert info.value.headers["Retry-After"] == "1"
    first.release()
    first.release()  # a second release must not free the other request's slot
    assert limiter.in_flight("alice") == 1
    limiter.admit(key, "m", 0)
    with pytest.raises(RateLimited):
        limiter.admit(key, "m", 0)


def test_first_failing_limit_in_order_is_named_and_retry_after_is_the_longest() -> None:
    key = make_key(rpm=2, tpm=60)
    limiter, _ = make_limiter(key)
    limiter.admit(key, "m", 30)
    limiter.admit(key, "m", 30)
    with pytest.raises(RateLimited) as info:
        limiter.admit(key, "m", 60)  # requests back in 30 s, tokens only in 60 s
    assert info.value.metadata is not None
    assert info.value.metadata["limit"] == "requests_per_minute"
    assert info.value.headers["Retry-After"] == "60"


def test_release_without_settle_keeps_estimate_as_usage() -> None:
    key = make_key(tpm=1000)
    limiter, _ = make_limiter(key)
    admission = limiter.admit(key, "m", 600)
    admission.release()
    admission.settle_tokens(0)  # after release: too late, ignored
    with pytest.raises(RateLimited):
        limiter.admit(key, "m", 600)
    assert limiter.in_flight("alice") == 0


def test_settle_tokens_gives_back_overestimate() -> None:
    key = make_key(tpm=1000)
    limiter, _ = make_limiter(key)
    admission = limiter.admit(key, "m", 900)
    admission.settle_tokens(100)
    admission.settle_tokens(900)  # idempotent: first settlement wins
    admission.release()
    limiter.admit(key, "m", 900)


def test_settle_tokens_charges_underestimate() -> None:
    key = make_key(tpm=1000)
    limiter, clock = make_limiter(key)
    admission = limiter.admit(key, "m", 100)
    admission.settle_tokens(1500)
    admission.release()
    with pytest.raises(RateLimited) as info:
        limiter.admit(key, "m", 1)
    assert info.value.headers["Retry-After"] == "31"  # 501 tokens of debt at 1000/min
    clock.now += 31
    limiter.admit(key, "m", 1)


def test_model_limits_apply_by_glob_and_are_shared_per_entry() -> None:
    key = make_key(rpm=100, model_limits={"openai/*": Limits(requests_per_minute=2)})
    limiter, _ = make_limiter(key)
    limiter.admit(key, "openai/gpt-4o", 0)
    limiter.admit(key, "openai/gpt-4o-mini", 0)
    with pytest.raises(RateLimited) as info:
        limiter.admit(key, "openai/gpt-4o", 0)
    assert info.value.message == (
        "Rate limit exceeded for key alice on model openai/gpt-4o "
        "(model_limits 'openai/*'): requests_per_minute (2)"
    )
    assert info.value.metadata is not None and info.value.metadata["pattern"] == "openai/*"
    limiter.admit(key, "anthropic/claude-sonnet-4", 0)  # does not match the glob


def test_model_limit_failure_consumes_nothing_from_the_key() -> None:
    key = make_key(rpm=3, model_limits={"a/exact": Limits(concurrent_requests=1)})
    limiter, _ = make_limiter(key)
    limiter.admit(key, "a/exact", 0)
    with pytest.raises(RateLimited):
        limiter.admit(key, "a/exact", 0)
    assert limiter.headers(key)["X-RateLimit-Remaining"] == "2"
    assert limiter.in_flight("alice") == 1


def test_model_limit_glob_is_not_a_prefix_match() -> None:
    key = make_key(model_limits={"openai/gpt-4o": Limits(requests_per_minute=1)})
    limiter, _ = make_limiter(key)
    limiter.admit(key, "openai/gpt-4o", 0)
    limiter.admit(key, "openai/gpt-4o-mini", 0)
    with pytest.raises(RateLimited):
        limiter.admit(key, "openai/gpt-4o", 0)


def test_keys_are_limited_independently() -> None:
    alice, bob = make_key("alice", rpm=1), make_key("bob", rpm=1)
    limiter, _ = make_limiter(alice, bob)
    limiter.admit(alice, "m", 0)
    limiter.admit(bob, "m", 0)
    with pytest.raises(RateLimited):
        limiter.admit(alice, "m", 0)


# --- providers -----------------------------------------------------------------------------


def test_a_fallback_model_takes_only_the_entries_the_admission_does_not_hold() -> None:
    key = make_key(rpm=100, model_limits={"*/x": Limits(requests_per_minute=2),
                                          "b/*": Limits(requests_per_minute=1,
                                                        concurrent_requests=1)})
    limiter, clock = make_limiter(key)
    limiter.admit(key, "a/x", 0)  # the request: the key and "*/x"
    held = limiter.admit_model(key, "b/x", "a/x", 0)  # its fallback: "b/*" only
    assert held is not None
    limiter.admit(key, "a/x", 0)  # "*/x" had 2: the fallback did not take one
    assert limiter.admit_model(key, "b/x", "a/x", 0) is None  # "b/*": rpm and slot used
    held.release()
    clock.now += 60
    assert limiter.admit_model(key, "b/x", "a/x", 0) is not None
    assert limiter.admit_model(key, "c/y", "a/x", 0) is not None  # no entry of its own


def test_provider_limits_return_none_when_exhausted() -> None:
    provider = ProviderConfig(id="p", kind="openai", limits=Limits(requests_per_minute=1,
                                                                   concurrent_requests=5))
    limiter, clock = make_limiter(providers=(provider,))
    admission = limiter.admit_provider(provider, 10)
    assert admission is not None
    assert limiter.admit_provider(provider, 10) is None
    clock.now += 60
    assert limiter.admit_provider(provider, 10) is not None


def test_provider_concurrency_is_released() -> None:
    provider = ProviderConfig(id="p", kind="openai", limits=Limits(concurrent_requests=1))
    limiter, _ = make_limiter(providers=(provider,))
    admission = limiter.admit_provider(provider, 0)
    assert admission is not None
    assert limiter.admit_provider(provider, 0) is None
    admission.release()
    assert limiter.admit_provider(provider, 0) is not None


def test_provider_without_limits_is_always_admitted() -> None:
    provider = ProviderConfig(id="p", kind="mock")
    limiter, _ = make_limiter(providers=(provider,))
    assert all(limiter.admit_provider(provider, 10**9) is not None for _ in range(100))


# --- reconfigure ---------------------------------------------------------------------------


def test_reconfigure_keeps_surviving_state_and_drops_removed_keys() -> None:
    alice, bob = make_key("alice", rpm=2), make_key("bob", rpm=2)
    limiter, _ = make_limiter(alice, bob)
    limiter.admit(alice, "m", 0)
    limiter.admit(alice, "m", 0).release()
    limiter.admit(bob, "m", 0)
    limiter.reconfigure(make_config(alice))
    assert limiter.headers(alice)["X-RateLimit-Remaining"] == "0"
    assert limiter.in_flight("alice") == 1
    assert limiter.in_flight("bob") == 0
    limiter.reconfigure(make_config(alice, bob))
    assert limiter.headers(bob)["X-RateLimit-Remaining"] == "2"  # came back fresh


def test_reconfigure_resizes_changed_limits() -> None:
    limiter, _ = make_limiter(make_key(rpm=10))
    key = make_key(rpm=10)
    for _ in range(5):
        limiter.admit(key, "m", 0)
    bigger = make_key(rpm=20)
    limiter.reconfigure(make_config(bigger))
    headers = limiter.headers(bigger)
    assert headers["X-RateLimit-Limit"] == "20"
    assert headers["X-RateLimit-Remaining"] == "10"  # half used stays half used


def test_reconfigure_adds_concurrency_limit_counting_requests_in_flight() -> None:
    limiter, _ = make_limiter(make_key())
    key = make_key()
    held = limiter.admit(key, "m", 0)
    capped = make_key(conc=1)
    limiter.reconfigure(make_config(capped))
    with pytest.raises(RateLimited):
        limiter.admit(capped, "m", 0)
    held.release()
    limiter.admit(capped, "m", 0)


def test_reconfigure_keeps_provider_state() -> None:
    provider = ProviderConfig(id="p", kind="openai", limits=Limits(requests_per_minute=1))
    limiter, _ = make_limiter(providers=(provider,))
    assert limiter.admit_provider(provider, 0) is not None
    limiter.reconfigure(make_config(providers=(provider,)))
    assert limiter.admit_provider(provider, 0) is None


# --- headers -------------------------------------------------------------------------------


def test_headers_report_without_consuming_and_reset_is_wall_time_when_full() -> None:
    key = make_key(rpm=60)
    limiter, clock = make_limiter(key)
    full = {"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "60",
            "X-RateLimit-Reset": str(int(WALL_EPOCH + clock.now))}
    assert limiter.headers(key) == full
    assert limiter.headers(key) == full
    for _ in range(10):
        limiter.admit(key, "m", 0)
    headers = limiter.headers(key)
    assert headers["X-RateLimit-Remaining"] == "50"
    assert headers["X-RateLimit-Reset"] == str(int(WALL_EPOCH + clock.now + 10))


def test_reset_header_rounds_up_to_whole_seconds() -> None:
    key = make_key(rpm=120)
    limiter, clock = make_limiter(key)
    limiter.admit(key, "m", 0)  # 0.5 s until full
    assert limiter.headers(key)["X-RateLimit-Reset"] == str(int(WALL_EPOCH + clock.now) + 1)


def test_headers_empty_without_request_limit() -> None:
    key = make_key(rpm=None)
    limiter, _ = make_limiter(key)
    assert limiter.headers(key) == {}
