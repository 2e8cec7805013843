"""Scale-out end to end. Two real `anyrouter-proxy serve` processes
("replicas") share one real redis-server (limits, concurrency, credits) and one real
PostgreSQL (the usage log), behind one real nginx running deploy/nginx/anyrouter.conf with
its scale-out upstream block uncommented (`least_conn;` and a `server` line per replica).

The replicas run deploy/scale-out/routes.yaml's `server`, `state` and `storage` sections as
written, ${ANYROUTER_REDIS_URL} and ${ANYROUTER_DATABASE_URL} included (set in their
environment), except a generous `state.timeout_s`; only providers, models and keys are the
test's own. The upstream is a
FakeOpenAI served from a thread of this process (the cluster lives for the whole module,
longer than any one test's event loop). Each test uses keys of its own, so the tests do not
depend on each other; the two Redis outages (each ends with a new, empty redis-server on
the same port) come last. The last test shows the other limits policy (`closed`) on one
in-process proxy with a redis-server of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from anyrouter_proxy.config.model import Config
from anyrouter_proxy.pricing import estimate_prompt_tokens
from tests.conftest import PROVIDER_KEY, ConfigFactory, Proxy, auth, openai_provider, sha256
from tests.fakes import FakeOpenAI
from tests.nginx import SITE, SITE_UPSTREAM, nginx_binary, nginx_config
from tests.pg_server import PgServer, running_pg_server
from tests.redis_server import RedisServer, free_port, running_redis_server

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="subprocesses, signals")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "scale-out" / "routes.yaml"
EXAMPLE_ENV = ("ANYROUTER_REDIS_URL", "ANYROUTER_DATABASE_URL")

MODEL = "openai/gpt-4o-mini"  # the fake answers at once (USAGE: 11 + 5 tokens)
SLOW = "openai/slow"  # the fake answers after SLOW_S, spending exactly the worst case
SLOW_UPSTREAM = "slow-exact"
SLOW_S = 0.5
PROMPT_PRICE, COMPLETION_PRICE = 0.15, 0.60
MESSAGES = [{"role": "user", "content": "hi"}]
CHAT: dict[str, Any] = {"model": MODEL, "messages": MESSAGES}
MAX_TOKENS = 100
BUDGET_BODY: dict[str, Any] = {"model": SLOW, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
PROMPT_ESTIMATE = estimate_prompt_tokens(BUDGET_BODY)
WORST = (PROMPT_ESTIMATE * PROMPT_PRICE + MAX_TOKENS * COMPLETION_PRICE) / 1_000_000

RPM = 10  # the requests_per_minute of key `rpm`
KEYS = {name: f"sk-ar-test-{name}-" + "0123456789abcdef" * 2
        for name in ("rpm", "budget", "usage", "paid", "free")}
KEY_FIELDS: dict[str, dict[str, Any]] = {
    "rpm": {"limits": {"requests_per_minute": RPM}},
    "budget": {"credits": 10 * WORST},  # exactly ten requests' worst case
    "usage": {},
    "paid": {"credits": 1.0},  # a key with credits: fails closed without Redis
    "free": {},  # a key without credits: served on the replica's own buckets
}


# -- the upstream: FakeOpenAI on a thread's event loop --------------------------------


def exact_reply() -> dict[str, Any]:
    """Usage equal to BUDGET_BODY's worst case: a settled request spends all it reserved."""
    return {"id": "chatcmpl-exact", "object": "chat.completion", "created": 0,
            "model": SLOW_UPSTREAM,
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": PROMPT_ESTIMATE, "completion_tokens": MAX_TOKENS,
                      "total_tokens": PROMPT_ESTIMATE + MAX_TOKENS}}


class ThreadedUpstream:
    """FakeOpenAI served on 127.0.0.1 by a loop of its own thread. Chat requests for the
    upstream model SLOW_UPSTREAM wait SLOW_S, then get exact_reply()."""

    def __init__(self) -> None:
        self.fake = FakeOpenAI("openai")
        self.slow_calls = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-upstream",
                                       daemon=True)
        self.runner: web.AppRunner | None = None
        self.base_url = ""

    @property
    def calls(self) -> int:
        return len(self.fake.requests) + self.slow_calls

    def _app(self) -> web.Application:
        app = self.fake.app()

        @web.middleware
        async def slow_exact(request: web.Request,
                             handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                             ) -> web.StreamResponse:
            if request.path == "/v1/chat/completions":
                body = await request.json()  # cached: the fake's handler reads it again
                if body.get("model") == SLOW_UPSTREAM:
                    self.slow_calls += 1
                    await asyncio.sleep(SLOW_S)
                    return web.json_response(exact_reply())
            return await handler(request)

        app.middlewares.append(slow_exact)
        return app

    async def _start(self) -> str:
        self.runner = web.AppRunner(self._app(), handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> None:
        self.thread.start()
        self.base_url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# -- the cluster: two `serve` replicas and nginx -----------------------------------------


@dataclass
class Replica:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


@dataclass
class Cluster:
    replicas: list[Replica]
    nginx_port: int
    nginx_dir: Path
    dsn: str
    redis: RedisServer
    upstream: ThreadedUpstream

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.nginx_port}{path}"

    def diagnostics(self) -> str:
        nginx_log = self.nginx_dir / "error.log"
        parts = [f"--- replica {r.name}:\n{r.output()}" for r in self.replicas]
        if nginx_log.exists():
            parts.append("--- nginx error.log:\n" + nginx_log.read_text()[-2000:])
        return "\n".join(parts)


def replica_config(tmp: Path, upstream: ThreadedUpstream) -> Path:
    """deploy/scale-out/routes.yaml with the test's providers, models and keys; its
    server, state (but timeout_s) and storage sections, ${ENV} references included."""
    text = EXAMPLE.read_text()
    for name in EXAMPLE_ENV:
        assert "${" + name + "}" in text, f"the example no longer uses ${{{name}}}"
    data = yaml.safe_load(text)
    assert data["state"]["backend"] == "redis" and data["storage"]["backend"] == "postgres"
    # A generous timeout, as in test_redis_state: on a loaded CI machine a slow answer
    # would otherwise fall back to local buckets. A killed Redis refuses at once anyway.
    data["state"]["timeout_s"] = 5
    pricing = {"prompt": PROMPT_PRICE, "completion": COMPLETION_PRICE}
    data["providers"] = {"openai": {"kind": "openai", "base_url": upstream.base_url,
                                    "api_key": PROVIDER_KEY}}
    data["models"] = {
        MODEL: {"pricing": pricing, "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]},
        SLOW: {"pricing": pricing, "routes": [{"provider": "openai", "model": SLOW_UPSTREAM}]},
    }
    data["keys"] = {name: {"key_sha256": sha256(KEYS[name]), **KEY_FIELDS[name]}
                    for name in KEYS}
    path = tmp / "routes.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def http_get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_healthy(replica: Replica, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while True:
        assert replica.proc.poll() is None, f"replica {replica.name} exited:\n{replica.output()}"
        with contextlib.suppress(OSError):
            if http_get(replica.url("/health"))[0] == 200:
                return
        assert time.monotonic() < deadline, f"replica {replica.name} never ready:\n" \
            + replica.output()
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def scale_out_site(ports: list[int], listen: int) -> str:
    """deploy/nginx/anyrouter.conf with its commented scale-out block applied as the
    comment says: `least_conn;` and one `server` line per replica."""
    text = SITE.read_text()
    assert text.count(SITE_UPSTREAM) == 1 and "# least_conn;" in text
    servers = "".join(f"\n    server 127.0.0.1:{port};" for port in ports)
    text = text.replace(SITE_UPSTREAM, "least_conn;" + servers)
    return text.replace("listen 80;", f"listen 127.0.0.1:{listen};")


def start_nginx(tmp: Path, ports: list[int]) -> tuple[subprocess.Popen[bytes], int]:
    binary = nginx_binary()
    tmp.mkdir()
    port = free_port()
    conf = tmp / "nginx.conf"
    # 100 concurrent clients, each with a connection to a replica: more than 256.
    conf.write_text(nginx_config(tmp, scale_out_site(ports, port)).replace(
        "worker_connections 256;", "worker_connections 1024;"))
    base = [binary, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")]
    check = subprocess.run([*base, "-t"], capture_output=True, text=True, timeout=10)
    assert check.returncode == 0, f"nginx -t failed:\n{check.stderr}"
    proc = subprocess.Popen([*base, "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while http_get_ok(f"http://127.0.0.1:{port}/health") is None:
        assert proc.poll() is None, (tmp / "error.log").read_text()
        assert time.monotonic() < deadline, "nginx did not listen"
        time.sleep(0.02)
    return proc, port


def http_get_ok(url: str) -> int | None:
    try:
        return http_get(url)[0]
    except OSError:
        return None


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    with running_pg_server() as server:
        yield server


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis_server() as server:
        yield server


@pytest.fixture(scope="module")
def upstream() -> Iterator[ThreadedUpstream]:
    server = ThreadedUpstream()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(pg: PgServer, redis_server: RedisServer, upstream: ThreadedUpstream,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("replicas")
    config = replica_config(tmp, upstream)
    dsn = pg.dsn("anyrouter")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ANYROUTER_REDIS_URL": redis_server.url,
           "ANYROUTER_DATABASE_URL": dsn}
    replicas: list[Replica] = []
    nginx: subprocess.Popen[bytes] | None = None
    try:
        for name in ("a", "b"):  # started together: they migrate the empty database at once
            port = free_port()
            log = tmp / f"replica-{name}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "anyrouter_proxy", "serve", "--config",
                     str(config), "--port", str(port), "--log-level", "warning"],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                    cwd=tmp)
            replicas.append(Replica(name, port, proc, log))
        for replica in replicas:
            wait_healthy(replica)
        nginx, nginx_port = start_nginx(tmp / "nginx", [r.port for r in replicas])
        yield Cluster(replicas, nginx_port, tmp / "nginx", dsn, redis_server, upstream)
    finally:
        if nginx is not None:
            stop_process(nginx)
        for replica in replicas:
            stop_process(replica.proc)


# -- client helpers -------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def gen_id(self) -> str | None:
        return self.headers.get("X-AnyRouter-Generation-Id")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        yield s


async def request(session: aiohttp.ClientSession, method: str, url: str, key: str,
                  body: Any = None) -> Reply:
    async with session.request(method, url, json=body, headers=auth(KEYS[key])) as response:
        raw = await response.read()
        data: Any = json.loads(raw) if response.content_type == "application/json" else raw
        return Reply(response.status, dict(response.headers), data)


async def chat(session: aiohttp.ClientSession, base: str, key: str,
               body: dict[str, Any] | None = None) -> Reply:
    return await request(session, "POST", base + "/api/v1/chat/completions", key,
                         body or CHAT)


async def burst(session: aiohttp.ClientSession, base: str, key: str, n: int,
                body: dict[str, Any] | None = None) -> list[Reply]:
    return list(await asyncio.gather(*(chat(session, base, key, body) for _ in range(n))))


async def requests_by_replica(session: aiohttp.ClientSession, cluster: Cluster,
                              key: str) -> dict[str, Counter[str]]:
    """anyrouter_requests_total of `key`, by status class, scraped from each replica."""
    result: dict[str, Counter[str]] = {}
    for replica in cluster.replicas:
        async with session.get(replica.url("/metrics")) as response:
            text = await response.text()
        counts: Counter[str] = Counter()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "anyrouter_requests_total" and sample.labels["key"] == key:
                    counts[sample.labels["status_class"]] += int(sample.value)
        result[replica.name] = counts
    return result


async def settled_requests_by_replica(session: aiohttp.ClientSession, cluster: Cluster,
                                      key: str, total: int) -> dict[str, Counter[str]]:
    """requests_by_replica once all `total` requests are counted (a request is counted
    when its record completes, a moment after the client has the answer)."""
    deadline = time.monotonic() + 5
    while True:
        counts = await requests_by_replica(session, cluster, key)
        if sum(sum(c.values()) for c in counts.values()) >= total or \
                time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.05)


async def pg_fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def rows_of(cluster: Cluster, key: str, expected: int) -> dict[str, asyncpg.Record]:
    """The key's generations rows, once at least `expected` are there (or 5 s passed)."""
    deadline = time.monotonic() + 5
    while True:
        rows = await pg_fetch(cluster.dsn, "SELECT id, status_code, error_code, cost, "
                                           "streamed FROM generations WHERE key_name = $1",
                              key)
        if len(rows) >= expected or time.monotonic() > deadline:
            return {row["id"]: row for row in rows}
        await asyncio.sleep(0.05)


# -- 1. rate limits across replicas ---------------------------------------------------


async def test_n_requests_per_minute_across_both_replicas_in_a_burst(
        cluster: Cluster, session: aiohttp.ClientSession) -> None:
    before = cluster.upstream.calls
    replies = await burst(session, cluster.url(""), "rpm", 3 * RPM)
    statuses = Counter(r.status for r in replies)
    assert statuses == {200: RPM, 429: 2 * RPM}, (statuses, cluster.diagnostics())
    assert cluster.upstream.calls - before == RPM
    for reply in replies:
        assert reply.headers["X-RateLimit-Limit"] == str(RPM)
        if reply.status == 429:
            assert reply.body["error"]["code"] == "rate_limited"
            assert reply.headers["X-RateLimit-Remaining"] == "0"
            assert int(reply.headers["Retry-After"]) >= 1

    # Both replicas took part, and together they admitted exactly RPM.
    counts = await settled_requests_by_replica(session, cluster, "rpm", 3 * RPM)
    assert all(sum(c.values()) > 0 for c in counts.values()), counts
    assert sum(c["2xx"] for c in counts.values()) == RPM, counts
    assert sum(c["4xx"] for c in counts.values()) == 2 * RPM, counts
    for replica in cluster.replicas:  # and either one, asked directly, is out as well
        reply = await chat(session, replica.url(""), "rpm")
        assert reply.status == 429, (replica.name, reply.body)


# -- 2. the credit budget across replicas ---------------------------------------------


async def test_hundred_concurrent_requests_on_ten_requests_of_credit_across_replicas(
        cluster: Cluster, session: aiohttp.ClientSession) -> None:
    credits = KEY_FIELDS["budget"]["credits"]
    before = cluster.upstream.slow_calls
    started = time.monotonic()
    replies = await burst(session, cluster.url(""), "budget", 100, BUDGET_BODY)
    elapsed = time.monotonic() - started
    statuses = Counter(r.status for r in replies)
    assert statuses[200] <= 10, statuses
    assert statuses == {200: 10, 402: 90}, (statuses, cluster.diagnostics())
    assert cluster.upstream.slow_calls - before == 10
    assert elapsed < 10 * SLOW_S, "the requests did not overlap"
    for reply in replies:
        if reply.status == 402:
            assert reply.body["error"]["code"] == "insufficient_credits"

    counts = await settled_requests_by_replica(session, cluster, "budget", 100)
    assert all(sum(c.values()) > 0 for c in counts.values()), counts

    # Spend, as each replica reports it (Redis) and as the usage log has it: $0.00 over.
    for replica in cluster.replicas:
        reply = await request(session, "GET", replica.url("/api/v1/credits"), "budget")
        assert reply.status == 200
        data = reply.body["data"]
        assert data["total_credits"] == pytest.approx(credits, rel=1e-12)
        assert data["total_usage"] <= data["total_credits"], (replica.name, data)
        assert data["total_usage"] == pytest.approx(10 * WORST, rel=1e-9)
        info = await request(session, "GET", replica.url("/api/v1/auth/key"), "budget")
        assert info.body["data"]["limit_remaining"] == pytest.approx(0, abs=1e-9)
        assert info.body["data"]["in_flight"] == 0
    rows = await rows_of(cluster, "budget", 100)
    assert len(rows) == 100
    spent = sum(row["cost"] or 0 for row in rows.values())
    assert spent == pytest.approx(10 * WORST, rel=1e-9)
    assert round(spent - credits, 2) <= 0 and spent <= credits * (1 + 1e-12)
    total = await pg_fetch(cluster.dsn, "SELECT SUM(cost) AS s FROM generations "
                                        "WHERE key_name = 'budget'")
    assert float(total[0]["s"]) == pytest.approx(spent, rel=1e-12)
    assert Counter(row["status_code"] for row in rows.values()) == {200: 10, 402: 90}


# -- 3. one usage log for both replicas -----------------------------------------------


async def test_usage_rows_of_both_replicas_are_all_in_postgres(
        cluster: Cluster, session: aiohttp.ClientSession) -> None:
    stream = {**CHAT, "stream": True}
    replies = await burst(session, cluster.url(""), "usage", 30)
    replies += await burst(session, cluster.url(""), "usage", 6, stream)
    made_on: dict[str, str] = {}  # generation id -> replica, for requests sent directly
    for replica in cluster.replicas:
        for body in (CHAT, stream):
            reply = await chat(session, replica.url(""), "usage", body)
            replies.append(reply)
            assert reply.gen_id is not None
            made_on[reply.gen_id] = replica.name
    assert [r.status for r in replies] == [200] * len(replies)
    seen = [str(r.gen_id) for r in replies]
    assert all(r.gen_id for r in replies) and len(set(seen)) == len(seen)

    rows = await rows_of(cluster, "usage", len(seen))
    assert set(rows) == set(seen), cluster.diagnostics()  # rows == responses, no more
    assert all(row["status_code"] == 200 and row["cost"] > 0 for row in rows.values())
    assert sum(row["streamed"] for row in rows.values()) == 6 + 2
    counts = await settled_requests_by_replica(session, cluster, "usage", len(seen))
    assert all(c["2xx"] > 0 for c in counts.values()), counts  # both wrote rows
    assert sum(c["2xx"] for c in counts.values()) == len(seen)

    # A generation made on one replica is found by the other.
    by_name = {r.name: r for r in cluster.replicas}
    for gen_id, name in made_on.items():
        other = by_name["b" if name == "a" else "a"]
        reply = await request(session, "GET", other.url(f"/api/v1/generation/{gen_id}"),
                              "usage")
        assert reply.status == 200, (name, other.name, reply.body)
        assert reply.body["data"]["id"] == gen_id
    # ... and through nginx, whichever replica answers.
    for gen_id in made_on:
        reply = await request(session, "GET", cluster.url(f"/api/v1/generation/{gen_id}"),
                              "usage")
        assert reply.status == 200 and reply.body["data"]["id"] == gen_id


# -- the example config -----------------------------------------------------------------


def run_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "anyrouter_proxy", "check", "--config",
                           str(EXAMPLE)], capture_output=True, text=True, timeout=60,
                          env=env, cwd=ROOT)


def test_example_config_checks_with_its_documented_environment() -> None:
    base = {k: v for k, v in os.environ.items() if k not in EXAMPLE_ENV}
    env = {**base, "ANYROUTER_REDIS_URL": "redis://:s3cret@10.0.0.5:6379/0",
           "ANYROUTER_DATABASE_URL": "postgresql://anyrouter:s3cret@10.0.0.5:5432/anyrouter"}
    result = run_check(env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    missing = run_check(base)  # each variable it needs is named, with its line
    assert missing.returncode != 0
    for name in EXAMPLE_ENV:
        assert f"environment variable {name} is not set" in missing.stdout + missing.stderr
    for name in EXAMPLE_ENV:  # and documented in the file's header
        assert f"#   {name}" in EXAMPLE.read_text()


# -- 4. Redis going away mid-run --------------------------------------------------------


async def health_of(session: aiohttp.ClientSession, replica: Replica) -> tuple[int, Any]:
    async with session.get(replica.url("/health")) as response:
        return response.status, await response.json()


async def metric(session: aiohttp.ClientSession, replica: Replica, name: str,
                 labels: dict[str, str] | None = None) -> float | None:
    async with session.get(replica.url("/metrics")) as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in (labels or {}).items()):
                return float(sample.value)
    return None


async def spend_on_both(session: aiohttp.ClientSession, cluster: Cluster,
                        key: str) -> list[float]:
    """GET /credits total_usage on each replica, once they agree (a replica's read waits
    for its own settlements; the other's may be a moment behind) or 3 s passed."""
    deadline = time.monotonic() + 3
    while True:
        spent = []
        for replica in cluster.replicas:
            reply = await request(session, "GET", replica.url("/api/v1/credits"), key)
            assert reply.status == 200, reply.body
            spent.append(float(reply.body["data"]["total_usage"]))
        if spent[0] == pytest.approx(spent[1], rel=1e-9) or time.monotonic() > deadline:
            return spent
        await asyncio.sleep(0.05)


async def test_redis_outage_applies_the_policy_and_recovers(
        cluster: Cluster, session: aiohttp.ClientSession) -> None:
    """Defaults (limits open, credits closed): without Redis a key with credits gets 503
    state_unavailable, a key without is served on each replica's own buckets; /health and
    /metrics say so; when redis-server is back, the credit key is served again within a
    few seconds and its spend (which the restarted, empty Redis lost) is not forgotten."""
    base = cluster.url("")
    paid: list[Reply] = []  # every answer on the key with credits
    for replica in cluster.replicas:  # both replicas serve both keys and see the spend
        paid.append(await chat(session, replica.url(""), "paid"))
        assert paid[-1].status == 200
        assert (await chat(session, replica.url(""), "free")).status == 200
    spent_before = await spend_on_both(session, cluster, "paid")
    assert spent_before[0] == spent_before[1] > 0

    cluster.redis.kill()
    try:
        refused = await burst(session, base, "paid", 6)
        for replica in cluster.replicas:
            refused.append(await chat(session, replica.url(""), "paid"))
        paid += refused
        for reply in refused:
            assert reply.status == 503, reply.body
            error = reply.body["error"]
            assert (error["type"], error["code"]) == ("service_unavailable",
                                                      "state_unavailable")
            assert "Redis" in error["message"]
            assert reply.headers["Retry-After"] == "1"
        for replica in cluster.replicas:  # right after a failed call: state unavailable
            paid.append(await chat(session, replica.url(""), "paid"))
            assert paid[-1].status == 503
            status, health = await health_of(session, replica)
            assert status == 200  # it still serves keys without credits
            assert health["state"] == {"backend": "redis", "status": "unavailable"}, health
            assert await metric(session, replica, "anyrouter_state_available") == 0

        served = await burst(session, base, "free", 10)
        for replica in cluster.replicas:
            served.append(await chat(session, replica.url(""), "free"))
        assert [r.status for r in served] == [200] * len(served), \
            [r.body for r in served if r.status != 200]
        for replica in cluster.replicas:
            fallbacks = await metric(session, replica, "anyrouter_state_fallbacks",
                                     {"kind": "limits"})
            assert fallbacks is not None and fallbacks > 0, replica.name
        # A 503 is a generation too: its row (cost 0) is in the shared log.
        rows = await rows_of(cluster, "paid", len(paid))
        assert set(rows) == {r.gen_id for r in paid}
        for reply in refused:
            row = rows[str(reply.gen_id)]
            assert (row["status_code"], row["error_code"], row["cost"]) == \
                (503, "state_unavailable", 0)
    finally:
        if cluster.redis.process is None:
            cluster.redis.start()
    restarted = time.monotonic()

    # Back: within a few seconds the credit key is served again, on both replicas.
    while True:
        paid.append(await chat(session, base, "paid"))
        if paid[-1].status == 200:
            break
        assert paid[-1].status == 503, paid[-1].body
        assert time.monotonic() - restarted < 5, "the credit key was not served again"
        await asyncio.sleep(0.1)
    for replica in cluster.replicas:
        paid.append(await chat(session, replica.url(""), "paid"))
        assert paid[-1].status == 200, (replica.name, paid[-1].body)
    paid += await burst(session, base, "paid", 6)
    assert [r.status for r in paid[-6:]] == [200] * 6

    # Shared state again: the key lives in Redis again, both replicas report one spend,
    # and it includes what was spent before the outage (the restarted Redis was empty).
    client = redis.Redis.from_url(cluster.redis.url)
    try:
        assert client.keys("anyrouter:{key:paid}:*"), "the credit key is not in Redis again"
    finally:
        client.close()
    for replica in cluster.replicas:
        _, health = await health_of(session, replica)
        assert health["state"] == {"backend": "redis", "status": "ok"}, (replica.name, health)
        assert await metric(session, replica, "anyrouter_state_available") == 1
    spent_after = await spend_on_both(session, cluster, "paid")
    assert spent_after[0] == pytest.approx(spent_after[1], rel=1e-9), spent_after
    assert spent_after[0] > spent_before[0], (spent_before, spent_after)
    rows = await rows_of(cluster, "paid", len(paid))
    assert set(rows) == {r.gen_id for r in paid}
    logged = sum(row["cost"] or 0 for row in rows.values())
    assert spent_after[0] == pytest.approx(logged, rel=1e-9), (spent_after, logged)


async def test_health_shows_redis_down_without_traffic(
        cluster: Cluster, session: aiohttp.ClientSession) -> None:
    """/health is the load balancer's and the operator's probe: with Redis down it must
    say so even when no request has touched Redis lately."""
    await spend_on_both(session, cluster, "paid")  # nothing left to settle: no retries
    cluster.redis.kill()
    try:
        await asyncio.sleep(1.5)  # no requests: only the probe
        states = {}
        for replica in cluster.replicas:
            _, health = await health_of(session, replica)
            states[replica.name] = health["state"]["status"]
        assert states == {"a": "unavailable", "b": "unavailable"}, states
    finally:
        cluster.redis.start()


async def test_limits_closed_refusal_has_its_usage_row(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI,
        start_proxy: Callable[[Config], Awaitable[Proxy]],
        session: aiohttp.ClientSession) -> None:
    """The other policy (one process is enough to show it): every proxied request,
    refused ones included, has the row its generation id names."""
    with running_redis_server() as own_redis:
        proxy = await start_proxy(config_factory(
            providers={"openai": openai_provider(fake_openai)},
            models={MODEL: {"routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
            keys={"free": {"key_sha256": sha256(KEYS["free"])}},
            state={"backend": "redis", "url": own_redis.url, "timeout_s": 5,
                   "on_error": {"limits": "closed"}}))
        assert (await chat(session, proxy.url(""), "free")).status == 200
        own_redis.kill()
        reply = await chat(session, proxy.url(""), "free")
    assert reply.status == 503 and reply.body["error"]["code"] == "state_unavailable"
    assert reply.gen_id is not None
    await proxy.flush()
    found = await request(session, "GET", proxy.url(f"/api/v1/generation/{reply.gen_id}"),
                          "free")
    assert found.status == 200, found.body
    assert (found.body["data"]["status_code"], found.body["data"]["error_code"]) == \
        (503, "state_unavailable")
