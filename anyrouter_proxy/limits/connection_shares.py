"""Each key's share of a provider's connection pool (pure, no I/O).

A provider's pool (`max_connections`) is shared by every key; without a cap, one key with
many slow streams could hold every connection while the others wait and time out. Here
the requests each key has in flight to each provider in this process are counted (a dict
increment when an attempt starts, a decrement when it ends, however it ends) and a key at
its share (`per_key_connections`) is refused that provider for the attempt.
"""

from __future__ import annotations

from ..config.model import ProviderConfig
from ..errors import RateLimited
from .quota import Held

RETRY_AFTER_S = "1"  # a key at its share may retry as soon as one of its requests ends


class Share:
    """One request's place in a provider's pool; `release()` gives it back (once). It
    carries the attempt's provider admission, if any, so the books hold one object."""

    __slots__ = ("_counts", "_key", "_totals", "admission")

    def __init__(self, counts: dict[tuple[str, str], int], totals: dict[str, int],
                 key: tuple[str, str]) -> None:
        self._counts: dict[tuple[str, str], int] | None = counts
        self._totals = totals
        self._key = key
        self.admission: Held | None = None

    def settle_tokens(self, actual_tokens: int) -> None:
        if self.admission is not None:
            self.admission.settle_tokens(actual_tokens)

    def release(self) -> None:
        if self.admission is not None:
            self.admission.release()
            self.admission = None
        counts = self._counts
        if counts is None:
            return
        self._counts = None
        key = self._key
        left = counts[key] - 1
        if left:
            counts[key] = left
        else:
            del counts[key]
        provider = key[0]
        total = self._totals[provider] - 1
        if total:
            self._totals[provider] = total
        else:
            del self._totals[provider]


class ConnectionShares:
    """In-flight upstream requests per (provider, key) and per provider."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        self._totals: dict[str, int] = {}

    def take(self, provider: ProviderConfig, key_name: str) -> Share | None:
        """A place for one more request of `key_name`; None when the key holds its share."""
        key = (provider.id, key_name)
        held = self._counts.get(key, 0)
        if held >= provider.connections_per_key:
            return None
        self._counts[key] = held + 1
        self._totals[provider.id] = self._totals.get(provider.id, 0) + 1
        return Share(self._counts, self._totals, key)

    def held(self, provider_id: str, key_name: str) -> int:
        return self._counts.get((provider_id, key_name), 0)

    def in_flight(self, provider_id: str) -> int:
        """Requests of every key in flight to this provider (what its pool carries)."""
        return self._totals.get(provider_id, 0)


SHARE_SKIP = "the key's share of its connections is in use"


def share_exhausted(key_name: str, skipped: list[str]) -> RateLimited:
    """429 for a request every usable provider refused because the key held its share."""
    providers = [reason.split(":", 1)[0] for reason in skipped if reason.endswith(SHARE_SKIP)]
    names = ", ".join(dict.fromkeys(providers))
    return RateLimited(f"Key {key_name} already has its share of requests in flight to "
                       f"{names}; retry when one of them ends",
                       metadata={"skipped": list(dict.fromkeys(skipped))},
                       headers={"Retry-After": RETRY_AFTER_S})
