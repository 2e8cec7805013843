"""Spend that Redis lost (a restart without persistence, FLUSHALL), against a real
redis-server (tests/redis_server.py): settlements whose reservation vanished still count,
once; the replica that notices rebuilds every key's spend from the usage log (here a
fake spend source) and puts its open reservations back; another replica puts its own back;
requests interrupted by a crash are charged once. Each test has a key prefix of its own
and "loses" Redis by deleting that prefix's keys."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from anyrouter_proxy.config.model import (
    Config,
    KeyConfig,
    Limits,
    ServerConfig,
    StateConfig,
    StorageConfig,
)
from anyrouter_proxy.limits.credits import CreditLedger
from anyrouter_proxy.limits.quota import MemoryQuota
from anyrouter_proxy.limits.ratelimit import Limiter
from anyrouter_proxy.limits.redis_handles import RedisReserved
from anyrouter_proxy.limits.redis_quota import RedisQuota
from anyrouter_proxy.types import Interrupted
from tests.redis_server import RedisServer, running_redis_server

ALICE = KeyConfig(name="alice", key_sha256="0" * 64, limits=Limits(), credits=10.0)
BOB = KeyConfig(name="bob", key_sha256="1" * 64, limits=Limits(), credits=10.0)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis_server() as server:
        yield server


class FakeLog:
    """A spend source: the usage log's sums as the test says; counts the snapshots."""

    def __init__(self, spend: Mapping[str, float] | None = None) -> None:
        self.spend = dict(spend or {})
        self.snapshots = 0

    async def snapshot(self, at_cut: Callable[[], None] | None = None) -> dict[str, float]:
        self.snapshots += 1
        if at_cut is not None:
            at_cut()
        return dict(self.spend)


QuotaFactory = Callable[..., RedisQuota]


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:"


@pytest.fixture
async def make_quota(redis_server: RedisServer, prefix: str) -> AsyncIterator[QuotaFactory]:
    made: list[RedisQuota] = []

    def make(log: FakeLog | None = None) -> RedisQuota:
        state = StateConfig(backend="redis", url=redis_server.url, key_prefix=prefix,
                            timeout_s=5.0)
        config = Config(path=Path("routes.yaml"), server=ServerConfig(),
                        storage=StorageConfig(), providers={}, models={},
                        keys={"alice": ALICE, "bob": BOB}, state=state)
        quota = RedisQuota(config, MemoryQuota(Limiter(config), CreditLedger()),
                           spend_source=log.snapshot if log is not None else None)
        made.append(quota)
        return quota

    yield make
    for quota in made:
        await quota.close()


async def lose_everything(redis_server: RedisServer, prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def redis_hash(redis_server: RedisServer, key: str) -> dict[str, str]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        return dict(await client.hgetall(key))
    finally:
        await client.aclose()


def rid(held: Any) -> str:
    assert isinstance(held, RedisReserved)
    return held.rid


def usd(x: float) -> Any:
    return pytest.approx(x, abs=1e-10)


async def test_a_settlement_whose_reservation_vanished_with_the_data_still_counts(
        make_quota: QuotaFactory, redis_server: RedisServer, prefix: str) -> None:
    quota = make_quota()  # no spend source: nothing rebuilds, settle.lua alone
    await quota.load_spend({"alice": 1.0})
    held = await quota.reserve(ALICE, 0.5)
    await lose_everything(redis_server, prefix)
    held.settle(0.25)
    await quota.flush()
    assert await quota.spent("alice") == usd(1.0 + 0.25)  # the floor seen, plus this one
    # The same settlement sent again (its answer lost, say) is not counted twice.
    op_keys = (*quota._credit_keys("alice"), quota._marker)
    quota.enqueue_op("s", "key:alice", op_keys, (rid(held), 2_500_000_000, "0", 600_000, 0))
    await quota.flush()
    assert await quota.spent("alice") == usd(1.25)


async def test_with_the_marker_there_a_vanished_reservation_is_not_counted_again(
        make_quota: QuotaFactory) -> None:
    quota = make_quota()
    await quota.load_spend({})
    held = await quota.reserve(ALICE, 0.5)
    held.settle(0.25)
    await quota.flush()
    op_keys = (*quota._credit_keys("alice"), quota._marker)
    quota.enqueue_op("s", "key:alice", op_keys, (rid(held), 2_500_000_000, "0", 600_000, 0))
    await quota.flush()
    assert await quota.spent("alice") == usd(0.25)


async def test_lost_spend_is_rebuilt_from_the_log_with_open_reservations_back(
        make_quota: QuotaFactory, redis_server: RedisServer, prefix: str) -> None:
    log = FakeLog({"alice": 3.0, "bob": 2.0})
    quota = make_quota(log)
    await quota.load_spend(log.spend)
    held = await quota.reserve(ALICE, 4.0)
    await lose_everything(redis_server, prefix)
    log.spend = {"alice": 3.5, "bob": 2.0}  # rows written meanwhile (not settled here)
    await quota.check_spend()
    assert log.snapshots == 1
    credit = await redis_hash(redis_server, quota._credit_keys("alice")[0])
    assert credit == {"spent": str(35 * 10**9), "reserved": str(40 * 10**9)}
    assert await quota.spent("bob") == usd(2.0)
    assert await quota.remaining(ALICE) == usd(10.0 - 3.5 - 4.0)
    held.settle(1.0)  # the reservation was put back: settled as usual
    await quota.flush()
    assert await quota.spent("alice") == usd(4.5)
    assert await quota.remaining(ALICE) == usd(5.5)
    await quota.check_spend()  # the marker is there: nothing to do
    assert log.snapshots == 1


async def test_settlements_queued_before_the_rebuild_are_in_the_log_already(
        make_quota: QuotaFactory, redis_server: RedisServer, prefix: str) -> None:
    log = FakeLog({"alice": 1.0})
    quota = make_quota(log)
    await quota.load_spend(log.spend)
    held = await quota.reserve(ALICE, 0.5)
    await lose_everything(redis_server, prefix)
    quota._down_until = float("inf")  # the outbox waits: the settlement stays queued
    held.settle(0.5)
    log.spend = {"alice": 1.5}  # its usage row (queued or written) is in the sums
    quota._down_until = 0.0
    await quota.check_spend()
    await quota.flush()
    assert await quota.spent("alice") == usd(1.5)  # not 2.0
    assert await quota.remaining(ALICE) == usd(8.5)


async def test_another_replica_rebuilt_this_one_puts_its_reservations_back(
        make_quota: QuotaFactory, redis_server: RedisServer, prefix: str) -> None:
    log = FakeLog({"alice": 1.0})
    one, two = make_quota(log), make_quota(log)
    await one.load_spend(log.spend)
    await two.load_spend(log.spend)
    held_one, held_two = await one.reserve(ALICE, 2.0), await two.reserve(ALICE, 3.0)
    await lose_everything(redis_server, prefix)
    await one.check_spend()  # rebuilds
    assert await two.remaining(ALICE) == usd(10.0 - 1.0 - 2.0)  # two's reservation: gone
    await two.check_spend()  # sees the new marker
    assert log.snapshots == 1  # the log was read once
    assert await two.remaining(ALICE) == usd(10.0 - 1.0 - 2.0 - 3.0)
    held_one.settle(0.5)
    held_two.settle(0.25)
    await one.flush()
    await two.flush()
    for quota in (one, two):
        assert await quota.spent("alice") == usd(1.75)
        assert await quota.remaining(ALICE) == usd(8.25)


async def test_a_start_without_the_marker_writes_the_log_over_stale_spend(
        make_quota: QuotaFactory, redis_server: RedisServer, prefix: str) -> None:
    first = make_quota()
    await first.load_spend({"alice": 1.0})
    client = aioredis.Redis.from_url(redis_server.url)
    await client.delete(first._marker)  # what is left is not the spend it was given
    await client.aclose()
    later = make_quota()
    await later.load_spend({"alice": 4.0})
    assert await later.spent("alice") == usd(4.0)
    again = make_quota()  # the marker is there now: live spend is kept
    await again.load_spend({"alice": 3.0})
    assert await again.spent("alice") == usd(4.0)


async def test_interrupted_requests_are_charged_once(
        make_quota: QuotaFactory, redis_server: RedisServer, prefix: str) -> None:
    first = make_quota()
    await first.load_spend({})
    (await first.reserve(ALICE, 1.0)).settle(1.0)
    await first.flush()
    # A replica restarts; its database holds 1.0 plus an interrupted request of 0.5.
    charges = [Interrupted("gen-1", "alice", 0.5)]
    again = make_quota()
    await again.load_spend({"alice": 1.5})
    await again.charge_interrupted(charges)
    await again.charge_interrupted(charges)  # twice (say, two replicas): once
    await again.flush()
    assert await again.spent("alice") == usd(1.5)
    # Redis lost everything before this start: the log's sums hold the charge already.
    await lose_everything(redis_server, prefix)
    third = make_quota()
    await third.load_spend({"alice": 1.5})
    await third.charge_interrupted(charges)
    await third.flush()
    assert await third.spent("alice") == usd(1.5)
