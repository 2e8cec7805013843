"""A throwaway PostgreSQL cluster for tests: initdb in a temp dir, served on a free
loopback port with trust auth, stopped and deleted at the end.

Uses Debian's server binaries (/usr/lib/postgresql/<version>/bin, installed by
scripts/install-test-deps.sh's `apt-get install postgresql`). PostgreSQL refuses to run
as root, so as root every server command runs as the `postgres` OS user (`runuser -u
postgres --`) on a directory chowned to it. Usage in a test module:

    @pytest.fixture(scope="session")
    def pg() -> Iterator[PgServer]:
        with running_pg_server() as server:
            yield server
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.net import free_port

OS_USER = "postgres"
SUPERUSER = "postgres"
MISSING = ("PostgreSQL server binaries (initdb, pg_ctl) not found under "
           "/usr/lib/postgresql/*/bin or on PATH: scripts/install-test-deps.sh (run by "
           "`make test`) installs them with `apt-get install postgresql`")


def find_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin with initdb and pg_ctl (or PATH's)."""
    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit()) or (0,)

    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if os.access(Path(candidate) / "initdb", os.X_OK) and \
                os.access(Path(candidate) / "pg_ctl", os.X_OK):
            return Path(candidate)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    return None


class PgServer:
    """One private cluster. `dsn(db)` names a database on it; `new_database()` makes a
    fresh empty one and `new_schema()` a quicker stand-in for one (each test gets its
    own); `stop()` / `start()` simulate an outage."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.as_root = os.geteuid() == 0
        # As root, under /tmp whatever TMPDIR says: the postgres user must reach the
        # directory, and the socket path must stay short.
        parent = "/tmp" if self.as_root and os.path.isdir("/tmp") else None
        self.root = Path(tempfile.mkdtemp(prefix="anyrouter-pg-", dir=parent))
        self.data_dir = self.root / "data"
        self.log_file = self.root / "server.log"
        self.port = free_port()
        if self.as_root:
            os.chmod(self.root, 0o700)
            shutil.chown(self.root, OS_USER, OS_USER)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        command = [str(self.bin_dir / tool), *args]
        if self.as_root:
            command = ["runuser", "-u", OS_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                cwd=self.root, check=False)
        if result.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-2000:] \
                if self.log_file.exists() else ""
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stdout}"
                               f"{result.stderr}\n{log}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
                  "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions")

    def start(self) -> None:
        # Durability is not under test: no fsync keeps the whole module fast.
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.root} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file),
                  "-w", "-t", "30", "-o", options)

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "30")

    def new_database(self) -> str:
        """A fresh database; returns its DSN."""
        name = "t_" + uuid.uuid4().hex[:12]
        self.sql(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.dsn(name)

    def new_schema(self, database: str = "anyrouter") -> str:
        """A fresh empty schema, as a DSN whose search_path is that schema alone: as good
        as a new database for unqualified table names, and ten times quicker to make."""
        name = "t_" + uuid.uuid4().hex[:12]
        self.sql(f"CREATE SCHEMA {name}", database=database)
        return f"{self.dsn(database)}?search_path={name}"

    def sql(self, statement: str, *, database: str = "postgres") -> None:
        """One statement through psql (synchronous: for setup outside an event loop)."""
        psql = self.bin_dir / "psql"
        command = [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                   "-p", str(self.port), "-U", SUPERUSER, "-d", database, "-c", statement]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30,
                                check=False)
        if result.returncode != 0:
            raise RuntimeError(f"psql {statement!r} failed: {result.stderr}")

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_pg_server() -> Iterator[PgServer]:
    """A started cluster with a database `anyrouter`; FAILS the test (not skips) when the
    binaries are missing, since CI must run these tests."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.fail(MISSING, pytrace=False)
    server = PgServer(bin_dir)
    try:
        server.init()
        for attempt in range(3):  # the free port can be taken between probe and bind
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                server.port = free_port()
                time.sleep(0.1)
        server.sql("CREATE DATABASE anyrouter")
        yield server
    finally:
        server.cleanup()
