"""Load and soak: many concurrent streaming clients through a real `anyrouter-proxy
serve` process for a while (bench/soak_run.py runs it and holds the pass criteria; this
is its short CI form, bench/soak.py the full one by hand):

    SOAK_CLIENTS=500 SOAK_SECONDS=60 .venv/bin/pytest tests/e2e/test_soak.py -s
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench.soak_run import DEFAULT_CLIENTS, DEFAULT_SECONDS, check, run_soak


@pytest.mark.skipif(sys.platform != "linux", reason="/proc")
async def test_soak_streaming_clients(tmp_path: Path) -> None:
    result = await run_soak(DEFAULT_CLIENTS, DEFAULT_SECONDS, tmp_path)
    print("\nSOAK " + json.dumps(result))
    check(result)
