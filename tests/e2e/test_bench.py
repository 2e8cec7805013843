"""`make bench` itself: a short run of bench/run.py end to end, the real fake
upstream, the real `anyrouter-proxy serve` and the real load tools, checked for the report
docs/performance.md promises. It judges the benchmark's plumbing, never the figures (those are
recorded by hand in docs/performance.md, not asserted: the machine is shared and noisy)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NATIVE = [f"stream_{kind}_c16" for kind in ("azure", "gemini", "vertex", "bedrock")]


def test_bench_reports_every_measure_for_both_sides(tmp_path: Path) -> None:
    assert shutil.which("wrk"), "wrk is missing: scripts/install-test-deps.sh installs it"
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--duration", "1", "--warmup", "0.2",
         "--starts", "1", "--settle", "0.2", "--only", "chat_c1", "stream_c16",
         "stream_paced_c8", "stream_paced_256", *NATIVE, "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| target |" in run.stdout  # the Markdown table and the targets
    report = json.loads(out.read_text())
    scenarios = report["scenarios"]
    assert set(scenarios) == {"chat_c1", "stream_c16", "stream_paced_c8", "stream_paced_256",
                              *NATIVE}
    for key, entry in scenarios.items():
        for side in ("direct", "proxy"):
            result = entry[side]
            assert result["requests"] > 0 and result["errors"] == 0, (key, side, result)
            assert result["latency_ms"]["p50"] > 0
        assert entry["proxy"]["proxy_cpu_ms_per_req"] > 0
        assert entry["added_ms"]["p50"] is not None
    assert scenarios["chat_c1"]["proxy"]["tool"] == "wrk"
    paced = scenarios["stream_paced_c8"]
    # Three alternating rounds per side, merged; the added time to the first event is there.
    assert len(paced["proxy"]["rounds"]) == len(paced["direct"]["rounds"]) == 3
    assert paced["proxy"]["requests"] == sum(r["requests"] for r in paced["proxy"]["rounds"])
    assert paced["added_ms"]["ttft_p50"] is not None
    assert paced["proxy"]["events_per_response"]["min"] == 54  # streams came through whole
    # 256 clients at once: every one served (its first stream apart from the figures), and
    # the per-stream figures there
    burst = scenarios["stream_paced_256"]
    assert burst["proxy"]["completed"] >= 256 and burst["direct"]["completed"] >= 256
    assert burst["proxy"]["events_per_response"]["min"] == 54
    assert burst["added_ms"]["ttft_p99"] is not None
    assert burst["added_ms"]["first_ttft_p99"] is not None
    assert burst["cpu_us_per_event"] > 0 and burst["streams_per_core"] > 0
    assert burst["proxy_rss_peak_mb"] > 0
    # Each native kind's stream read directly (its own markers) and through the proxy,
    # whole, and compared with the OpenAI chat stream's CPU
    for key in NATIVE:
        entry = scenarios[key]
        assert entry["direct"]["events_per_response"]["min"] >= 50, (key, entry["direct"])
        assert entry["proxy"]["events_per_response"]["min"] >= 53, (key, entry["proxy"])
        assert entry["cpu_vs_stream_c16"] > 0
    assert report["rss_mb"]["idle"] > 0 and report["rss_mb"]["after_load"] > 0
    assert report["startup_s"]["median"] > 0
    # The proxy ran as deployed: every proxied response has its usage row, metrics answer.
    assert report["usage_log"]["rows"] >= report["usage_log"]["proxied_responses"] > 0
    assert report["metrics"]["status"].startswith("200")
    assert {t["target"] for t in report["targets"]} >= {
        "added latency p50 at c1", "paced stream: added time to first byte p50",
        "paced 256 together: CPU per event", "paced 256 together: RSS peak",
        "stream_bedrock_c16: CPU per stream vs stream_c16"}
    assert "| stream scenario |" in run.stdout and "the first wave" in run.stdout
