"""deploy/ in practice: a real nginx with deploy/nginx/anyrouter.conf in front of the proxy.

The site file is used as written; only its upstream address (127.0.0.1:8080) and listen
port (80) are replaced. The nginx binary comes from Debian's `nginx` package, which
scripts/install-test-deps.sh installs. The other deploy files are checked for syntax and
metric names.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from anyrouter_proxy.config.model import Config
from anyrouter_proxy.metrics import Metrics
from anyrouter_proxy.server.lane import LaneProtocol
from tests.conftest import ALICE_KEY, ConfigFactory, Proxy, auth, openai_provider
from tests.fakes import Behaviour, FakeOpenAI
from tests.net import free_port
from tests.nginx import DEPLOY, nginx_binary, nginx_config, site_config

CHAT = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

StartProxy = Callable[[Config], Awaitable[Proxy]]
RunNginx = Callable[..., Awaitable["Nginx"]]


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    port: int
    tmp: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def error_log(self) -> str:
        log = self.tmp / "error.log"
        return log.read_text() if log.exists() else ""


@pytest.fixture
def run_nginx(tmp_path: Path) -> Iterator[RunNginx]:
    binary = nginx_binary()
    started: list[Nginx] = []

    async def run(upstream: str, *, metrics_open: bool = True) -> Nginx:
        tmp = tmp_path / f"nginx{len(started)}"
        tmp.mkdir()
        port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(nginx_config(tmp, site_config(upstream, port,
                                                      metrics_open=metrics_open)))
        base = [binary, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")]
        check = subprocess.run([*base, "-t"], capture_output=True, text=True, timeout=10)
        assert check.returncode == 0, f"nginx -t failed:\n{check.stderr}"
        process = subprocess.Popen([*base, "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)  # errors go to error.log
        nginx = Nginx(process, port, tmp)
        started.append(nginx)
        await wait_listening(nginx)
        return nginx

    yield run
    for nginx in started:
        nginx.process.terminate()
        try:
            nginx.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            nginx.process.kill()
            nginx.process.wait()


async def wait_listening(nginx: Nginx) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if nginx.process.poll() is not None:
            pytest.fail(f"nginx exited with {nginx.process.returncode}:\n{nginx.error_log()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", nginx.port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        await writer.wait_closed()
        return
    pytest.fail(f"nginx did not listen on {nginx.port}:\n{nginx.error_log()}")


@pytest.fixture
async def proxy(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                start_proxy: StartProxy) -> Proxy:
    config = config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models={"openai/gpt-4o-mini": {"pricing": {"prompt": 0.15, "completion": 0.60},
                                       "routes": [{"provider": "openai",
                                                   "model": "gpt-4o-mini"}]}})
    return await start_proxy(config)


@pytest.fixture
async def nginx(run_nginx: RunNginx, proxy: Proxy) -> Nginx:
    return await run_nginx(f"{proxy.server.host}:{proxy.server.port}")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Accept-Encoding": "gzip, deflate"}) as s:
        yield s


async def test_chat_completion_through_nginx_keeps_the_proxy_headers(
        nginx: Nginx, session: aiohttp.ClientSession) -> None:
    async with session.post(nginx.url("/api/v1/chat/completions"), json=CHAT,
                            headers=auth()) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Server"].startswith("nginx")
        body = await response.json()
        headers = response.headers
    gen_id = headers["X-AnyRouter-Generation-Id"]
    assert gen_id.startswith("gen-") and body["id"] == gen_id
    assert headers["X-AnyRouter-Provider"] == "openai"
    assert int(headers["X-RateLimit-Limit"]) >= int(headers["X-RateLimit-Remaining"]) >= 0
    assert int(headers["X-RateLimit-Reset"]) >= int(time.time()) - 1
    assert body["choices"][0]["message"]["content"]
    async with session.get(nginx.url("/v1/models"), headers=auth()) as response:
        assert response.status == 200  # the /v1 alias goes through too
        assert (await response.json())["data"][0]["id"] == "openai/gpt-4o-mini"


async def test_stream_is_relayed_event_by_event(
        nginx: Nginx, fake_openai: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    fake_openai.then(Behaviour(chunks=5, chunk_delay_s=0.3))  # 7 events, 0.3 s apart
    started = time.monotonic()
    arrivals: list[tuple[float, str]] = []
    async with session.post(nginx.url("/api/v1/chat/completions"),
                            json={**CHAT, "stream": True}, headers=auth()) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        assert "Content-Encoding" not in response.headers  # the site turns gzip off
        gen_id = response.headers["X-AnyRouter-Generation-Id"]
        async for line in response.content:
            if line.startswith(b"data: "):
                arrivals.append((time.monotonic() - started, line[6:].decode().strip()))
    total = time.monotonic() - started

    assert [data for _, data in arrivals][-1] == "[DONE]"
    chunks = [json.loads(data) for _, data in arrivals[:-1]]
    assert {chunk["id"] for chunk in chunks} == {gen_id}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "tok0 tok1 tok2 tok3 tok4 "
    first = arrivals[0][0]
    assert first < total - 0.8, f"first event at {first:.2f} s of {total:.2f} s: buffered"
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) > 0.15, f"events arrived in bursts, gaps {gaps}"


async def test_metrics_through_nginx_from_loopback(
        nginx: Nginx, session: aiohttp.ClientSession) -> None:
    async with session.post(nginx.url("/api/v1/chat/completions"), json=CHAT,
                            headers=auth()) as response:
        assert response.status == 200
    async with session.get(nginx.url("/metrics")) as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "anyrouter_requests_total"]
    assert any(s.labels["status_class"] == "2xx" and s.value >= 1 for s in samples)
    async with session.get(nginx.url("/health")) as response:
        assert response.status == 200  # no key needed
        assert (await response.json())["status"] == "ok"


@pytest.mark.parametrize(("method", "path", "headers", "body", "status", "code"), [
    ("POST", "/api/v1/chat/completions", {}, CHAT, 401, "missing_api_key"),
    ("POST", "/api/v1/chat/completions", {"Authorization": "Bearer nope"}, CHAT, 401,
     "invalid_api_key"),
    ("POST", "/api/v1/chat/completions", None, {**CHAT, "model": "nope/x"}, 404,
     "model_not_found"),
    ("GET", "/api/v2/models", None, None, 404, "route_not_found"),
    ("DELETE", "/api/v1/models", None, None, 405, "method_not_allowed"),
])
async def test_proxy_errors_pass_through_unchanged(
        nginx: Nginx, proxy: Proxy, session: aiohttp.ClientSession, method: str, path: str,
        headers: dict[str, str] | None, body: Any, status: int, code: str) -> None:
    answers = []
    for url in (proxy.url(path), nginx.url(path)):
        async with session.request(method, url, json=body,
                                   headers=auth() if headers is None else headers) as response:
            answers.append((response.status, response.content_type, await response.read()))
    direct, through = answers
    assert through == direct
    assert through[:2] == (status, "application/json")
    assert json.loads(through[2])["error"]["code"] == code


async def test_upstream_failure_envelope_passes_through(
        nginx: Nginx, fake_openai: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    # The gateway's own misconfiguration: 502 (scripted for every retry round there may be).
    fake_openai.then(*[Behaviour(status=401)] * 12)
    async with session.post(nginx.url("/api/v1/chat/completions"), json=CHAT,
                            headers=auth()) as response:
        assert (response.status, response.content_type) == (502, "application/json")
        error = (await response.json())["error"]
        assert "X-RateLimit-Remaining" in response.headers
    assert (error["type"], error["code"]) == ("upstream_error", "upstream_error")
    assert "openai" in json.dumps(error)


async def test_nginx_own_413_is_an_envelope(
        nginx: Nginx, session: aiohttp.ClientSession) -> None:
    body = b"x" * (10 * 1024 * 1024 + 1)  # one byte over client_max_body_size 10m
    async with session.post(nginx.url("/api/v1/chat/completions"), data=io.BytesIO(body),
                            headers={**auth(), "Content-Type": "application/json"}) as response:
        assert (response.status, response.content_type) == (413, "application/json")
        error = (await response.json())["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")


async def test_nginx_own_errors_are_envelopes(
        run_nginx: RunNginx, session: aiohttp.ClientSession) -> None:
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    nginx = await run_nginx(nobody, metrics_open=False)
    async with session.post(nginx.url("/api/v1/chat/completions"), json=CHAT,
                            headers=auth(ALICE_KEY)) as response:
        assert (response.status, response.content_type) == (502, "application/json")
        assert (await response.json())["error"]["code"] == "upstream_error"
    async with session.get(nginx.url("/health")) as response:  # a location of its own
        assert (response.status, response.content_type) == (502, "application/json")
    async with session.get(nginx.url("/metrics")) as response:
        assert (response.status, response.content_type) == (403, "application/json")
        assert (await response.json())["error"]["type"] == "permission_error"


# --- the other deploy files: syntax, and only metric names the proxy exports ---------

def exported_metric_names() -> set[str]:
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum",
                                                                 "_created"), "gauge": ("",)}
    return {family.name + suffix for family in Metrics().registry.collect()
            for suffix in suffixes[family.type]}


def metric_names_in(text: str) -> set[str]:
    return set(re.findall(r"\banyrouter_[a-z0-9_]+", text))


def test_prometheus_files_parse_and_use_exported_metrics() -> None:
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert "alerts.yml" in scrape["rule_files"]
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "anyrouter")
    assert job["metrics_path"] == "/metrics"
    alerts_text = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    rules = [r for group in yaml.safe_load(alerts_text)["groups"] for r in group["rules"]]
    assert {"alert", "expr", "labels", "annotations"} <= set(rules[0])
    assert {r["alert"] for r in rules} >= {
        "AnyRouterProviderErrorRatioHigh", "AnyRouterAllProvidersFailing",
        "AnyRouterKeyCreditsLow", "AnyRouterTimeToFirstTokenHigh"}
    unknown = metric_names_in(alerts_text) - exported_metric_names()
    assert not unknown, f"alerts.yml uses metrics the proxy does not export: {unknown}"


def test_grafana_dashboard_is_valid_and_uses_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "anyrouter-dashboard.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    unknown = metric_names_in(" ".join(exprs)) - exported_metric_names()
    assert not unknown, f"the dashboard uses metrics the proxy does not export: {unknown}"
    exported = {name for name in exported_metric_names() if not name.endswith("_created")}
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in metric_names_in(" ".join(exprs))}
    missing = {n for n in exported if re.sub(r"_(bucket|count|sum)$", "", n) not in families}
    assert not missing, f"metrics without a panel: {missing}"


GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1d", "$__range": "1d",
                     "$job": ".*", "$model": ".*", "$key": ".*"}


def test_promtool_accepts_the_prometheus_files_and_dashboard_queries(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: scripts/install-test-deps.sh installs it"
    dashboard = json.loads((DEPLOY / "grafana" / "anyrouter-dashboard.json").read_text())
    rules = []
    for n, target in enumerate(t for p in dashboard["panels"] for t in p.get("targets", [])):
        expr = target["expr"]
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{n}", "expr": expr})
    queries = tmp_path / "dashboard-queries.yml"
    queries.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    folder = DEPLOY / "prometheus"
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                 ["test", "rules", "alerts_test.yml"], ["check", "rules", str(queries)]):
        result = subprocess.run([promtool, *args], cwd=folder, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"


async def test_api_calls_through_nginx_are_served_on_the_lane(
        nginx: Nginx, proxy: Proxy, session: aiohttp.ClientSession) -> None:
    # The shipped site speaks HTTP/1.1 with keep-alive to the proxy: its API calls take
    # the proxy's fast path (the inbound lane), an HTTP/1.0 hop would not.
    for stream in (False, True):
        async with session.post(nginx.url("/v1/chat/completions"), headers=auth(),
                                json={**CHAT, "stream": stream}) as response:
            assert response.status == 200, await response.text()
            await response.read()
    assert proxy.server.runner is not None and proxy.server.runner.server is not None
    served = {type(c) for c in proxy.server.runner.server._connections}
    assert served == {LaneProtocol}
