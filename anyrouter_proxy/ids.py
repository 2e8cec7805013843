"""Ids that clients see: generation, batch and batch-request ids.

Their random bits come from the operating system's CSPRNG (`os.urandom`), never from a seeded
`random.Random`: a Mersenne Twister's state is recovered from 624 of its outputs, and
generation ids are easy to collect, so any key could then predict every other key's
ids and count their traffic. One `os.urandom` call fills a pool of a few KiB that is
cut into ids, which keeps an id cheaper than a Mersenne Twister draw was. A forked child
drops its inherited pool, so parent and child never hand out the same ids. A generation
id starts with the second it was made (see `new_generation_id`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

POOL_BYTES = 4096  # random bytes per os.urandom call


class IdPool:
    """`prefix` + `nbytes` random bytes in hex, drawn from a refillable pool.

    `draw()` is safe across threads under the GIL: each id comes out of a list iterator,
    whose `next` is atomic; two threads refilling at once each get a fresh pool.
    """

    def __init__(self, prefix: str, nbytes: int) -> None:
        self.prefix = prefix
        self.nbytes = nbytes
        self._ids: Iterator[str] = iter(())
        os.register_at_fork(after_in_child=self.discard)

    def draw(self) -> str:
        try:
            return next(self._ids)
        except StopIteration:
            self._refill()
            return next(self._ids)

    def discard(self) -> None:
        """Forget the ids not handed out yet (after a fork they are the parent's too)."""
        self._ids = iter(())

    def _refill(self) -> None:
        width = 2 * self.nbytes
        count = max(1, POOL_BYTES // self.nbytes)
        text = os.urandom(self.nbytes * count).hex()
        prefix = self.prefix
        self._ids = iter([prefix + text[i:i + width] for i in range(0, len(text), width)])


_GENERATIONS = IdPool("", 8)
_BATCHES = IdPool("batch_", 12)
_BATCH_REQUESTS = IdPool("batch_req_", 8)


def new_generation_id() -> str:
    """`gen-` and 24 hex digits: the second it was made (8), then 64 random bits (16).

    Ids of one second share their start, and later ones sort after: the usage log's and
    stored responses' id indexes grow at their end rather than taking each row at a random
    place (a random place costs a leaf page read and written per row once the log is
    larger than the page cache). The random part alone keeps them unguessable."""
    return f"gen-{int(time.time()):08x}{_GENERATIONS.draw()}"


def new_batch_id() -> str:
    """`batch_` and 24 hex digits (96 random bits)."""
    return _BATCHES.draw()


def new_batch_request_id() -> str:
    """`batch_req_` and 16 hex digits (64 random bits): one batch result's id."""
    return _BATCH_REQUESTS.draw()


_ITEMS = IdPool("", 12)


def new_item_id(prefix: str) -> str:
    """A Responses item id: `prefix` (msg_, fc_, rs_) and 24 hex digits."""
    return prefix + _ITEMS.draw()
