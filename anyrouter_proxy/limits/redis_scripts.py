"""The Lua scripts of the Redis quota (lua/*.lua, run by EVALSHA, loaded with SCRIPT
LOAD at start-up and again on NOSCRIPT) and the integer money units they count in."""

from __future__ import annotations

import hashlib
from importlib import resources

UNITS_PER_USD = 10_000_000_000  # money in Redis: integers of 1e-10 USD


class Script:
    __slots__ = ("name", "sha", "text")

    def __init__(self, name: str) -> None:
        self.name = name
        self.text = (resources.files(__package__) / "lua" / f"{name}.lua").read_text(
            encoding="utf-8")
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()


ADMIT = Script("admit")
PEEK = Script("peek")
RESERVE = Script("reserve")
SETTLE = Script("settle")
CREDIT_STATE = Script("credit_state")
REBUILD = Script("rebuild")
SCRIPTS = (ADMIT, PEEK, RESERVE, SETTLE, CREDIT_STATE, REBUILD)


def to_units(usd: float) -> int:
    return round(usd * UNITS_PER_USD)


def from_units(units: float) -> float:
    return round(units / UNITS_PER_USD, 10)
