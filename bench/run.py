"""The AnyRouter proxy benchmark: `make bench` (full, ~9 min) or `make bench-quick` (< 3 min).

Starts bench/upstream.py (a fast fake upstream: OpenAI, Anthropic and the native kinds'
wire formats) and the proxy (`anyrouter-proxy serve --config bench/config.yaml`: a key
with limits and credits, the usage log on, metrics on) as subprocesses, the proxy pinned
alone to core 0 and the upstream and the load generators to core 1 (where `taskset`
exists and there are two cores); for the native kinds a second proxy, the same but for
its providers (bench/config-kinds.yaml), on core 0 too. Then, in one run, for each
scenario: "direct to upstream", then "through the proxy", back to back, with the same
load and the same request:

    chat_c1 / chat_c16 / chat_c64  non-stream chat completion (wrk), concurrency 1/16/64
    stream_c16                     54-event SSE stream, unpaced (asyncio SSE client)
    stream_paced_c8                the same stream paced by the upstream: 100 ms to the
                                   first event, 5 ms between events; the 8 clients start
                                   spread over one stream's length, and direct and proxy
                                   alternate over three rounds (medians of the rounds)
    stream_paced_256               256 clients start together (a burst of users), the
                                   upstream paced at 50 tokens/s (100 ms, then 20 ms
                                   between events): CPU per stream and per event, the
                                   added time to the first event (the first wave apart),
                                   RSS peak, the streams one core carries
    embeddings_c16                 embeddings, 1536 floats (wrk)
    messages_stream_c16            Anthropic /messages stream (asyncio SSE client)
    chat_anthropic_stream_c16      chat stream translated from the /messages stream
    responses_stream_c16           POST /responses translated from the chat stream above
    responses_stored_stream_c16    the same, each response stored (store: true)
    responses_messages_stream_c16  POST /responses translated from the /messages stream
    stream_azure_c16 / stream_gemini_c16 / stream_vertex_c16 / stream_bedrock_c16
                                   the chat stream from each native kind's own wire
                                   format (Azure OpenAI SSE, streamGenerateContent SSE
                                   with a key or an OAuth token, Bedrock ConverseStream
                                   event-stream frames, SigV4-signed); their CPU per
                                   stream and the responses_* ones' as a multiple of
                                   stream_c16's

Reports RPS, p50/p90/p99, the latency the proxy adds (proxy minus direct), the proxy's
CPU per request (utime+stime of its pid from /proc, all threads), errors, the proxy's RSS
(idle after start, peak during chat_c64, idle after the load) and its start-up time
(spawn to the first 200 on /health); for streams also the CPU per event and the RSS peak
of each scenario (a second table). A Markdown table on stdout; JSON in
bench/results/latest.json. `--profile` then runs chat_c16 once more under py-spy and
prints where the proxy's CPU goes.

Every subprocess is killed on exit (also on Ctrl-C); everything listens on loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))  # run as a script

from bench.sseload import raise_fd_limit  # noqa: E402

RESULTS = BENCH / "results"
CONFIG = BENCH / "config.yaml"
CONFIG_KINDS = BENCH / "config-kinds.yaml"  # the native provider kinds, a second proxy
LUA = BENCH / "post.lua"
HOST = "127.0.0.1"
CLIENT_KEY = "sk-ar-bench-0000000000000000000000000000000000"
METRICS_TOKEN = "bench-metrics-token"
PACED_TTFT_MS, PACED_CHUNK_MS = 100, 5  # as in bench/config.yaml's openai-paced base_url
BURST_CHUNK_MS, BURST_CLIENTS = 20, 256  # openai-paced-20: 50 tokens/s, 256 users at once
CLK_TCK = os.sysconf("SC_CLK_TCK")
NOISY_PCT = 10  # more than this % of the proxy's core used by others: a noisy row
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

# ~250-byte prompt; the answer is 16 tokens (non-stream) or 54 events.
PROMPT = ("Summarise in one sentence: the quarterly report shows revenue grew 12% year over "
          "year, driven by strong demand in the enterprise segment, while operating costs "
          "stayed flat and the company hired forty engineers for the platform team.")
MESSAGES = [{"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": PROMPT}]


def chat_body(model: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": MESSAGES, "max_tokens": 256,
                            "temperature": 0.2}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def messages_body(model: str) -> dict[str, Any]:
    return {"model": model, "max_tokens": 256, "system": "You are a concise assistant.",
            "messages": [{"role": "user", "content": PROMPT}], "stream": True}


def responses_body(model: str, store: bool) -> dict[str, Any]:
    """The chat stream's request as a Responses API request (the same prompt and cap)."""
    return {"model": model, "instructions": "You are a concise assistant.", "input": PROMPT,
            "max_output_tokens": 256, "temperature": 0.2, "stream": True, "store": store}


def embeddings_body(model: str) -> dict[str, Any]:
    return {"model": model, "input": PROMPT}


def gemini_body() -> dict[str, Any]:
    """The chat stream's request as Gemini's generateContent body (Gemini API, Vertex AI)."""
    return {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
            "systemInstruction": {"parts": [{"text": "You are a concise assistant."}]},
            "generationConfig": {"maxOutputTokens": 256, "temperature": 0.2}}


def converse_body() -> dict[str, Any]:
    """The chat stream's request as a Bedrock Converse body."""
    return {"messages": [{"role": "user", "content": [{"text": PROMPT}]}],
            "system": [{"text": "You are a concise assistant."}],
            "inferenceConfig": {"maxTokens": 256, "temperature": 0.2}}


@dataclass
class Side:
    path: str
    body: dict[str, Any]
    headers: list[str] = field(default_factory=list)
    # a native stream read directly: what marks each event, what only its end holds
    event_marker: str | None = None
    end_markers: tuple[str, ...] = ()


@dataclass
class Scenario:
    key: str
    title: str
    tool: str  # wrk | sse
    concurrency: int
    direct: Side
    proxy: Side
    stagger_s: float = 0.0  # spread the clients' first requests over this long
    settle_s: float = 0.0  # not measured until the clients have run this long
    rounds: int = 1  # > 1: direct and proxy alternate, each round `duration * share`
    share: float = 1.0
    kinds: bool = False  # served by the second proxy (bench/config-kinds.yaml)


# A paced stream lasts ~365 ms whichever side serves it, so closed-loop clients started
# together stay in phase for the whole run: every request and every event would reach
# the proxy in bursts of 8 at the same instant, and p50 would measure queueing behind
# the other 7 rather than what the proxy adds to one stream. Spread over one stream's
# length (both sides alike), they arrive evenly. Three alternating rounds per side damp
# the noise of this low-load, sub-millisecond measurement.
PACED_STREAM_S = (PACED_TTFT_MS + 53 * PACED_CHUNK_MS) / 1000
# The burst's first wave (256 new connections and requests in the same instant) queues
# in the proxy for as long as it takes to admit them all: its figures are kept apart
# (first_ttft_ms), and latencies are measured from the second wave on, once the clients
# have run one stream's length. CPU counts every stream served, the first wave's too.
BURST_STREAM_S = (PACED_TTFT_MS + 53 * BURST_CHUNK_MS) / 1000
# The native kinds' streams read directly (the direct side): each kind's credential, and
# for the ones that are not OpenAI SSE, what marks an event and the stream's end.
GEMINI_PATH = "/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
DIRECT_NATIVE = {
    "azure": Side("/openai/v1/chat/completions", chat_body("gpt-4o-mini", True),
                  ["api-key: bench-azure-api-key-0000000000000000"]),
    "gemini": Side("/v1beta" + GEMINI_PATH, gemini_body(),
                   ["x-goog-api-key: AIza-bench-gemini-key-000000000000000000"],
                   "data:", ("finishReason",)),
    "vertex": Side("/v1/projects/bench-project/locations/us-central1/publishers/google"
                   + GEMINI_PATH, gemini_body(),
                   ["Authorization: Bearer ya29.bench-vertex-access-token"],
                   "data:", ("finishReason",)),
    # the upstream checks the access key, not the signature: a fixed, well-formed header
    "bedrock": Side("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream",
                    converse_body(),
                    ["Authorization: AWS4-HMAC-SHA256 Credential=AKIABENCHBEDROCK0001/"
                     "20250101/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, "
                     "Signature=" + "0" * 64, "X-Amz-Date: 20250101T000000Z"],
                    ":event-type", ("metadata",)),
}
NATIVE_MODELS = {"azure": ("azure/gpt-4o-mini", "Azure OpenAI"),
                 "gemini": ("google/gemini-2.5-flash", "Gemini API"),
                 "vertex": ("vertex/gemini-2.5-flash", "Vertex AI"),
                 "bedrock": ("bedrock/claude-3.5-sonnet", "Bedrock ConverseStream")}
# CPU per stream compared with stream_c16's (the OpenAI chat stream, same answer)
VS_STREAM_C16 = ("responses_stream_c16", "responses_stored_stream_c16",
                 "responses_messages_stream_c16", *(f"stream_{k}_c16" for k in NATIVE_MODELS))


def scenarios() -> list[Scenario]:
    auth = [f"Authorization: Bearer {CLIENT_KEY}"]
    anth_direct = ["x-api-key: sk-bench-upstream-anthropic-key",
                   "anthropic-version: 2023-06-01"]
    anth_proxy = [f"x-api-key: {CLIENT_KEY}", "anthropic-version: 2023-06-01"]
    out = []
    for c in (1, 16, 64):
        out.append(Scenario(f"chat_c{c}", f"chat non-stream c{c}", "wrk", c,
                            Side("/v1/chat/completions", chat_body("gpt-4o-mini", False)),
                            Side("/api/v1/chat/completions",
                                 chat_body("openai/gpt-4o-mini", False), auth)))
    out.append(Scenario("stream_c16", "chat stream c16 (54 events)", "sse", 16,
                        Side("/v1/chat/completions", chat_body("gpt-4o-mini", True)),
                        Side("/api/v1/chat/completions",
                             chat_body("openai/gpt-4o-mini", True), auth)))
    out.append(Scenario("stream_paced_c8",
                        f"chat stream paced {PACED_TTFT_MS}+{PACED_CHUNK_MS}ms c8", "sse", 8,
                        Side(f"/paced/{PACED_TTFT_MS}/{PACED_CHUNK_MS}/v1/chat/completions",
                             chat_body("gpt-4o-mini", True)),
                        Side("/api/v1/chat/completions",
                             chat_body("openai/gpt-4o-mini-paced", True), auth),
                        stagger_s=PACED_STREAM_S, rounds=3, share=0.6))
    # A burst of users: 256 clients start at once and stay in phase (each stream lasts
    # the same), so every 20 ms 256 events reach the proxy together: what it costs per
    # stream and per event, and how long the first event waits behind the others.
    out.append(Scenario(
        "stream_paced_256",
        f"chat stream paced {PACED_TTFT_MS}+{BURST_CHUNK_MS}ms, {BURST_CLIENTS} together",
        "sse", BURST_CLIENTS,
        Side(f"/paced/{PACED_TTFT_MS}/{BURST_CHUNK_MS}/v1/chat/completions",
             chat_body("gpt-4o-mini", True)),
        Side("/api/v1/chat/completions", chat_body("openai/gpt-4o-mini-paced-20", True),
             auth), settle_s=BURST_STREAM_S * 1.25))
    out.append(Scenario("embeddings_c16", "embeddings c16", "wrk", 16,
                        Side("/v1/embeddings", embeddings_body("text-embedding-3-small")),
                        Side("/api/v1/embeddings",
                             embeddings_body("openai/text-embedding-3-small"), auth)))
    out.append(Scenario("messages_stream_c16", "/messages stream c16 (56 events)", "sse", 16,
                        Side("/v1/messages", messages_body("claude-sonnet-4-20250514"),
                             anth_direct),
                        Side("/api/v1/messages", messages_body("anthropic/claude-sonnet-4"),
                             anth_proxy)))
    out.append(Scenario("chat_anthropic_stream_c16", "chat stream from /messages c16", "sse",
                        16, Side("/v1/messages", messages_body("claude-sonnet-4-20250514"),
                                 anth_direct),
                        Side("/api/v1/chat/completions",
                             chat_body("anthropic/claude-sonnet-4", True), auth)))
    # POST /responses translated from the same upstream streams (the direct side is the
    # upstream's own stream): what the translation costs next to stream_c16 and
    # chat_anthropic_stream_c16; "stored" keeps each response too (store: true, the default).
    for key, title, upstream, model, store in (
            ("responses_stream_c16", "/responses from chat stream c16", "chat",
             "openai/gpt-4o-mini", False),
            ("responses_stored_stream_c16", "/responses from chat stream c16, stored", "chat",
             "openai/gpt-4o-mini", True),
            ("responses_messages_stream_c16", "/responses from /messages stream c16",
             "messages", "anthropic/claude-sonnet-4", False)):
        direct = Side("/v1/chat/completions", chat_body("gpt-4o-mini", True)) \
            if upstream == "chat" else \
            Side("/v1/messages", messages_body("claude-sonnet-4-20250514"), anth_direct)
        out.append(Scenario(key, title, "sse", 16, direct,
                            Side("/api/v1/responses", responses_body(model, store), auth)))
    # The chat stream from each native provider kind, read in its own wire format: the
    # direct side is the upstream's native stream
    for kind, (model, name) in NATIVE_MODELS.items():
        out.append(Scenario(f"stream_{kind}_c16", f"chat stream from {name} c16", "sse", 16,
                            DIRECT_NATIVE[kind],
                            Side("/api/v1/chat/completions", chat_body(model, True), auth),
                            kinds=True))
    return out


# --------------------------------------------------------------------------- processes

class Procs:
    """Every subprocess we start, killed (process group) on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                 env=env, start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in list(self.procs):
            self.stop(p)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, headers: dict[str, str] | None = None,
             timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path,
               timeout: float = 30.0) -> float:
    """Seconds from now until GET /health answers 200 (polled every 5 ms)."""
    t0 = time.perf_counter()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode}:\n"
                             + log.read_text(errors="replace")[-3000:])
        with contextlib.suppress(OSError, http.client.HTTPException):
            if http_get(port, "/health", timeout=1.0)[0] == 200:
                return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise SystemExit(f"not ready after {timeout} s; log:\n"
                             + log.read_text(errors="replace")[-3000:])
        time.sleep(0.005)


def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (all threads), in clock ticks."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[int, int]:
    """(utime, stime) of the whole process (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)


def core_times(core: int | None) -> list[int]:
    """/proc/stat jiffies of one core (all cores when None): user nice system idle iowait
    irq softirq steal ..."""
    name = b"cpu " if core is None else f"cpu{core} ".encode()
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(name):
                return [int(x) for x in line.split()[1:]]
    return []


def steal_pct(before: list[int], after: list[int]) -> float | None:
    """Share of the core's time the hypervisor gave to someone else (a noisy neighbour)."""
    if len(before) < 8 or len(after) < 8:
        return None
    total = sum(after[:8]) - sum(before[:8])
    return round(100 * (after[7] - before[7]) / total, 1) if total > 0 else None


def busy_pct(before: list[int], after: list[int]) -> float | None:
    """Share of the core's time not idle (idle, iowait), steal included."""
    if len(before) < 8 or len(after) < 8:
        return None
    total = sum(after[:8]) - sum(before[:8])
    idle = (after[3] + after[4]) - (before[3] + before[4])
    return round(100 * (total - idle) / total, 1) if total > 0 else None


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE_KB


def status_kb(pid: int, name: str) -> int | None:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return None


class RssSampler(threading.Thread):
    """VmRSS of the proxy every 50 ms; the peak per phase label."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.phase = "idle"
        self.peaks: dict[str, int] = defaultdict(int)
        self.samples = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                kb = rss_kb(self.pid)
            except OSError:
                return
            phase = self.phase
            if kb > self.peaks[phase]:
                self.peaks[phase] = kb
            self.samples += 1
            self.stopped.wait(0.05)


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# --------------------------------------------------------------------------- load

class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, procs: Procs) -> None:
        self.args = args
        self.tmp = tmp
        self.procs = procs
        self.pin = (not args.no_pin and shutil.which("taskset") is not None
                    and len(os.sched_getaffinity(0)) >= 2)
        cores = sorted(os.sched_getaffinity(0))
        self.proxy_core: int | None = cores[0] if self.pin else None
        self.load_core: int | None = cores[1] if self.pin else None
        self.wrk = shutil.which("wrk")
        self.upstream_port = free_port()
        self.proxy_port = free_port()
        self.proxy: subprocess.Popen[bytes] | None = None
        self.kinds_port = free_port()
        self.kinds_proxy: subprocess.Popen[bytes] | None = None
        self.upstream: subprocess.Popen[bytes] | None = None
        self.sampler: RssSampler | None = None
        self.body_files: dict[str, Path] = {}

    def pinned(self, argv: list[str], core: int | None) -> list[str]:
        return ["taskset", "-c", str(core), *argv] if core is not None else argv

    def body_file(self, body: dict[str, Any]) -> Path:
        data = json.dumps(body, separators=(",", ":"))
        path = self.body_files.get(data)
        if path is None:
            path = self.tmp / f"body{len(self.body_files)}.json"
            path.write_text(data)
            self.body_files[data] = path
        return path

    # ---- processes

    def start_upstream(self) -> None:
        log = self.tmp / "upstream.log"
        self.upstream = self.procs.start(
            self.pinned([sys.executable, str(BENCH / "upstream.py"), "--host", HOST,
                         "--port", str(self.upstream_port)], self.load_core), log)
        wait_ready(self.upstream_port, self.upstream, log)

    def proxy_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["BENCH_UPSTREAM"] = f"http://{HOST}:{self.upstream_port}"
        env["BENCH_DATA_DIR"] = str(self.tmp)
        return env

    def proxy_argv(self, config: Path = CONFIG, port: int | None = None) -> list[str]:
        exe = Path(sys.executable).with_name("anyrouter-proxy")
        base = [str(exe)] if exe.exists() else [sys.executable, "-m", "anyrouter_proxy"]
        return self.pinned([*base, "serve", "--config", str(config), "--host", HOST,
                            "--port", str(port or self.proxy_port)], self.proxy_core)

    def start_proxy(self) -> float:
        log = self.tmp / "proxy.log"
        t0 = time.perf_counter()
        self.proxy = self.procs.start(self.proxy_argv(), log, env=self.proxy_env())
        wait_ready(self.proxy_port, self.proxy, log)
        return time.perf_counter() - t0

    def start_kinds_proxy(self) -> subprocess.Popen[bytes]:
        """The second proxy (bench/config-kinds.yaml), on the same core, started once."""
        if self.kinds_proxy is None:
            write_service_account(self.tmp / "service-account.json",
                                  f"http://{HOST}:{self.upstream_port}/token")
            log = self.tmp / "proxy-kinds.log"
            self.kinds_proxy = self.procs.start(
                self.proxy_argv(CONFIG_KINDS, self.kinds_port), log, env=self.proxy_env())
            wait_ready(self.kinds_port, self.kinds_proxy, log)
        return self.kinds_proxy

    def proxy_for(self, sc: Scenario) -> tuple[subprocess.Popen[bytes], int]:
        if sc.kinds:
            return self.start_kinds_proxy(), self.kinds_port
        assert self.proxy is not None
        return self.proxy, self.proxy_port

    # ---- one measurement

    def measure(self, sc: Scenario, side_name: str, duration: float) -> dict[str, Any]:
        assert self.upstream is not None
        proxy, proxy_port = self.proxy_for(sc)
        for proc, name in ((proxy, "proxy-kinds" if sc.kinds else "proxy"),
                           (self.upstream, "upstream")):
            if proc.poll() is not None:
                log = self.tmp / f"{name}.log"
                raise SystemExit(f"the {name} exited with {proc.returncode}; its log ends:\n"
                                 + log.read_text(errors="replace")[-3000:])
        side = sc.direct if side_name == "direct" else sc.proxy
        port = self.upstream_port if side_name == "direct" else proxy_port
        url = f"http://{HOST}:{port}{side.path}"
        body = self.body_file(side.body)
        (pu0, ps0), u0, c0 = (cpu_split(proxy.pid), cpu_ticks(self.upstream.pid),
                              children_cpu_s())
        k0 = core_times(self.proxy_core)
        t0 = time.perf_counter()
        if sc.tool == "wrk" and self.wrk:
            res = self.run_wrk(url, body, side.headers, sc.concurrency, duration)
        else:
            res = self.run_sse(url, body, side, sc.concurrency, duration,
                               plain=sc.tool == "wrk", stagger=sc.stagger_s,
                               settle=sc.settle_s)
        wall = time.perf_counter() - t0
        (pu1, ps1), u1, c1 = (cpu_split(proxy.pid), cpu_ticks(self.upstream.pid),
                              children_cpu_s())
        k1 = core_times(self.proxy_core)
        proxy_cpu = (pu1 + ps1 - pu0 - ps0) / CLK_TCK
        up_cpu = (u1 - u0) / CLK_TCK
        load_cpu = c1 - c0
        # all the proxy served in the window (the SSE client's own unmeasured start too)
        served = res.get("completed", res["requests"] + res.get("status_errors", 0))
        res["wall_s"] = round(wall, 3)
        res["proxy_cpu_s"] = round(proxy_cpu, 3)
        res["proxy_cpu_ms_per_req"] = (round(proxy_cpu * 1000 / served, 4)
                                       if served and side_name == "proxy" else None)
        if res.get("events") and served and side_name == "proxy":
            per_stream = res["events"] / res["requests"]  # the measured streams' events
            res["proxy_cpu_us_per_event"] = round(proxy_cpu * 1e6 / served / per_stream, 2)
        res["proxy_cpu_pct"] = round(100 * proxy_cpu / wall, 1)
        # the kernel's share (socket calls): what fewer syscalls would save
        res["proxy_sys_share_pct"] = (round(100 * (ps1 - ps0) / (pu1 + ps1 - pu0 - ps0), 1)
                                      if pu1 + ps1 > pu0 + ps0 else None)
        res["upstream_cpu_pct"] = round(100 * up_cpu / wall, 1)
        res["loadgen_cpu_pct"] = round(100 * load_cpu / wall, 1)
        res["load_core_pct"] = round(100 * (up_cpu + load_cpu) / wall, 1)
        res["proxy_core_steal_pct"] = steal_pct(k0, k1)
        busy = busy_pct(k0, k1)
        # what else ran on the proxy's core: other processes, hypervisor steal, softirqs
        # (loopback networking): a few % is normal, much more means a noisy machine
        res["proxy_core_other_pct"] = (None if busy is None or self.proxy_core is None
                                       else round(max(0.0, busy - res["proxy_cpu_pct"]), 1))
        return res

    def run_wrk(self, url: str, body: Path, headers: list[str], conc: int,
                duration: float) -> dict[str, Any]:
        assert self.wrk is not None
        env = dict(os.environ, BENCH_BODY=str(body), BENCH_HEADERS="\n".join(headers))
        argv = self.pinned([self.wrk, "-t1", f"-c{conc}", f"-d{max(1, round(duration))}s",
                            "--timeout", "30s", "-s", str(LUA), url], self.load_core)
        out = subprocess.run(argv, env=env, capture_output=True, text=True,
                             timeout=duration + 60)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCHJSON ")),
                    None)
        if line is None:
            raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout}\n{out.stderr}")
        w = json.loads(line[len("BENCHJSON "):])
        e = w["errors"]
        n_err = e["connect"] + e["read"] + e["write"] + e["status"] + e["timeout"]
        ok = w["requests"] - e["status"]
        secs = w["duration_us"] / 1e6
        lat = {k: round(v / 1000, 3) for k, v in w["latency_us"].items()}
        return {"tool": "wrk", "requests": ok, "status_errors": e["status"],
                "errors": n_err, "error_kinds": {k: v for k, v in e.items() if v},
                "elapsed_s": round(secs, 3), "rps": round(ok / secs, 1) if secs else 0.0,
                "latency_ms": lat}

    def run_sse(self, url: str, body: Path, side: Side, conc: int, duration: float,
                plain: bool = False, stagger: float = 0.0, settle: float = 0.0
                ) -> dict[str, Any]:
        argv = [sys.executable, str(BENCH / "sseload.py"), "--url", url, "--body-file",
                str(body), "-c", str(conc), "-d", str(duration)]
        if stagger:  # measured once every client has started
            argv += ["--stagger", str(stagger)]
        if stagger or settle:
            argv += ["--warmup", str(max(stagger, settle))]
        for h in side.headers:
            argv += ["--header", h]
        if side.event_marker:
            argv += ["--event-marker", side.event_marker]
        for m in side.end_markers:
            argv += ["--end-marker", m]
        if plain:
            argv.append("--plain")
        out = subprocess.run(self.pinned(argv, self.load_core), capture_output=True,
                             text=True, timeout=duration + 120)
        if out.returncode != 0:
            raise RuntimeError(f"sseload failed ({out.returncode}): {out.stderr[-2000:]}")
        res: dict[str, Any] = json.loads(out.stdout)
        res["tool"] = "asyncio-sse" if not plain else "asyncio (wrk missing)"
        res["status_errors"] = sum(v for k, v in res["error_kinds"].items()
                                   if k.startswith("status_"))
        return res


def write_service_account(path: Path, token_uri: str) -> None:
    """A Google service account key made for the run (a fresh RSA key), as the Cloud
    console downloads it, its token_uri the upstream's token endpoint."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    email = "anyrouter-bench@bench-project.iam.gserviceaccount.com"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "bench-project",
        "private_key_id": "0123456789abcdef", "private_key": pem, "client_email": email,
        "client_id": "1234567890", "token_uri": token_uri,
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "universe_domain": "googleapis.com"}))


def ensure_wrk() -> str | None:
    if shutil.which("wrk"):
        return None
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing: apt-get install -y wrk", file=sys.stderr, flush=True)
        r = subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], capture_output=True,
                           text=True, timeout=300)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300)
            r = subprocess.run(["apt-get", "install", "-y", "-q", "wrk"],
                               capture_output=True, text=True, timeout=300)
        if shutil.which("wrk"):
            return None
        return "apt-get install wrk failed: " + r.stderr[-300:]
    return "wrk not installed and not root: non-stream load uses the asyncio client"


# --------------------------------------------------------------------------- report

def merge_rounds(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's rounds as one result: counts and CPU summed, rates, percentiles and
    shares the median of the rounds' (each round's own figures kept under `rounds`)."""
    def med(values: list[Any]) -> Any:
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 3) if values else None

    out: dict[str, Any] = dict(rs[-1])
    for k in ("requests", "completed", "errors", "status_errors", "events"):
        out[k] = sum(r.get(k, 0) for r in rs)
    kinds: dict[str, int] = defaultdict(int)
    for r in rs:
        for k, v in r.get("error_kinds", {}).items():
            kinds[k] += v
    out["error_kinds"] = dict(kinds)
    for k in ("elapsed_s", "wall_s", "proxy_cpu_s"):
        out[k] = round(sum(r[k] for r in rs), 3)
    for k in ("rps", "proxy_cpu_pct", "proxy_sys_share_pct", "upstream_cpu_pct",
              "loadgen_cpu_pct", "load_core_pct", "proxy_core_steal_pct", "proxy_core_other_pct"):
        out[k] = med([r.get(k) for r in rs])
    for group in ("latency_ms", "ttft_ms", "ttfb_ms", "first_ttft_ms"):
        if group in rs[0]:
            out[group] = {p: med([r[group].get(p) for r in rs]) for p in rs[0][group]}
    served = out["completed"] or out["requests"] + out["status_errors"]
    if rs[0].get("proxy_cpu_ms_per_req") is not None and served:
        out["proxy_cpu_ms_per_req"] = round(out["proxy_cpu_s"] * 1000 / served, 4)
    if rs[0].get("proxy_cpu_us_per_event") is not None and out["events"] and served:
        out["proxy_cpu_us_per_event"] = round(
            out["proxy_cpu_s"] * 1e6 / served / (out["events"] / out["requests"]), 2)
    out["rounds"] = [{k: r.get(k) for k in ("requests", "rps", "latency_ms", "ttft_ms",
                                            "proxy_cpu_ms_per_req")} for r in rs]
    return out


def stream_figures(proxy: dict[str, Any], paced: bool) -> dict[str, Any]:
    """Per stream through the proxy: CPU, CPU per event, and for paced streams how many
    such streams one core carries at once (a stream's duration over the CPU it costs)."""
    cpu_ms = proxy.get("proxy_cpu_ms_per_req")
    stream_ms = proxy.get("latency_ms", {}).get("p50")
    return {"cpu_ms_per_stream": cpu_ms,
            "cpu_us_per_event": proxy.get("proxy_cpu_us_per_event"),
            "streams_per_core": round(stream_ms / cpu_ms) if paced and cpu_ms and stream_ms
            else None}


def compare_streams(results: dict[str, Any]) -> None:
    """CPU per stream as a multiple of stream_c16's (the plain OpenAI chat stream)."""
    base = results.get("stream_c16", {}).get("cpu_ms_per_stream")
    for key in VS_STREAM_C16:
        entry = results.get(key)
        if entry is not None:
            cpu = entry.get("cpu_ms_per_stream")
            entry["cpu_vs_stream_c16"] = round(cpu / base, 2) if cpu and base else None


def added(proxy: dict[str, Any], direct: dict[str, Any], group: str, p: str) -> float | None:
    if not proxy.get("requests") or not direct.get("requests"):
        return None  # nothing succeeded on one side: no comparison
    a, b = proxy.get(group, {}).get(p), direct.get(group, {}).get(p)
    return None if a is None or b is None else round(a - b, 3)


def fmt(v: Any, nd: int = 2, plus: bool = False) -> str:
    if v is None:
        return "-"
    s = f"{v:,.{nd}f}" if isinstance(v, float) else f"{v:,}"
    return ("+" + s) if plus and isinstance(v, int | float) and v >= 0 else s


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    sc = result["scenarios"]

    def get(key: str, *path: str) -> Any:
        v: Any = sc.get(key)
        for p in path:
            if not isinstance(v, dict):
                return None
            v = v.get(p)
        return v

    rss = result["rss_mb"]
    burst = f"paced {BURST_CLIENTS} together"
    rows = [
        ("gateway CPU per non-stream request (c16)", get("chat_c16", "proxy",
                                                         "proxy_cpu_ms_per_req"),
         "ms", "<=", 0.20),
        ("non-stream RPS at c16, one core", get("chat_c16", "proxy", "rps"), "rps", ">=", 2500),
        ("added latency p50 at c1", get("chat_c1", "added_ms", "p50"), "ms", "<=", 0.25),
        ("added p99 at c64", get("chat_c64", "added_ms", "p99"), "ms", "<=", 30),
        ("CPU per 54-event stream (c16)", get("stream_c16", "proxy", "proxy_cpu_ms_per_req"),
         "ms", "<=", 0.45),
        ("streams/s at c16", get("stream_c16", "proxy", "rps"), "/s", ">=", 1000),
        ("paced stream: added time to first byte p50", get("stream_paced_c8", "added_ms",
                                                           "ttft_p50"), "ms", "<=", 1.0),
        ("paced stream: added total p50", get("stream_paced_c8", "added_ms", "p50"),
         "ms", "<=", 1.0),
        (f"{burst}: CPU per stream", get("stream_paced_256", "cpu_ms_per_stream"),
         "ms", "<=", 1.0),
        (f"{burst}: CPU per event", get("stream_paced_256", "cpu_us_per_event"),
         "us", "<=", 19),
        (f"{burst}: added time to first byte p50", get("stream_paced_256", "added_ms",
                                                       "ttft_p50"), "ms", "<=", 2),
        (f"{burst}: added time to first byte p99", get("stream_paced_256", "added_ms",
                                                       "ttft_p99"), "ms", "<=", 10),
        (f"{burst}: RSS peak", get("stream_paced_256", "proxy_rss_peak_mb"), "MB", "<=", 80),
        *((f"{key}: CPU per stream vs stream_c16", get(key, "cpu_vs_stream_c16"), "x", "<=",
           1.5) for key in VS_STREAM_C16),
        ("RSS idle", rss.get("idle"), "MB", "<=", 60),
        ("RSS peak during c64", rss.get("peak_c64"), "MB", "<=", 120),
        ("RSS idle after load", rss.get("after_load"), "MB", "<=", 70),
        ("start-up to ready", result["startup_s"]["median"], "s", "<=", 0.5),
    ]
    out = []
    for name, value, unit, op, goal in rows:
        ok = None if value is None else (value <= goal if op == "<=" else value >= goal)
        out.append({"target": name, "value": value, "unit": unit, "goal": f"{op} {goal}",
                    "met": ok})
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = ["| scenario | side | RPS | p50 ms | p90 ms | p99 ms | TTFT p50 ms | "
             "added p50 | added p99 | added TTFT p50 | proxy CPU ms/req | proxy CPU % | "
             "load core % | core-0 other % | errors |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for _key, s in result["scenarios"].items():
        for side in ("direct", "proxy"):
            r = s.get(side)
            if r is None:
                continue
            is_proxy = side == "proxy"
            ad = s.get("added_ms", {}) if is_proxy else {}
            lat = r.get("latency_ms", {})
            lines.append("| " + " | ".join([
                s["title"] if not is_proxy else "",
                side, fmt(r.get("rps"), 0), fmt(lat.get("p50"), 3), fmt(lat.get("p90"), 3),
                fmt(lat.get("p99"), 3),
                fmt(r.get("ttft_ms", {}).get("p50"), 3) if s["tool"] == "sse" else "",
                fmt(ad.get("p50"), 3, True) if is_proxy else "",
                fmt(ad.get("p99"), 3, True) if is_proxy else "",
                fmt(ad.get("ttft_p50"), 3, True) if is_proxy and s["tool"] == "sse" else "",
                fmt(r.get("proxy_cpu_ms_per_req"), 3) if is_proxy else "",
                fmt(r.get("proxy_cpu_pct"), 0), fmt(r.get("load_core_pct"), 0),
                fmt(r.get("proxy_core_other_pct"), 0),
                str(r.get("errors")) + (" " + json.dumps(r["error_kinds"])
                                        if r.get("errors") else ""),
            ]) + " |")
    streams = [(k, s) for k, s in result["scenarios"].items() if s["tool"] == "sse"]
    if streams:
        lines += ["", "| stream scenario | proxy CPU ms/stream | CPU us/event | x stream_c16 "
                  "| added TTFT p50 | added TTFT p99 | proxy RSS peak MB | streams one core "
                  "carries |", "|---|--:|--:|--:|--:|--:|--:|--:|"]
        for _key, s in streams:
            ad = s.get("added_ms", {})
            lines.append("| " + " | ".join([
                s["title"], fmt(s.get("cpu_ms_per_stream"), 3),
                fmt(s.get("cpu_us_per_event"), 1), fmt(s.get("cpu_vs_stream_c16"), 2),
                fmt(ad.get("ttft_p50"), 3, True), fmt(ad.get("ttft_p99"), 3, True),
                fmt(s.get("proxy_rss_peak_mb"), 1), fmt(s.get("streams_per_core"), 0)])
                + " |")
        for _key, s in streams:
            ad = s.get("added_ms", {})
            if "first_ttft_p50" in ad:
                lines += ["", f"{s['title']}: the first wave ({s['concurrency']} new "
                          "connections and requests at once, not in the rows above) added "
                          f"{fmt(ad['first_ttft_p50'], 3, True)} ms p50, "
                          f"{fmt(ad['first_ttft_p99'], 3, True)} ms p99 to the time to the "
                          "first event."]
    rss, st = result["rss_mb"], result["startup_s"]
    noisy = [f"{k} ({s['proxy']['proxy_core_other_pct']:.0f}%)"
             for k, s in result["scenarios"].items()
             if (s.get("proxy", {}).get("proxy_core_other_pct") or 0) > NOISY_PCT]
    if noisy:
        lines += ["", f"**Noisy:** something else used the proxy's core during "
                  f"{', '.join(noisy)}: those rows understate the proxy; rerun on a quiet "
                  "machine."]
    lines += ["", f"Proxy RSS: idle {fmt(rss['idle'], 1)} MB, peak during chat c64 "
              f"{fmt(rss['peak_c64'], 1)} MB, idle after load {fmt(rss['after_load'], 1)} MB "
              f"(peak over the whole run {fmt(rss['peak_run'], 1)} MB, VmHWM "
              f"{fmt(rss['vm_hwm'], 1)} MB). Start-up to ready: median "
              f"{fmt(st['median'], 3)} s of {[round(x, 3) for x in st['samples']]}.",
              f"Usage log: {result['usage_log'].get('rows')} rows for "
              f"{result['usage_log'].get('proxied_responses')} proxied responses; "
              f"/metrics: {result['metrics'].get('status')}.",
              "", "| target | measured | goal | met |", "|---|--:|--:|:-:|"]
    for t in result["targets"]:
        met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
        nd = {"rps": 0, "/s": 0, "MB": 1, "us": 1, "x": 2}.get(t["unit"], 3)
        lines.append(f"| {t['target']} | {fmt(t['value'], nd)} {t['unit']} | {t['goal']} "
                     f"{t['unit']} | {met} |")
    m = result["meta"]
    lines += ["", f"{m['mode']} mode, {m['duration_s']} s per side per scenario; "
              f"{m['machine']['cpu']} x{m['machine']['cores']}, Linux "
              f"{m['machine']['kernel']}, Python {m['machine']['python']}; pinning: "
              f"{m['pinning']}; load: {m['load_tools']}."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- profile

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
LOOP_INTERNALS = "(event loop internals: uvloop/C, not Python)"


def short_file(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.", "/anyrouter_proxy/"):
        i = path.find(marker)
        if i >= 0:
            rest = path[i + len(marker):]
            if marker == "lib/python3.":
                rest = rest.split("/", 1)[1] if "/" in rest else rest
            return ("anyrouter_proxy/" if marker == "/anyrouter_proxy/" else "") + rest
    return path


def package_of(name: str) -> str:
    """'f (aiohttp/web_protocol.py)' -> 'aiohttp'; the proxy's own code by module."""
    m = re.search(r"\(([^()]*)\)$", name)
    path = m.group(1) if m else name
    if path.startswith("anyrouter_proxy/"):
        return path.removesuffix(".py")
    if "/" in path:
        return path.split("/", 1)[0]
    return "stdlib " + path.removesuffix(".py") if path.endswith(".py") else path


def summarise_profile(raw: Path, top: int) -> dict[str, Any]:
    """Main-thread samples of a `py-spy record -f raw` file: per function the share of
    samples it is on the stack (cumulative) and at the top (self), and self by package."""
    cumulative: dict[str, int] = defaultdict(int)
    stacks: list[tuple[list[str], int]] = []
    total = other_threads = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if not frames[0].startswith("<module>"):
            other_threads += n  # usage-log writer, executor: see cpu_by_thread_pct
            continue
        total += n
        names = []
        for frame in frames:
            m = FRAME.match(frame)
            names.append(f"{m['func']} ({short_file(m['file'])})" if m else frame)
        for name in set(names):
            cumulative[name] += n
        stacks.append((names, n))
    # the frames (nearly) every sample shares: the entry point and the event loop's run();
    # a sample whose top is one of them is the loop itself (uvloop's C code, the epoll
    # wait when not idle, C callbacks), not a hot spot of ours
    roots = {k for k, v in cumulative.items() if v >= 0.97 * total}
    own: dict[str, int] = defaultdict(int)
    by_package: dict[str, int] = defaultdict(int)
    for names, n in stacks:
        leaf = LOOP_INTERNALS if names[-1] in roots else names[-1]
        own[leaf] += n
        by_package[leaf if leaf == LOOP_INTERNALS else package_of(leaf)] += n

    def pct(v: int) -> float:
        return round(100 * v / total, 1) if total else 0.0

    cum = sorted(((k, v) for k, v in cumulative.items() if k not in roots),
                 key=lambda kv: -kv[1])
    return {
        "samples_main_thread": total,
        "samples_other_threads": other_threads,
        "top_cumulative": [{"function": k, "pct": pct(v), "self_pct": pct(own.get(k, 0))}
                           for k, v in cum[:top]],
        "top_self": [{"function": k, "pct": pct(v)}
                     for k, v in sorted(own.items(), key=lambda kv: -kv[1])[:top]],
        "self_by_package": [{"package": k, "pct": pct(v)}
                            for k, v in sorted(by_package.items(), key=lambda kv: -kv[1])[:top]],
    }


def thread_cpu(pid: int) -> dict[str, int]:
    """CPU ticks per thread of `pid` ('name/tid')."""
    out = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                    raw = f.read()
                name = raw[raw.index(b"(") + 1:raw.rindex(b")")].decode(errors="replace")
                fields = raw.rsplit(b")", 1)[1].split()
                label = "main" if tid == str(pid) else f"{name}/{tid}"
                out[label] = int(fields[11]) + int(fields[12])
    return out


def profile(bench: Bench, sc: Scenario, duration: float) -> dict[str, Any]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return {"error": f"py-spy not found: `{Path(sys.executable).with_name('pip')} "
                         "install py-spy` (not a project dependency)"}
    pid = bench.proxy_for(sc)[0].pid
    RESULTS.mkdir(exist_ok=True)
    raw = RESULTS / f"profile-{sc.key}.txt"
    with contextlib.suppress(FileNotFoundError):
        raw.unlink()
    # Blocking sampling at a modest rate: --nonblocking loses most samples here, and the
    # pauses cost the proxy ~15% of its throughput at 150 Hz. Only main-thread stacks are
    # summarised: py-spy takes threads blocked in queue.get (aiosqlite, executor) for busy
    # ones; what the other threads really use comes from /proc (cpu_by_thread_pct).
    spy_argv = bench.pinned([spy, "record", "-p", str(pid), "-r", "150",
                             "-d", str(int(duration) + 1), "-f", "raw",
                             "-o", str(raw)], bench.load_core)
    log = bench.tmp / "py-spy.log"
    p = bench.procs.start(spy_argv, log)
    time.sleep(0.5)
    t0 = thread_cpu(pid)
    res = bench.measure(sc, "proxy", duration)
    t1 = thread_cpu(pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=duration + 30)
    bench.procs.stop(p)
    if not raw.exists():
        return {"error": "py-spy wrote nothing: " + log.read_text(errors="replace")[-800:]}
    out = summarise_profile(raw, 15)
    out["raw"] = str(raw.relative_to(ROOT))
    out["rps_under_profiler"] = res.get("rps")
    used = {k: t1[k] - t0.get(k, 0) for k in t1}
    all_ticks = sum(used.values()) or 1
    out["cpu_by_thread_pct"] = {k: round(100 * v / all_ticks, 1)
                                for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v}
    return out


# --------------------------------------------------------------------------- main

def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    # 16 scenarios x 2 sides: 12 s (3 s quick) per side keeps the run under 10 (3) minutes
    duration = args.duration or (3.0 if args.quick else 12.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0)
    wrk_note = ensure_wrk()
    if wrk_note:
        print(wrk_note, file=sys.stderr)
    chosen = [s for s in scenarios() if not args.only or s.key in args.only]
    k0 = core_times(None)
    time.sleep(0.5)
    background = busy_pct(k0, core_times(None))
    if background is not None and background > 10:
        print(f"warning: the machine is already {background:.0f}% busy before the benchmark "
              "starts; the numbers will be noisy", file=sys.stderr, flush=True)
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="anyrouter-bench-"))
    try:
        bench = Bench(args, tmp, procs)
        if bench.load_core is not None:
            os.sched_setaffinity(0, {bench.load_core})  # this process: off the proxy core
        bench.start_upstream()
        # start-up: a throwaway start (warms the page cache and .pyc files), then the
        # median of the measured ones; the last one stays up for the load
        startups = []
        for i in range(args.starts + 1):
            t = bench.start_proxy()
            if i:
                startups.append(t)
            if i < args.starts:
                assert bench.proxy is not None
                procs.stop(bench.proxy, timeout=15)
        assert bench.proxy is not None
        pid = bench.proxy.pid
        sampler = RssSampler(pid)
        sampler.start()
        time.sleep(1.0)
        rss_idle = rss_kb(pid)
        print(f"proxy ready in {statistics.median(startups):.3f} s, idle RSS "
              f"{rss_idle / 1024:.1f} MB; {len(chosen)} scenarios x 2 sides x {duration:g} s",
              file=sys.stderr, flush=True)

        results: dict[str, Any] = {}
        proxied = 0
        for sc in chosen:
            # RSS of the proxy that serves the scenario, peaks under its phase labels
            sampler.pid = bench.proxy_for(sc)[0].pid
            entry: dict[str, Any] = {"title": sc.title, "tool": sc.tool,
                                     "concurrency": sc.concurrency,
                                     "direct_path": sc.direct.path,
                                     "proxy_path": sc.proxy.path}
            runs: dict[str, list[dict[str, Any]]] = {"direct": [], "proxy": []}
            for rnd in range(sc.rounds):
                for side in ("direct", "proxy") if rnd % 2 == 0 else ("proxy", "direct"):
                    sampler.phase = f"{sc.key}/{side}/warmup"
                    # later rounds find it warm; a burst's own first wave is its warm-up
                    if warmup and rnd == 0 and not sc.settle_s:
                        w = bench.measure(sc, side, warmup)
                        if side == "proxy":
                            proxied += w["requests"] + w.get("status_errors", 0)
                    sampler.phase = f"{sc.key}/{side}"
                    r = bench.measure(sc, side, duration * sc.share)
                    if side == "proxy":
                        proxied += r["requests"] + r.get("status_errors", 0)
                    runs[side].append(r)
                    print(f"  {sc.key:<20} {side:<6} {r['rps']:>9,.0f} rps  p50 "
                          f"{r['latency_ms'].get('p50')} ms  errors {r['errors']}",
                          file=sys.stderr, flush=True)
            for side, rs in runs.items():
                entry[side] = rs[0] if len(rs) == 1 else merge_rounds(rs)
            d, p = entry["direct"], entry["proxy"]
            entry["added_ms"] = {"p50": added(p, d, "latency_ms", "p50"),
                                 "p90": added(p, d, "latency_ms", "p90"),
                                 "p99": added(p, d, "latency_ms", "p99")}
            if sc.tool == "sse":
                entry["added_ms"]["ttft_p50"] = added(p, d, "ttft_ms", "p50")
                entry["added_ms"]["ttft_p99"] = added(p, d, "ttft_ms", "p99")
                if sc.settle_s:  # the first wave, not in the figures above
                    entry["added_ms"]["first_ttft_p50"] = added(p, d, "first_ttft_ms", "p50")
                    entry["added_ms"]["first_ttft_p99"] = added(p, d, "first_ttft_ms", "p99")
                entry.update(stream_figures(p, paced=sc.direct.path.startswith("/paced/")))
            peak = sampler.peaks.get(f"{sc.key}/proxy")
            entry["proxy_rss_peak_mb"] = round(peak / 1024, 1) if peak else None
            results[sc.key] = entry
        compare_streams(results)
        sampler.pid = pid
        sampler.phase = "after"
        time.sleep(args.settle)
        rss_after = rss_kb(pid)
        hwm = status_kb(pid, "VmHWM")
        peaks = dict(sampler.peaks)

        metrics_status = "not checked"
        with contextlib.suppress(OSError, http.client.HTTPException):
            st, body = http_get(bench.proxy_port, "/metrics",
                                {"Authorization": f"Bearer {METRICS_TOKEN}"})
            metrics_status = (f"{st}, {len(body)} bytes, "
                              f"{body.count(b'anyrouter_requests_total')} request series")
        rows = None
        with contextlib.suppress(sqlite3.Error):
            rows = 0
            for name in ("anyrouter.db", "anyrouter-kinds.db"):  # the second proxy's
                if name != "anyrouter.db" and bench.kinds_proxy is None:
                    continue
                db = sqlite3.connect(f"file:{tmp / name}?mode=ro", uri=True)
                rows += db.execute("SELECT count(*) FROM generations").fetchone()[0]
                db.close()

        prof = None
        if args.profile:
            sc = next(s for s in scenarios() if s.key == args.profile)
            print(f"profiling {sc.key} through the proxy with py-spy ...", file=sys.stderr,
                  flush=True)
            prof = profile(bench, sc, max(duration, 10.0))
            prof["scenario"] = sc.key
        sampler.stopped.set()

        def mb(kb: int | None) -> float | None:
            return None if kb is None else round(kb / 1024, 1)

        c64 = [v for k, v in peaks.items() if k.startswith("chat_c64/proxy")]
        kinds = {s.key for s in chosen if s.kinds}
        main_peaks = [v for k, v in peaks.items() if k.split("/", 1)[0] not in kinds]
        result: dict[str, Any] = {
            "meta": {
                "mode": "quick" if args.quick else "full",
                "duration_s": duration, "warmup_s": warmup,
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "machine": machine(),
                "pinning": (f"proxy on core {bench.proxy_core}, upstream + load on core "
                            f"{bench.load_core} (taskset)") if bench.pin else "none",
                "load_tools": ("wrk " + _wrk_version() if bench.wrk else "asyncio") +
                              " (non-stream), asyncio SSE client (streams)",
                "commit": _git_commit(),
                "proxy_argv": bench.proxy_argv(),
                "upstream": "bench/upstream.py (raw asyncio.Protocol, uvloop, precomputed)",
                "background_busy_pct_before": background,
            },
            "startup_s": {"median": round(statistics.median(startups), 4),
                          "samples": [round(x, 4) for x in startups]},
            "rss_mb": {"idle": mb(rss_idle), "peak_c64": mb(max(c64)) if c64 else None,
                       "after_load": mb(rss_after),
                       "peak_run": mb(max(main_peaks)) if main_peaks else None,
                       "vm_hwm": mb(hwm), "samples": sampler.samples},
            "scenarios": results,
            "usage_log": {"rows": rows, "proxied_responses": proxied},
            "metrics": {"status": metrics_status},
        }
        if prof is not None:
            result["profile"] = prof
        result["targets"] = targets(result)
        return result
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}", file=sys.stderr)


def _wrk_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=5)
        m = re.search(r"wrk (\S+)", out.stdout + out.stderr)
        if m:
            return m.group(1)
    return "?"


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description="AnyRouter proxy benchmark (see bench/run.py)")
    ap.add_argument("--quick", action="store_true", help="3 s per side per scenario (< 3 min)")
    ap.add_argument("--duration", type=float, help="seconds per side per scenario")
    ap.add_argument("--warmup", type=float, help="unmeasured seconds before each side")
    ap.add_argument("--only", nargs="+", metavar="SCENARIO",
                    help="run only these: " + ", ".join(s.key for s in scenarios()))
    ap.add_argument("--starts", type=int, default=3, help="start-up samples (median)")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds idle after the load before 'RSS after load'")
    ap.add_argument("--profile", nargs="?", const="chat_c16", metavar="SCENARIO",
                    choices=[s.key for s in scenarios()],
                    help="then run SCENARIO (default chat_c16) under py-spy and print the "
                         "hot spots")
    ap.add_argument("--no-pin", action="store_true", help="do not use taskset")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, db)")
    ap.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    args = ap.parse_args()

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    raise_fd_limit()  # hundreds of streams: the proxy (which inherits it) holds two sockets each
    try:
        result = run(args)
    except KeyboardInterrupt:
        print("interrupted; subprocesses stopped", file=sys.stderr)
        sys.exit(130)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    prof = result.get("profile")
    if prof:
        if "error" in prof:
            print(f"\nprofile: {prof['error']}")
        else:
            print(f"\nProfile of {prof['scenario']} through the proxy (py-spy, "
                  f"{prof['samples_main_thread']} main-thread samples; "
                  f"{prof['rps_under_profiler']} rps under the profiler; CPU by thread: "
                  f"{prof['cpu_by_thread_pct']}; raw stacks: {prof['raw']}):\n\n"
                  "| function | cumulative % | self % |\n|---|--:|--:|")
            for f in prof["top_cumulative"]:
                print(f"| `{f['function']}` | {f['pct']} | {f['self_pct']} |")
            print("\n| function (self) | self % |\n|---|--:|")
            for f in prof["top_self"]:
                print(f"| `{f['function']}` | {f['pct']} |")
            print("\n| self time by package/module | % |\n|---|--:|")
            for f in prof["self_by_package"]:
                print(f"| {f['package']} | {f['pct']} |")
    print(f"\nJSON: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
