"""ConnectionShares: each key's in-flight requests per provider, capped at its share."""

from __future__ import annotations

from anyrouter_proxy.config.model import ProviderConfig
from anyrouter_proxy.limits.connection_shares import SHARE_SKIP, ConnectionShares, share_exhausted

POOL = ProviderConfig(id="p", kind="openai", max_connections=4)  # default share: 2 a key


class Admission:
    def __init__(self) -> None:
        self.settled: list[int] = []
        self.released = 0

    def settle_tokens(self, actual_tokens: int) -> None:
        self.settled.append(actual_tokens)

    def release(self) -> None:
        self.released += 1


def test_default_share_is_half_the_pool_rounded_up() -> None:
    assert POOL.connections_per_key == 2
    assert ProviderConfig(id="p", kind="openai", max_connections=5).connections_per_key == 3
    assert ProviderConfig(id="p", kind="openai", max_connections=1).connections_per_key == 1
    assert ProviderConfig(id="p", kind="openai").connections_per_key == 128  # pool of 256
    assert ProviderConfig(id="p", kind="openai", max_connections=4,
                          per_key_connections=4).connections_per_key == 4


def test_a_key_at_its_share_is_refused_and_others_are_not() -> None:
    shares = ConnectionShares()
    alice = [shares.take(POOL, "alice"), shares.take(POOL, "alice")]
    assert all(alice) and shares.take(POOL, "alice") is None
    bob = shares.take(POOL, "bob")
    assert bob is not None
    other = ProviderConfig(id="q", kind="openai", max_connections=4)
    assert shares.take(other, "alice") is not None  # a share per provider
    assert (shares.held("p", "alice"), shares.in_flight("p"), shares.in_flight("q")) == (2, 3, 1)


def test_release_gives_the_place_back_once() -> None:
    shares = ConnectionShares()
    first, second = shares.take(POOL, "alice"), shares.take(POOL, "alice")
    assert first is not None and second is not None
    first.release()
    first.release()  # idempotent: never frees someone else's place
    assert shares.held("p", "alice") == 1
    assert shares.take(POOL, "alice") is not None
    assert shares.take(POOL, "alice") is None


def test_counts_drop_to_nothing_when_all_are_released() -> None:
    shares = ConnectionShares()
    taken = [shares.take(POOL, key) for key in ("alice", "bob", "alice")]
    for share in taken:
        assert share is not None
        share.release()
    assert (shares.held("p", "alice"), shares.in_flight("p")) == (0, 0)
    assert not shares._counts and not shares._totals  # no key lingers in the dicts


def test_a_share_carries_the_provider_admission() -> None:
    shares = ConnectionShares()
    share = shares.take(POOL, "alice")
    assert share is not None
    admission = share.admission = Admission()
    share.settle_tokens(42)
    share.release()
    share.release()
    share.settle_tokens(7)  # after release: nothing left to settle
    assert (admission.settled, admission.released) == ([42], 1)


def test_the_refusal_is_429_with_retry_after_naming_the_providers() -> None:
    exc = share_exhausted("alice", [f"p: {SHARE_SKIP}", "q: circuit open", f"p: {SHARE_SKIP}"])
    assert (exc.status, exc.type, exc.code) == (429, "rate_limit_error", "rate_limited")
    assert exc.headers == {"Retry-After": "1"}
    assert "Key alice" in exc.message and "in flight to p;" in exc.message
    assert exc.metadata == {"skipped": [f"p: {SHARE_SKIP}", "q: circuit open"]}
