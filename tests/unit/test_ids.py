"""Ids that clients see (anyrouter_proxy.ids): their format, uniqueness, and that nobody can
predict them from ids they have seen (generation ids are easy to collect, even from 404s)."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from collections.abc import Callable

import pytest

from anyrouter_proxy import batch, ids
from anyrouter_proxy.config.model import KeyConfig, Limits
from anyrouter_proxy.gateway import ProxyRequest
from anyrouter_proxy.types import CHAT

KEY = KeyConfig(name="k", key_sha256="0" * 64, limits=Limits())
MT_STATE_WORDS = 624  # a Mersenne Twister's state, recovered from this many outputs


def generation_id() -> str:
    """A generation id as the request path makes it."""
    return ProxyRequest(CHAT, {}, KEY).gen_id


# (id maker, prefix, bits after the prefix), each made the way the proxy makes it; a
# generation id's first 32 bits are the second it was made, the rest random
MAKERS: list[tuple[Callable[[], str], str, int]] = [
    (generation_id, "gen-", 96),
    (batch.new_batch_id, "batch_", 96),
    (ids.new_batch_request_id, "batch_req_", 64),
]
MAKER_IDS = ["generation", "batch", "batch_request"]


def untemper(y: int) -> int:
    """The Mersenne Twister state word behind one 32-bit output."""
    y ^= y >> 18
    y ^= (y << 15) & 0xEFC60000
    x = y
    for _ in range(5):
        x = y ^ ((x << 7) & 0x9D2C5680)
    y = x
    for _ in range(3):
        x = y ^ (x >> 11)
    return x & 0xFFFFFFFF


def predictor(seen: list[str], prefix: str, bits: int) -> Callable[[], str]:
    """What an attacker would build from ids seen: a clone of the generator, assuming ids
    are `getrandbits(bits)` of a Mersenne Twister (as `random.Random` makes them)."""
    words: list[int] = []
    for text in seen:
        value = int(text.removeprefix(prefix), 16)
        words += [(value >> (32 * i)) & 0xFFFFFFFF for i in range(bits // 32)]  # low first
    clone = random.Random()
    clone.setstate((3, (*[untemper(w) for w in words[:MT_STATE_WORDS]], MT_STATE_WORDS), None))
    return lambda: f"{prefix}{clone.getrandbits(bits):0{bits // 4}x}"


def test_the_predictor_breaks_a_seeded_mersenne_twister() -> None:
    """The attack works on what generation ids used to be: the tests below can fail."""
    twister = random.Random(os.urandom(32))

    def old_id() -> str:
        return f"gen-{twister.getrandbits(96):024x}"

    guess = predictor([old_id() for _ in range(MT_STATE_WORDS // 3)], "gen-", 96)
    assert [guess() for _ in range(50)] == [old_id() for _ in range(50)]


@pytest.mark.parametrize(("make", "prefix", "bits"), MAKERS, ids=MAKER_IDS)
def test_ids_cannot_be_predicted_from_earlier_ones(
    make: Callable[[], str], prefix: str, bits: int
) -> None:
    guess = predictor([make() for _ in range(MT_STATE_WORDS * 32 // bits)], prefix, bits)
    predicted = [guess() for _ in range(50)]
    actual = [make() for _ in range(50)]
    assert not set(predicted) & set(actual)


@pytest.mark.parametrize(("make", "prefix", "bits"), MAKERS, ids=MAKER_IDS)
def test_ids_have_the_format_and_are_unique(
    make: Callable[[], str], prefix: str, bits: int
) -> None:
    pattern = re.compile(rf"{re.escape(prefix)}[0-9a-f]{{{bits // 4}}}")
    drawn = [make() for _ in range(20000)]  # many times the pool: across refills
    assert all(pattern.fullmatch(i) for i in drawn), [i for i in drawn if not pattern.fullmatch(i)]
    assert len(set(drawn)) == len(drawn)


def test_generation_ids_start_with_the_second_they_were_made(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_700_000_000.9]
    monkeypatch.setattr(ids.time, "time", lambda: now[0])
    first = [generation_id() for _ in range(100)]
    now[0] += 1
    later = [generation_id() for _ in range(100)]
    assert {i[4:12] for i in first} == {f"{1_700_000_000:08x}"}
    assert max(first) < min(later)  # a later second sorts after: the index grows at its end
    assert len({i[12:] for i in first + later}) == 200  # the rest is random


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    ids.new_generation_id()  # the parent's pool is filled: the child inherits it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, " ".join(ids.new_generation_id() for _ in range(50)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = set(pipe.read().decode().split())
    os.waitpid(pid, 0)
    parent = {ids.new_generation_id() for _ in range(50)}
    assert len(child) == 50
    assert not parent & child


def test_two_processes_draw_different_ids() -> None:
    code = ("from anyrouter_proxy.ids import new_generation_id as n; "
            "print(' '.join(n() for _ in range(5)))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, timeout=60).stdout.split() for _ in range(2)]
    assert len(runs[0]) == 5
    assert not set(runs[0]) & set(runs[1])
