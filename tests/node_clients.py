"""The official JavaScript clients as test clients: the packages pinned in tests/node
(package-lock.json) installed once with `npm ci`, then cases of tests/node/cases/*.mjs run
in a Node process that sees nothing of this process's environment but PATH (no
OPENAI_API_KEY, ANTHROPIC_BASE_URL, ... can steer an SDK), each answering JSON."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NODE_DIR = Path(__file__).parent / "node"
STAMP = NODE_DIR / "node_modules" / ".installed-lock-sha256"
MIN_NODE_MAJOR = 18  # Debian 12's; the suite passes on 18 and 20
NPM_CI_TIMEOUT_S = 600
RUN_TIMEOUT_S = 60


@dataclass(frozen=True)
class Call:
    """One case: function `case` of tests/node/cases/`module`.mjs, given `input`."""

    module: str
    case: str
    input: dict[str, Any] = field(default_factory=dict)


def install() -> None:
    """`npm ci` unless node_modules was installed from this very lockfile (the stamp holds
    its digest), so reruns cost nothing; a lock file keeps two runs from racing."""
    digest = hashlib.sha256((NODE_DIR / "package-lock.json").read_bytes()).hexdigest()
    if _stamped(digest):
        return
    _check_tools()
    with open(NODE_DIR / ".npm-ci.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _stamped(digest):
            return
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                              cwd=NODE_DIR, capture_output=True, text=True,
                              timeout=NPM_CI_TIMEOUT_S, check=False)
        assert done.returncode == 0, f"npm ci failed in {NODE_DIR}:\n{done.stderr}"
        STAMP.write_text(digest)


def _stamped(digest: str) -> bool:
    return STAMP.exists() and STAMP.read_text() == digest


def _check_tools() -> None:
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    assert not missing, f"{' and '.join(missing)} not found: run scripts/install-test-deps.sh"
    version = subprocess.run(["node", "--version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    major = re.match(r"v(\d+)", version)
    assert major and int(major.group(1)) >= MIN_NODE_MAJOR, \
        f"the JavaScript client tests need Node.js {MIN_NODE_MAJOR} or newer, not {version}"


async def run_node(*calls: Call) -> list[dict[str, Any]]:
    """Runs `calls` one after the other in one Node process; per call {"result": ...} or
    {"error": {"classes": [...], "status": ..., ...}}."""
    process = await asyncio.create_subprocess_exec(
        "node", "run.mjs", json.dumps([call.__dict__ for call in calls]), cwd=NODE_DIR,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    assert process.returncode == 0, f"node exited {process.returncode}:\n{stderr.decode()}"
    lines = stdout.decode().splitlines()
    assert lines, f"node printed nothing:\n{stderr.decode()}"
    outcomes: list[dict[str, Any]] = json.loads(lines[-1])
    return outcomes


def result(outcome: dict[str, Any]) -> Any:
    """The case's result; fails with the error the SDK raised instead."""
    assert "result" in outcome, f"the case failed: {json.dumps(outcome['error'], indent=1)}"
    return outcome["result"]


def error(outcome: dict[str, Any]) -> dict[str, Any]:
    """The error the case raised; fails when it succeeded."""
    assert "error" in outcome, f"expected an error, the case gave {outcome['result']!r}"
    raised: dict[str, Any] = outcome["error"]
    return raised
