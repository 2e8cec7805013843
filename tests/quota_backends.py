"""Both quota backends for one test: this process's buckets (memory, the default) and a
throwaway Redis shared by the module's tests, each test under a key prefix of its own.

Usage in a test module (the names are pytest fixtures):

    from tests.quota_backends import redis_server, state_section  # noqa: F401

and a `state_section: dict` argument, passed as `state=` to config_factory.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.redis_server import RedisServer, running_redis_server

BACKENDS = ("memory", "redis")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis_server() as server:
        yield server


@pytest.fixture(params=BACKENDS)
def state_section(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "memory":
        return {}
    server: RedisServer = request.getfixturevalue("redis_server")
    return {"backend": "redis", "url": server.url, "timeout_s": 5,  # no flaky fallback
            "key_prefix": f"t{uuid.uuid4().hex[:10]}:"}
