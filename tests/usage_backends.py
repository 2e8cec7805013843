"""Running a test on both usage-log backends: `storage` is the routes.yaml `storage:`
section of each (SQLite in tmp_path, or a fresh schema of a private PostgreSQL cluster,
started once per test module that imports these fixtures)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.pg_server import PgServer, running_pg_server

BACKENDS = ("sqlite", "postgres")


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PgServer]:
    with running_pg_server() as server:
        yield server


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest) -> dict[str, Any]:
    """`{}` (the config_factory's SQLite file) or PostgreSQL on a fresh schema."""
    if request.param == "sqlite":
        return {}
    cluster: PgServer = request.getfixturevalue("pg_cluster")
    return {"backend": "postgres", "dsn": cluster.new_schema()}
