"""Logging: one JSON line per request on stdout (or a readable line for development).

Never a key, a prompt or a completion: only names, ids, numbers and statuses.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import sys
import time
from typing import Any

import orjson

ACCESS = "anyrouter_proxy.access"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json_line(entry).decode()


def json_line(entry: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(entry, default=str)
    except TypeError:  # a lone surrogate from a client: escape rather than lose the line
        return json.dumps(entry, default=str).encode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.msg = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
            record.args = None
        return super().format(record)


def setup_logging(level: str, fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").disabled = True  # ours is richer
    # Their debug logs carry SQL parameters: prompts and answers of batch items.
    for name in ("aiosqlite", "asyncpg", "redis"):
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))


class AccessLog:
    """One line per request. In JSON mode the line goes straight to stdout, batched and
    flushed within `FLUSH_S`: the logging machinery costs about 10% of a request's CPU."""

    FLUSH_S = 0.05

    def __init__(self, json_lines: bool) -> None:
        self._logger = logging.getLogger(ACCESS)
        self._json = json_lines
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        self._second = -1
        self._prefix = ""

    def enabled(self) -> bool:
        return self._logger.isEnabledFor(logging.INFO)

    def write(self, fields: dict[str, Any]) -> None:
        if not self._json:
            self._logger.info("request", extra={"fields": fields})
            return
        entry = {"time": self._timestamp(), "level": "info", "logger": ACCESS, **fields}
        self._pending.append(json_line(entry) + b"\n")
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(self.FLUSH_S, self.flush)

    def _timestamp(self) -> str:
        """As JsonFormatter writes it (ISO 8601, milliseconds, Z); the date and time of
        day are formatted once a second, not once a line."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._pending:
            lines, self._pending = b"".join(self._pending), []
            sys.stdout.flush()  # whatever the logging module wrote comes first
            sys.stdout.buffer.write(lines)
            sys.stdout.buffer.flush()
