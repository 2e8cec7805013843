"""Run several jobs concurrently with a bound on how many are in flight (pure asyncio).

Used where one client request takes several upstream calls (Titan embeds one text per
call): the results come back in job order, and the first failure cancels the jobs still
running (their upstream requests are dropped, nothing is left in flight) and is raised
as itself, not wrapped in an ExceptionGroup, so that failover sees the error it knows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


async def gather_bounded(jobs: Sequence[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Each job's result, in job order; at most `limit` jobs run at once."""
    if len(jobs) == 1:
        return [await jobs[0]()]
    results: dict[int, T] = {}
    pending = iter(range(len(jobs)))

    async def worker() -> None:
        for index in pending:  # shared: each index is taken by one worker
            results[index] = await jobs[index]()

    workers = [asyncio.ensure_future(worker()) for _ in range(max(1, min(limit, len(jobs))))]
    try:
        done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
    finally:  # a failure, or this request cancelled: stop the rest and wait until they have
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    for task in workers:
        error = task.exception() if task in done and not task.cancelled() else None
        if error is not None:
            raise error
    return [results[index] for index in range(len(jobs))]
