"""The soak as a standalone script: N concurrent streaming clients for S
seconds through a real `anyrouter-proxy serve`, against a fast fake upstream in its own
process. The logic (bench/soak_run.py) is the one tests/e2e/test_soak.py runs in CI (short
form); this is the full form, to run by hand:

    .venv/bin/python bench/soak.py                       # 500 clients x 60 s
    .venv/bin/python bench/soak.py --clients 200 --seconds 15 --json

Prints the measurements (requests, errors, usage rows, RSS, descriptors, /health latency
as the event-loop lag, CPU), and exits 1 if a pass criterion failed: any error, a
request without its usage row, RSS growth over --rss-growth-limit-mb after the warm-up,
or a descriptor leaked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.soak_run import RSS_GROWTH_LIMIT_MB, check, run_soak  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rss-growth-limit-mb", type=float, default=RSS_GROWTH_LIMIT_MB * 2)
    parser.add_argument("--workdir", type=Path, help="keep the config and database here")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        run = asyncio.run
    else:
        run = uvloop.run
    with tempfile.TemporaryDirectory(prefix="anyrouter-soak-") as tmp:
        workdir = args.workdir or Path(tmp)
        result = run(run_soak(args.clients, args.seconds, workdir))
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    try:
        check(result, rss_growth_limit_mb=args.rss_growth_limit_mb)
    except AssertionError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    if not args.json:
        print("OK", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
