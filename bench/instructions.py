"""Instructions the proxy executes per request, counted by callgrind: the A/B measure that
the machine's other tenants barely move (wall-clock figures and even /proc CPU time do).

Starts bench/upstream.py and the proxy under `valgrind --tool=callgrind` (bench/config.yaml,
or bench/config-kinds.yaml for the native kinds' scenarios), and for each scenario of
bench/run.py given: an unmeasured warm-up, `callgrind_control -z`, the scenario's proxy
side for `--seconds` (16 clients, or its own concurrency), `callgrind_control -d`. Prints
instructions per request (background work during the run included, as in /proc CPU) and
each as a multiple of the first scenario's. Valgrind runs the proxy ~50x slower: a few
hundred requests per scenario. Compare two commits by running it on each.

    .venv/bin/python bench/instructions.py stream_c16 stream_bedrock_c16 [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script

from bench.run import (
    CONFIG,
    CONFIG_KINDS,
    HOST,
    ROOT,
    Procs,
    Scenario,
    free_port,
    scenarios,
    wait_ready,
    write_service_account,
)

STARTUP_TIMEOUT_S = 300  # importing the proxy under valgrind takes a while
DUMP_TIMEOUT_S = 120


def load(sc: Scenario, port: int, seconds: float, tmp: Path) -> dict[str, Any]:
    """The scenario's proxy side, with bench/sseload.py (`--plain` for non-stream)."""
    body = tmp / f"{sc.key}.json"
    body.write_text(json.dumps(sc.proxy.body))
    argv = [sys.executable, str(ROOT / "bench" / "sseload.py"), "--url",
            f"http://{HOST}:{port}{sc.proxy.path}", "--body-file", str(body),
            "-c", str(sc.concurrency), "-d", str(seconds)]
    for header in sc.proxy.headers:
        argv += ["--header", header]
    if sc.tool == "wrk":
        argv.append("--plain")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 600)
    if out.returncode != 0:
        raise SystemExit(f"sseload failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def dumped_instructions(tmp: Path, prefix: str, before: set[Path]) -> int:
    """The total of the dump `callgrind_control -d` asked for: valgrind writes it when the
    proxy next runs, so it is waited for (until its totals line is there)."""
    deadline = time.monotonic() + DUMP_TIMEOUT_S
    while time.monotonic() < deadline:
        for path in set(tmp.glob(f"{prefix}*")) - before:
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
        time.sleep(0.2)
    raise SystemExit(f"callgrind wrote no dump in {DUMP_TIMEOUT_S} s")


def measure(procs: Procs, chosen: list[Scenario], config: Path, env: dict[str, str],
            args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, Any]]:
    port = free_port()
    log = tmp / f"proxy-{config.stem}.log"
    out = tmp / f"callgrind.out.{config.stem}"  # one name per proxy: dumps never collide
    proxy = procs.start(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                         sys.executable, "-m", "anyrouter_proxy", "serve", "--config",
                         str(config), "--host", HOST, "--port", str(port)], log, env=env)
    wait_ready(port, proxy, log, timeout=STARTUP_TIMEOUT_S)
    results = {}
    for sc in chosen:
        load(sc, port, args.warmup, tmp)
        subprocess.run(["callgrind_control", "-z", str(proxy.pid)], capture_output=True,
                       check=True)
        before = set(tmp.glob(f"{out.name}*"))
        res = load(sc, port, args.seconds, tmp)
        subprocess.run(["callgrind_control", "-d", sc.key, str(proxy.pid)],
                       capture_output=True, check=True)
        ir = dumped_instructions(tmp, out.name, before)
        served = res.get("completed") or res["requests"]
        results[sc.key] = {"requests": served, "errors": res["errors"], "instructions": ir,
                           "per_request": round(ir / served) if served else None}
        print(f"  {sc.key}: {results[sc.key]}", file=sys.stderr, flush=True)
    procs.stop(proxy, timeout=60)
    return results


def main() -> None:
    known = {s.key: s for s in scenarios()}
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario", nargs="+", choices=sorted(known))
    ap.add_argument("--seconds", type=float, default=20.0, help="measured, per scenario")
    ap.add_argument("--warmup", type=float, default=6.0, help="unmeasured, per scenario")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = ap.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is missing: apt-get install valgrind")
    chosen = [known[k] for k in args.scenario]
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="anyrouter-instructions-"))
    try:
        up_port = free_port()
        upstream = procs.start([sys.executable, str(ROOT / "bench" / "upstream.py"),
                                "--host", HOST, "--port", str(up_port)], tmp / "upstream.log")
        wait_ready(up_port, upstream, tmp / "upstream.log")
        write_service_account(tmp / "service-account.json", f"http://{HOST}:{up_port}/token")
        env = dict(os.environ, BENCH_UPSTREAM=f"http://{HOST}:{up_port}",
                   BENCH_DATA_DIR=str(tmp))
        results: dict[str, dict[str, Any]] = {}
        for config, kinds in ((CONFIG, False), (CONFIG_KINDS, True)):
            group = [sc for sc in chosen if sc.kinds == kinds]
            if group:
                results.update(measure(procs, group, config, env, args, tmp))
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    base = results[chosen[0].key]["per_request"]
    print(f"| scenario | requests | instructions per request | x {chosen[0].key} |")
    print("|---|--:|--:|--:|")
    for sc in chosen:
        r = results[sc.key]
        ratio = f"{r['per_request'] / base:.2f}" if base and r["per_request"] else "-"
        print(f"| {sc.key} | {r['requests']} | {r['per_request']:,} | {ratio} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
