"""gather_bounded: results in job order, at most `limit` jobs at once, the first failure
raised as itself with the other jobs cancelled, and a cancelled caller leaving nothing
running."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from anyrouter_proxy.errors import RateLimited
from anyrouter_proxy.fan_out import gather_bounded


class Jobs:
    """Jobs that wait until released, counting how many run at once."""

    def __init__(self, count: int) -> None:
        self.gates = [asyncio.Event() for _ in range(count)]
        self.running = self.most = 0
        self.started: list[int] = []
        self.cancelled: list[int] = []

    def job(self, index: int, fail: BaseException | None = None) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            self.started.append(index)
            self.running += 1
            self.most = max(self.most, self.running)
            try:
                await self.gates[index].wait()
            except asyncio.CancelledError:
                self.cancelled.append(index)
                raise
            finally:
                self.running -= 1
            if fail is not None:
                raise fail
            return index * 10

        return run


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_results_come_in_job_order_whatever_order_jobs_end() -> None:
    jobs = Jobs(5)
    task = asyncio.ensure_future(gather_bounded([jobs.job(i) for i in range(5)], 5))
    await settle()
    for gate in reversed(jobs.gates):
        gate.set()
        await settle()
    assert await task == [0, 10, 20, 30, 40]


async def test_at_most_limit_jobs_run_at_once() -> None:
    jobs = Jobs(7)
    task = asyncio.ensure_future(gather_bounded([jobs.job(i) for i in range(7)], 3))
    await settle()
    assert jobs.started == [0, 1, 2]
    for gate in jobs.gates:
        gate.set()
        await settle()
    assert await task == [i * 10 for i in range(7)]
    assert jobs.most == 3


async def test_first_failure_is_raised_as_itself_and_cancels_the_rest() -> None:
    jobs = Jobs(6)
    failure = RateLimited("slow down", code="upstream_rate_limited")
    task = asyncio.ensure_future(gather_bounded(
        [jobs.job(i, failure if i == 1 else None) for i in range(6)], 3))
    await settle()
    jobs.gates[1].set()
    with pytest.raises(RateLimited) as caught:
        await task
    assert caught.value is failure
    assert sorted(jobs.cancelled) == [0, 2]  # running when it failed
    assert jobs.started == [0, 1, 2]  # nothing started after it
    assert jobs.running == 0


async def test_a_cancelled_caller_leaves_no_job_running() -> None:
    jobs = Jobs(4)
    task = asyncio.ensure_future(gather_bounded([jobs.job(i) for i in range(4)], 2))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(jobs.cancelled) == [0, 1]
    assert jobs.running == 0


async def test_one_job_runs_as_is() -> None:
    jobs = Jobs(1)
    jobs.gates[0].set()
    assert await gather_bounded([jobs.job(0)], 4) == [0]
