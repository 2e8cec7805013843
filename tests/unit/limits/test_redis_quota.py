"""RedisQuota against a real redis-server (tests/redis_server.py): the
token buckets, concurrency slots and credit reservations of ratelimit.py and credits.py,
shared by replicas, and the failure policy when Redis goes away.

Every test gets its own key prefix on the module's one server; "two replicas" are two
RedisQuota objects (each with its own connection pool and local fallback) on one server.
Waits are real time, kept short with small numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from anyrouter_proxy.config.model import (
    Budget,
    Config,
    KeyConfig,
    Limits,
    ProviderConfig,
    ServerConfig,
    StateConfig,
    StorageConfig,
    Timeouts,
)
from anyrouter_proxy.errors import InsufficientCredits, RateLimited, ServiceUnavailable
from anyrouter_proxy.limits.budget import window
from anyrouter_proxy.limits.credits import CreditLedger
from anyrouter_proxy.limits.quota import Held, MemoryQuota
from anyrouter_proxy.limits.ratelimit import Limiter
from anyrouter_proxy.limits.redis_quota import (
    LEASE_MIN_S,
    NO_LIMITS,
    RedisQuota,
    default_lease_s,
)
from anyrouter_proxy.limits.redis_scripts import UNITS_PER_USD
from tests.redis_server import RedisServer, running_redis_server


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis_server() as server:
        yield server


def make_key(name: str = "alice", *, rpm: int | None = 60, tpm: int | None = None,
             conc: int | None = None, credits: float | None = None,
             model_limits: Mapping[str, Limits] | None = None) -> KeyConfig:
    return KeyConfig(name=name, key_sha256="0" * 64,
                     limits=Limits(requests_per_minute=rpm, tokens_per_minute=tpm,
                                   concurrent_requests=conc),
                     credits=credits, model_limits=dict(model_limits or {}))


def make_config(*keys: KeyConfig, providers: tuple[ProviderConfig, ...] = (),
                state: StateConfig | None = None) -> Config:
    return Config(path=Path("routes.yaml"), server=ServerConfig(), storage=StorageConfig(),
                  providers={p.id: p for p in providers}, models={},
                  keys={k.name: k for k in keys}, state=state or StateConfig())


QuotaFactory = Callable[..., RedisQuota]


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:"


@pytest.fixture
async def make_quota(redis_server: RedisServer, prefix: str) -> AsyncIterator[QuotaFactory]:
    """RedisQuota "replicas" on the module's server, all with this test's key prefix."""
    made: list[RedisQuota] = []

    def make(*keys: KeyConfig, providers: tuple[ProviderConfig, ...] = (),
             limits_on_error: str = "open", credits_on_error: str = "closed",
             url: str | None = None, timeout_s: float = 5.0,
             clock: Callable[[], float] = time.time, **options: Any) -> RedisQuota:
        # A generous timeout: on a loaded CI machine a slow answer would otherwise fall
        # back to local buckets and make the shared-state assertions flaky.
        state = StateConfig(backend="redis", url=url or redis_server.url, key_prefix=prefix,
                            timeout_s=timeout_s, limits_on_error=limits_on_error,
                            credits_on_error=credits_on_error)
        config = make_config(*keys, providers=providers, state=state)
        quota = RedisQuota(config, MemoryQuota(Limiter(config), CreditLedger(clock)),
                           **options)
        made.append(quota)
        return quota

    yield make
    for quota in made:
        await quota.close()


async def admitted(quota: RedisQuota, key: KeyConfig, model: str = "m",
                   tokens: int = 0) -> bool:
    try:
        await quota.admit(key, model, tokens)
    except RateLimited:
        return False
    return True


async def rejection(quota: RedisQuota, key: KeyConfig, model: str = "m",
                    tokens: int = 0) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        await quota.admit(key, model, tokens)
    return caught.value


def usd(x: float) -> Any:
    return pytest.approx(x, abs=1e-10)


# -- token buckets -----------------------------------------------------------------------


async def test_request_bucket_bursts_to_capacity_then_429_with_wait_and_headers(
        make_quota: QuotaFactory) -> None:
    key = make_key(rpm=3)
    quota = make_quota(key)
    for _ in range(3):
        await quota.admit(key, "m", 0)
    exc = await rejection(quota, key)
    assert exc.status == 429 and exc.code == "rate_limited"
    assert exc.message == "Rate limit exceeded for key alice: requests_per_minute (3)"
    assert exc.metadata == {"limit": "requests_per_minute", "limit_value": 3, "scope": "key",
                            "key": "alice", "retry_after_s": 20}
    assert exc.headers["Retry-After"] == "20"  # 3/min: one every 20 s
    assert exc.headers["X-RateLimit-Limit"] == "3"
    assert exc.headers["X-RateLimit-Remaining"] == "0"
    assert 59 <= int(exc.headers["X-RateLimit-Reset"]) - time.time() <= 61


async def test_request_bucket_refills_continuously_in_real_time(
        make_quota: QuotaFactory) -> None:
    key = make_key(rpm=120)  # two a second
    quota = make_quota(key)
    results = [await admitted(quota, key) for _ in range(121)]
    assert results.count(True) == 120 and results[-1] is False
    await asyncio.sleep(0.6)  # 1.2 requests' worth
    assert await admitted(quota, key)
    assert not await admitted(quota, key)
    headers = await quota.rate_headers(key)
    assert headers["X-RateLimit-Remaining"] == "0"


async def test_tokens_estimate_reserved_then_settled_to_real_usage(
        make_quota: QuotaFactory) -> None:
    key = make_key(rpm=None, tpm=1000)
    quota = make_quota(key)
    first = await quota.admit(key, "m", 600)
    exc = await rejection(quota, key, tokens=600)
    assert exc.metadata is not None and exc.metadata["limit"] == "tokens_per_minute"
    assert exc.headers["Retry-After"] == "12"  # 200 tokens short at 1000/min
    assert "X-RateLimit-Limit" not in exc.headers  # no request limit to report
    first.settle_tokens(100)  # 500 of the estimate come back
    first.settle_tokens(0)  # settled once
    first.release()
    await quota.flush()
    second = await quota.admit(key, "m", 600)  # 900 left
    second.settle_tokens(1500)  # 900 more than estimated: the bucket goes into debt
    second.release()
    await quota.flush()
    exc = await rejection(quota, key, tokens=1)
    assert 36 <= int(exc.headers["Retry-After"]) <= 37  # 601 tokens of debt at 1000/min


async def test_request_larger_than_the_bucket_passes_when_full_and_leaves_debt(
        make_quota: QuotaFactory) -> None:
    key = make_key(rpm=None, tpm=100)
    quota = make_quota(key)
    await quota.admit(key, "m", 500)
    exc = await rejection(quota, key, tokens=1)
    assert int(exc.headers["Retry-After"]) == 241  # 401 tokens at 100/min


async def test_all_or_nothing_across_key_and_model_scopes(make_quota: QuotaFactory) -> None:
    key = make_key(rpm=5, tpm=1000, model_limits={"gpt-*": Limits(requests_per_minute=1)})
    quota = make_quota(key)
    await quota.admit(key, "gpt-a", 10)
    exc = await rejection(quota, key, "gpt-b", 10)  # one entry shared by the glob's models
    assert exc.message == ("Rate limit exceeded for key alice on model gpt-b "
                           "(model_limits 'gpt-*'): requests_per_minute (1)")
    assert exc.metadata is not None
    assert exc.metadata["scope"] == "model" and exc.metadata["pattern"] == "gpt-*"
    assert exc.headers["X-RateLimit-Remaining"] == "4"  # the key's bucket was not touched
    await quota.admit(key, "claude", 10)  # no model entry: the key's limits alone
    headers = await quota.rate_headers(key)
    assert headers["X-RateLimit-Remaining"] == "3"
    # A token failure on the key takes nothing from the request buckets either.
    exc = await rejection(quota, key, "claude", 990)
    assert exc.metadata is not None and exc.metadata["limit"] == "tokens_per_minute"
    assert (await quota.rate_headers(key))["X-RateLimit-Remaining"] == "3"


async def test_exact_model_ids_get_separate_budgets(make_quota: QuotaFactory) -> None:
    key = make_key(rpm=None, model_limits={"a": Limits(requests_per_minute=1),
                                           "b": Limits(requests_per_minute=1)})
    quota = make_quota(key)
    assert await admitted(quota, key, "a")
    assert await admitted(quota, key, "b")
    assert not await admitted(quota, key, "a")
    assert await admitted(quota, key, "c")  # no entry


async def test_concurrency_slots_release_and_idempotence(make_quota: QuotaFactory) -> None:
    key = make_key(rpm=None, conc=2)
    quota = make_quota(key)
    first = await quota.admit(key, "m", 0)
    await quota.admit(key, "m", 0)
    assert await quota.in_flight("alice") == 2
    exc = await rejection(quota, key)
    assert exc.metadata is not None and exc.metadata["limit"] == "concurrent_requests"
    assert exc.headers["Retry-After"] == "1"
    first.release()
    first.release()  # idempotent: one slot back, not two
    await quota.flush()
    assert await quota.in_flight("alice") == 1
    assert await admitted(quota, key)
    assert not await admitted(quota, key)


async def test_slots_of_a_crashed_replica_expire_with_their_lease(
        make_quota: QuotaFactory) -> None:
    key = make_key(rpm=None, conc=2)
    crashed = make_quota(key, lease_s=0.3)  # admits and never releases
    survivor = make_quota(key)
    await crashed.admit(key, "m", 0)
    await crashed.admit(key, "m", 0)
    assert not await admitted(survivor, key)
    await asyncio.sleep(0.35)
    assert await survivor.in_flight("alice") == 0
    assert await admitted(survivor, key)


async def test_provider_limits_return_none_when_exhausted(make_quota: QuotaFactory) -> None:
    limited = ProviderConfig(id="up", kind="openai", limits=Limits(requests_per_minute=2,
                                                                   concurrent_requests=5))
    free = ProviderConfig(id="free", kind="openai")
    quota = make_quota(providers=(limited, free))
    held = [await quota.admit_provider(limited, 10) for _ in range(3)]
    assert held[0] is not None and held[1] is not None
    assert held[2] is None  # routing skips it, no 429
    assert await quota.admit_provider(free, 10) is NO_LIMITS  # nothing to hold: no trip


async def test_a_fallback_model_takes_only_the_entries_the_admission_does_not_hold(
        make_quota: QuotaFactory) -> None:
    key = make_key(rpm=100, model_limits={"*/x": Limits(requests_per_minute=2),
                                          "b/*": Limits(concurrent_requests=1)})
    quota = make_quota(key)
    await quota.admit(key, "a/x", 0)
    held = await quota.admit_model(key, "b/x", "a/x", 0)
    assert held is not None and held is not NO_LIMITS
    assert await admitted(quota, key, "a/x")  # "*/x" had 2: the fallback took none
    assert await quota.admit_model(key, "b/x", "a/x", 0) is None  # "b/*": its slot is held
    held.release()
    await quota.flush()
    assert await quota.admit_model(key, "b/x", "a/x", 0) is not None
    assert await quota.admit_model(key, "c/y", "a/x", 0) is NO_LIMITS  # nothing to hold


async def test_rate_headers_read_without_consuming_and_follow_other_replicas(
        make_quota: QuotaFactory) -> None:
    key = make_key(rpm=10)
    one, two = make_quota(key), make_quota(key)
    headers = await one.rate_headers(key)
    assert headers["X-RateLimit-Limit"] == "10"
    assert headers["X-RateLimit-Remaining"] == "10"
    assert int(headers["X-RateLimit-Reset"]) <= math.ceil(time.time())
    assert (await one.rate_headers(key))["X-RateLimit-Remaining"] == "10"  # reads are free
    for _ in range(4):
        await two.admit(key, "m", 0)
    assert (await two.rate_headers(key))["X-RateLimit-Remaining"] == "6"
    assert (await make_quota(key).rate_headers(key))["X-RateLimit-Remaining"] == "6"
    assert await one.rate_headers(make_key(rpm=None)) == {}


async def test_reload_resizes_buckets_keeping_the_used_fraction(
        make_quota: QuotaFactory) -> None:
    key = make_key(rpm=10)
    quota = make_quota(key)
    for _ in range(5):
        await quota.admit(key, "m", 0)
    bigger = make_key(rpm=20)
    quota.reconfigure(make_config(bigger, state=quota._state))
    await quota.admit(bigger, "m", 0)  # half used of 20 is 10 left; now 9
    headers = await quota.rate_headers(bigger)
    assert headers["X-RateLimit-Limit"] == "20"
    assert headers["X-RateLimit-Remaining"] == "9"


async def test_scripts_are_loaded_again_after_a_script_flush(
        make_quota: QuotaFactory, redis_server: RedisServer) -> None:
    key = make_key(rpm=5, credits=1.0)
    quota = make_quota(key)
    await quota.admit(key, "m", 0)
    client = aioredis.Redis.from_url(redis_server.url)
    await client.script_flush()
    await client.aclose()
    held = await quota.admit(key, "m", 0)
    held.release()
    (await quota.reserve(key, 0.5)).settle(0.25)
    await quota.flush()
    assert await quota.spent("alice") == usd(0.25)
    assert quota.errors == 0


# -- credits -----------------------------------------------------------------------------


async def test_reserve_settle_cancel(make_quota: QuotaFactory) -> None:
    key = make_key(credits=1.0)
    quota = make_quota(key)
    first = await quota.reserve(key, 0.3)
    assert await quota.remaining(key) == usd(0.7)
    first.settle(0.1)
    first.settle(0.5)  # first call wins
    second = await quota.reserve(key, 0.4)
    second.cancel()
    await quota.flush()
    assert await quota.spent("alice") == usd(0.1)
    assert await quota.remaining(key) == usd(0.9)
    third = await quota.reserve(key, 0.2)
    third.settle(0.35)  # above the reservation: spent in full, never hidden
    await quota.flush()
    assert await quota.spent("alice") == usd(0.45)
    assert await quota.remaining(key) == usd(0.55)


async def test_credit_boundary_is_exact(make_quota: QuotaFactory) -> None:
    key = make_key(credits=0.3)
    quota = make_quota(key)
    for _ in range(3):  # 0.1 + 0.1 + 0.1 > 0.3 in floats, not in units of 1e-10 USD
        await quota.reserve(key, 0.1)
    with pytest.raises(InsufficientCredits) as caught:
        await quota.reserve(key, 1 / UNITS_PER_USD)
    exc = caught.value
    assert exc.status == 402 and exc.code == "insufficient_credits"
    assert exc.message == ("Insufficient credits for key alice: $0.00 remaining, "
                           "this request may cost up to $0.00")
    assert exc.metadata is not None
    assert exc.metadata["reserved"] == usd(0.3) and exc.metadata["spent"] == 0
    assert await quota.remaining(key) == 0


async def test_hundred_concurrent_reserves_on_ten_of_credit(make_quota: QuotaFactory) -> None:
    key = make_key(credits=0.001)
    quota = make_quota(key)
    results = await asyncio.gather(*(quota.reserve(key, 0.0001) for _ in range(100)),
                                   return_exceptions=True)
    ok = [r for r in results if not isinstance(r, BaseException)]
    assert len(ok) == 10
    assert all(isinstance(r, InsufficientCredits) for r in results if r not in ok)
    for reservation in ok:
        reservation.settle(0.0001)
    await quota.flush()
    assert await quota.spent("alice") == usd(0.001)  # overspend: $0.00
    assert await quota.remaining(key) == 0


async def test_unlimited_key_records_spend(make_quota: QuotaFactory) -> None:
    key = make_key(credits=None)
    quota = make_quota(key)
    (await quota.reserve(key, 5.0)).settle(1.25)
    await quota.flush()
    assert await quota.spent("alice") == usd(1.25)
    assert await quota.remaining(key) is None


async def test_raising_credits_applies_at_once(make_quota: QuotaFactory) -> None:
    key = make_key(credits=0.5)
    quota = make_quota(key)
    (await quota.reserve(key, 0.5)).settle(0.5)
    with pytest.raises(InsufficientCredits):
        await quota.reserve(key, 0.1)
    raised = dataclasses.replace(key, credits=1.0)
    quota.reconfigure(make_config(raised, state=quota._state))
    await quota.reserve(raised, 0.5)
    assert await quota.remaining(raised) == 0


async def test_reservations_of_a_crashed_replica_expire(make_quota: QuotaFactory) -> None:
    key = make_key(credits=1.0)
    crashed = make_quota(key, lease_s=0.3)
    survivor = make_quota(key)
    await crashed.reserve(key, 0.8)
    with pytest.raises(InsufficientCredits):
        await survivor.reserve(key, 0.5)
    await asyncio.sleep(0.35)
    assert await survivor.remaining(key) == usd(1.0)
    await survivor.reserve(key, 0.5)


async def test_load_spend_seeds_only_what_redis_lacks(make_quota: QuotaFactory,
                                                     redis_server: RedisServer,
                                                     prefix: str) -> None:
    key = make_key(credits=10.0)
    first = make_quota(key)
    await first.load_spend({"alice": 2.0})
    assert await first.spent("alice") == usd(2.0)
    (await first.reserve(key, 1.0)).settle(0.5)
    await first.flush()
    second = make_quota(key)  # a replica starting later, its database behind live spend
    await second.load_spend({"alice": 2.2})
    assert await second.spent("alice") == usd(2.5)  # Redis is the live truth
    # Redis loses everything: the next reservation re-seeds the spend this replica knows.
    client = aioredis.Redis.from_url(redis_server.url)
    await client.delete(*[k async for k in client.scan_iter(match=f"{prefix}*")])
    await client.aclose()
    await first.reserve(key, 1.0)
    assert await first.spent("alice") == usd(2.5)
    assert await first.remaining(key) == usd(6.5)


# -- budgets -----------------------------------------------------------------------------


def budget_key(usd: float, period: str = "day", credits: float | None = None,
               name: str = "alice") -> KeyConfig:
    return dataclasses.replace(make_key(name, credits=credits),
                               budget=Budget(usd=usd, period=period))


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_budget_boundary_is_exact_and_shares_the_reservation(
        make_quota: QuotaFactory) -> None:
    key = budget_key(0.3, "week", credits=10.0)
    quota = make_quota(key)
    held = [await quota.reserve(key, 0.1) for _ in range(3)]
    with pytest.raises(InsufficientCredits) as caught:
        await quota.reserve(key, 1 / UNITS_PER_USD)
    exc = caught.value
    assert (exc.status, exc.type, exc.code) == (402, "insufficient_credits", "budget_exceeded")
    assert exc.message.startswith("Budget exceeded for key alice: $0.00 of its weekly "
                                  "budget of $0.30 remaining until it resets at ")
    assert exc.metadata is not None
    assert exc.metadata["period"] == "week" and exc.metadata["reserved"] == usd(0.3)
    assert exc.metadata["resets_at"] == exc.message.split("resets at ")[1].split(",")[0]
    assert await quota.remaining(key) == usd(9.7)  # the one reservation holds credits too
    held[0].settle(0.05)
    held[1].cancel()
    await quota.flush()
    status = await quota.budget(key)
    assert status is not None
    assert (status.spent, status.reserved, status.remaining) == (usd(0.05), usd(0.1),
                                                                usd(0.15))
    assert await quota.spent("alice") == usd(0.05)
    with pytest.raises(InsufficientCredits):
        await quota.reserve(key, 0.16)
    await quota.reserve(key, 0.15)


async def test_credits_refuse_before_the_budget(make_quota: QuotaFactory) -> None:
    key = budget_key(1.0, credits=0.5)
    quota = make_quota(key)
    with pytest.raises(InsufficientCredits) as caught:
        await quota.reserve(key, 2.0)
    assert caught.value.code == "insufficient_credits"


async def test_two_replicas_share_a_budget_exactly(make_quota: QuotaFactory) -> None:
    key = budget_key(0.001, "month")
    one, two = make_quota(key), make_quota(key)
    results = await asyncio.gather(*((one if i % 2 else two).reserve(key, 0.0001)
                                     for i in range(100)), return_exceptions=True)
    ok = [r for r in results if not isinstance(r, BaseException)]
    assert len(ok) == 10
    assert all(isinstance(r, InsufficientCredits) and r.code == "budget_exceeded"
               for r in results if r not in ok)
    for reservation in ok:
        reservation.settle(0.0001)
    await one.flush()
    await two.flush()
    for quota in (one, two):
        status = await quota.budget(key)
        assert status is not None
        assert (status.spent, status.remaining) == (usd(0.001), 0)


async def test_period_spend_key_is_named_by_its_start_and_expires_after_it(
        make_quota: QuotaFactory, redis_server: RedisServer, prefix: str) -> None:
    key = budget_key(1.0, "day")
    quota = make_quota(key)
    (await quota.reserve(key, 0.5)).settle(0.25)
    await quota.flush()
    day = window("day", time.time())
    name = f"{prefix}{{key:alice}}:budget:day:{int(day.start)}"
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await client.get(name) == str(round(0.25 * UNITS_PER_USD)).encode()
        ttl_s = await client.pttl(name) / 1000
        assert ttl_s == pytest.approx(day.end + 3600 - time.time(), abs=5)
    finally:
        await client.aclose()


async def test_budget_rolls_over_with_the_clock_and_charges_the_reserving_period(
        make_quota: QuotaFactory) -> None:
    monday = window("week", time.time()).start + 7 * 86400  # a Monday, 00:00 UTC, ahead
    clock = FakeClock(monday - 60)  # Sunday 23:59
    key = budget_key(1.0, "day")
    quota = make_quota(key, clock=clock)
    (await quota.reserve(key, 0.6)).settle(0.6)
    across = await quota.reserve(key, 0.4)  # reserved on Sunday, settled on Monday
    with pytest.raises(InsufficientCredits):
        await quota.reserve(key, 0.01)
    clock.now = monday + 1
    with pytest.raises(InsufficientCredits):  # the open reservation still holds
        await quota.reserve(key, 0.61)
    across.settle(0.3)
    await quota.flush()
    status = await quota.budget(key)
    assert status is not None
    assert status.window.start == monday
    assert (status.spent, status.reserved) == (0, 0)  # Sunday's 0.9 stays on Sunday
    (await quota.reserve(key, 1.0)).settle(0.5)
    await quota.flush()
    clock.now = monday - 30  # what Sunday was charged (a clock set back, for the test)
    sunday = await quota.budget(key)
    assert sunday is not None and sunday.spent == usd(0.9)


async def test_load_period_spend_seeds_only_what_redis_lacks(
        make_quota: QuotaFactory, redis_server: RedisServer, prefix: str) -> None:
    key = budget_key(1.0, "month")
    start = window("month", time.time()).start
    first = make_quota(key)
    await first.load_period_spend("month", start, {"alice": 0.5, "bob": 0.25})
    await first.load_period_spend("month", start - 86400, {"alice": 9.0})  # a past month
    (await first.reserve(key, 0.2)).settle(0.1)
    await first.flush()
    second = make_quota(key)  # a replica starting later, its database behind live spend
    await second.load_period_spend("month", start, {"alice": 0.55})
    status = await second.budget(key)
    assert status is not None and status.spent == usd(0.6)  # Redis is the live truth
    # Redis loses everything: the next reservation re-seeds what this replica saw.
    client = aioredis.Redis.from_url(redis_server.url)
    await client.delete(*[k async for k in client.scan_iter(match=f"{prefix}*")])
    await client.aclose()
    with pytest.raises(InsufficientCredits):
        await first.reserve(key, 0.41)
    status = await first.budget(key)
    assert status is not None and status.spent == usd(0.6)


async def test_a_budget_added_by_a_reload_counts_what_this_replica_knows(
        make_quota: QuotaFactory) -> None:
    """Redis keeps no period spend for a key without a budget: a budget added by a
    reload starts from this replica's own view (the usage log at start-up, then its own
    settlements)."""
    plain = make_key(credits=None)
    quota = make_quota(plain)
    start = window("week", time.time()).start
    await quota.load_period_spend("week", start, {"alice": 0.25})
    (await quota.reserve(plain, 1.0)).settle(0.5)
    await quota.flush()
    budgeted = budget_key(1.0, "week")
    quota.reconfigure(make_config(budgeted, state=quota._state))
    with pytest.raises(InsufficientCredits) as caught:
        await quota.reserve(budgeted, 0.26)
    assert caught.value.code == "budget_exceeded"
    status = await quota.budget(budgeted)
    assert status is not None and status.spent == usd(0.75)


async def test_budget_fails_closed_or_open_on_the_local_ledger(
        make_quota: QuotaFactory, own_server: RedisServer) -> None:
    key = budget_key(1.0, "day")
    closed = make_quota(key, url=own_server.url, retry_s=0.1)
    opened = make_quota(key, url=own_server.url, retry_s=0.1, credits_on_error="open")
    (await opened.reserve(key, 0.5)).settle(0.5)
    await opened.flush()
    assert (await opened.budget(key)).spent == usd(0.5)  # type: ignore[union-attr]
    own_server.kill()
    with pytest.raises(ServiceUnavailable) as caught:  # a budget is worth protecting
        await closed.reserve(key, 0.1)
    assert caught.value.code == "state_unavailable"
    local = await opened.reserve(key, 0.4)  # the local ledger knows 0.5 was spent
    with pytest.raises(InsufficientCredits) as refused:
        await opened.reserve(key, 0.2)
    assert refused.value.code == "budget_exceeded"
    local.settle(0.3)
    own_server.start()  # empty: the spend of the period comes back from what was seen
    await asyncio.sleep(0.15)
    await opened.reserve(key, 0.0)
    await opened.flush()
    status = await closed.budget(key)
    assert status is not None and status.spent == usd(0.8)


# -- two replicas ------------------------------------------------------------------------


async def test_two_replicas_share_the_request_limit_exactly(make_quota: QuotaFactory) -> None:
    n = 30
    key = make_key(rpm=n)
    one, two = make_quota(key), make_quota(key)
    results = await asyncio.gather(*(admitted(one if i % 2 else two, key)
                                     for i in range(3 * n)))
    assert results.count(True) == n


async def test_two_replicas_share_concurrency(make_quota: QuotaFactory) -> None:
    key = make_key(rpm=None, conc=3)
    one, two = make_quota(key), make_quota(key)
    results = await asyncio.gather(*(admitted(one if i % 2 else two, key) for i in range(20)))
    assert results.count(True) == 3
    assert await one.in_flight("alice") == await two.in_flight("alice") == 3


async def test_two_replicas_share_credits_exactly(make_quota: QuotaFactory) -> None:
    key = make_key(credits=0.001)
    one, two = make_quota(key), make_quota(key)
    results = await asyncio.gather(*((one if i % 2 else two).reserve(key, 0.0001)
                                     for i in range(100)), return_exceptions=True)
    ok = [r for r in results if not isinstance(r, BaseException)]
    assert len(ok) == 10
    for reservation in ok:
        reservation.settle(0.0001)
    await one.flush()
    await two.flush()
    assert await one.spent("alice") == await two.spent("alice") == usd(0.001)


# -- Redis unreachable -------------------------------------------------------------------


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A server of the test's own, to kill."""
    with running_redis_server() as server:
        yield server


async def test_redis_killed_limits_fail_open_credits_closed_then_recover(
        make_quota: QuotaFactory, own_server: RedisServer) -> None:
    key = make_key(rpm=5, credits=1.0)
    free = make_key("bob", rpm=5, credits=None)
    fallbacks: list[str] = []
    one = make_quota(key, free, url=own_server.url, retry_s=0.1,
                     on_fallback=fallbacks.append)
    two = make_quota(key, free, url=own_server.url, retry_s=0.1)
    await one.load_spend({"alice": 0.25})
    held = await one.admit(key, "m", 0)
    (await one.reserve(key, 0.1)).settle(0.05)
    await one.flush()

    own_server.kill()
    held.release()  # queued until Redis is back
    local = await one.admit(key, "m", 0)  # limits fail open: this process's bucket
    assert not isinstance(local, type(held))
    assert one.fallbacks["limits"] == 1 and fallbacks == ["limits"]
    with pytest.raises(ServiceUnavailable) as caught:  # credits fail closed
        await one.reserve(key, 0.1)
    assert caught.value.status == 503 and caught.value.code == "state_unavailable"
    assert "Redis" in caught.value.message
    assert one.refusals["credits"] == 1
    (await one.reserve(free, 0.1)).settle(0.02)  # an unlimited key has nothing to protect
    assert one.fallbacks["credits"] == 1
    assert await one.spent("alice") == usd(0.3)  # reads answer from what it knows
    assert (await one.rate_headers(key))["X-RateLimit-Limit"] == "5"
    assert one.available is False

    own_server.start()  # empty: no persistence
    await asyncio.sleep(0.15)
    shared = await one.admit(key, "m", 0)
    assert one.fallbacks["limits"] == 1  # Redis again
    assert await two.in_flight("alice") == 1  # the other replica sees the slot
    shared.release()
    (await one.reserve(key, 0.1)).settle(0.1)  # re-seeded from this replica's spend
    await one.flush()
    assert await two.spent("alice") == usd(0.4)
    assert await two.spent("bob") == usd(0.02)  # the local spend reached Redis
    assert await two.remaining(key) == usd(0.6)


async def test_limits_closed_and_credits_open(make_quota: QuotaFactory,
                                              own_server: RedisServer) -> None:
    key = make_key(rpm=5, credits=1.0)
    quota = make_quota(key, url=own_server.url, retry_s=0.1, limits_on_error="closed",
                       credits_on_error="open")
    (await quota.reserve(key, 0.5)).settle(0.5)
    await quota.flush()
    own_server.kill()
    with pytest.raises(ServiceUnavailable) as caught:
        await quota.admit(key, "m", 0)
    assert caught.value.code == "state_unavailable"
    assert caught.value.headers["Retry-After"] == "1"
    assert quota.refusals["limits"] == 1
    reservation = await quota.reserve(key, 0.4)  # the local ledger knows 0.5 was spent
    with pytest.raises(InsufficientCredits):
        await quota.reserve(key, 0.2)
    reservation.settle(0.3)
    assert quota.fallbacks["credits"] == 2
    own_server.start()
    await asyncio.sleep(0.15)
    await quota.admit(key, "m", 0)
    await quota.flush()
    assert await quota.spent("alice") == usd(0.8)


async def test_unresponsive_redis_times_out_into_the_policy(make_quota: QuotaFactory) -> None:
    """A Redis that accepts connections and never answers: each check gives up after
    state.timeout_s, then Redis is skipped for retry_s."""
    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)
        writer.close()

    server = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    key = make_key(rpm=5, credits=1.0)
    quota = make_quota(key, url=f"redis://127.0.0.1:{port}/0", timeout_s=0.2, retry_s=5)
    try:
        started = time.monotonic()
        held = await quota.admit(key, "m", 0)
        assert time.monotonic() - started < 1.0
        held.release()
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable):
            await quota.reserve(key, 0.1)
        assert time.monotonic() - started < 0.05  # skipped: no second timeout
        assert quota.fallbacks["limits"] == 1
        started = time.monotonic()
        await quota.close()  # one last try for the queued release, then it gives up
        assert time.monotonic() - started < 1.0
        assert quota.dropped == 1
    finally:
        server.close()
        await server.wait_closed()


def test_lease_outlasts_the_longest_request() -> None:
    slow = ProviderConfig(id="slow", kind="openai", timeouts=Timeouts(total_s=3600))
    assert default_lease_s(make_config()) == LEASE_MIN_S
    assert default_lease_s(make_config(providers=(slow,))) == 3600 * 2 + 60  # retries: 1


def test_held_is_the_quota_protocol() -> None:
    held: Held = NO_LIMITS
    held.settle_tokens(1)
    held.release()



class LossyRelay:
    """A TCP relay to Redis that can swallow Redis's answers: a check runs, its answer
    is lost (the client times out)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.drop = False
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       lossy: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if not (lossy and self.drop):
                        dst.write(data)
                        await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_checks_whose_answer_was_lost_are_undone(make_quota: QuotaFactory,
                                                       redis_server: RedisServer,
                                                       prefix: str) -> None:
    """A check that ran in Redis but whose answer never came back (timeout): its slot and
    its reservation are given back once the check has surely run, so they do not stay
    pinned until their lease ends."""
    relay = LossyRelay(redis_server.port)
    await relay.start()
    key = make_key(rpm=None, conc=1, credits=1.0)
    quota = make_quota(key, url=f"redis://127.0.0.1:{relay.port}/0", timeout_s=0.2,
                       retry_s=0.05)
    direct = aioredis.Redis.from_url(redis_server.url)
    try:
        await quota.load_spend({})  # the scripts are loaded at start-up
        # Two open connections: each check below goes on one (a new connection's
        # handshake would time out instead, before the check is even sent).
        await asyncio.gather(quota.in_flight("alice"), quota.in_flight("alice"))
        relay.drop = True
        held, refused = await asyncio.gather(  # both run in Redis; both answers are lost
            quota.admit(key, "m", 0), quota.reserve(key, 0.6), return_exceptions=True)
        assert quota.fallbacks["limits"] == 1  # admitted on the local bucket
        assert isinstance(refused, ServiceUnavailable)  # credits fail closed
        assert not isinstance(held, BaseException)
        assert await direct.zcard(f"{prefix}{{key:alice}}:cc") == 1
        assert await direct.hget(f"{prefix}{{key:alice}}:credit", "reserved") == b"6000000000"
        relay.drop = False
        held.release()
        await asyncio.sleep(0.3)  # timeout_s after each check: the undos are queued
        await quota.flush()
        assert await direct.zcard(f"{prefix}{{key:alice}}:cc") == 0
        assert await direct.hget(f"{prefix}{{key:alice}}:credit", "reserved") == b"0"
        assert await admitted(quota, key)
        assert await quota.remaining(key) == usd(1.0)
    finally:
        await direct.aclose()
        await quota.close()
        await relay.close()
