"""What an upstream's error body says: its message, code and param, in each shape
providers use (pure, no I/O).

| shape | from |
|---|---|
| `{"error": {"message", "code", "param", ...}}` | OpenAI and its kin, Azure, Anthropic |
| the same with `innererror: {code, content_filter_result}` | Azure's content filter |
| `{"error": "text"}` | some compatible servers |
| `{"detail": [{"loc", "msg", "type"}, ...]}` or `{"detail": "text"}` | FastAPI / pydantic |
| `{"object": "error", "message": TEXT or {"detail": [...]} or [...], ...}` | Mistral |
| `{"message": "text"}`, `{"Message": "text"}` | AWS (Bedrock), others |
| not JSON | an HTML page by its title, plain text as it is (cut) |

Google's `{"error": {"code", "message", "status", "details": [...]}}` is the first shape;
`google_details` reads its details: ErrorInfo's reason (a 400 `API_KEY_INVALID` is about
the gateway's own key) and RetryInfo's retryDelay (when to come back after a 429).

A pydantic `extra_forbidden` (a field the upstream does not take) is code
`unsupported_parameter`; numeric codes ("400", 3001) say nothing the status does not and
are dropped.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

MAX_DETAILS = 5  # validation errors quoted in one message
_TITLE = re.compile(r"<title[^>]*>([^<]*)</title>", re.IGNORECASE)
_NUMERIC = re.compile(r"\d+")
# Of Azure's innererror, what goes to the client (metadata.innererror).
AZURE_INNER_FIELDS = ("code", "content_filter_result")
# Google APIs' error details (google.rpc): why, and when to come back.
GOOGLE_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
GOOGLE_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
GOOGLE_KEY_REASON_PREFIX = "API_KEY_"  # a 400 about the gateway's own key (API_KEY_INVALID)


@dataclass(frozen=True, slots=True)
class ErrorBody:
    message: str | None = None
    code: str | None = None
    param: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def read_error_body(raw: bytes) -> ErrorBody:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ErrorBody(_text_of(raw))
    if not isinstance(data, dict):
        return ErrorBody()
    error = data.get("error")
    if isinstance(error, dict):
        return _error_object(error)
    if isinstance(error, str):
        return ErrorBody(error)
    if "detail" in data:
        return _detail(data["detail"])
    return _mistral(data)


def _error_object(error: dict[str, Any]) -> ErrorBody:
    message = error.get("message")
    inner = error.get("innererror")
    metadata: dict[str, Any] = {}
    if isinstance(inner, dict):
        kept = {k: inner[k] for k in AZURE_INNER_FIELDS if k in inner}
        if kept:
            metadata["innererror"] = kept
    param = error.get("param")
    return ErrorBody(str(message) if message else None, _code(error.get("code")),
                     param if isinstance(param, str) else None, metadata)


def _mistral(data: dict[str, Any]) -> ErrorBody:
    """`message` as text, as JSON text, as an object with `detail`, or as the list (and
    AWS's `{"message": ...}` or `{"Message": ...}`)."""
    message = data.get("message", data.get("Message"))
    if isinstance(message, str) and message.lstrip().startswith("{"):
        with contextlib.suppress(orjson.JSONDecodeError):
            message = orjson.loads(message)
    if isinstance(message, dict) and "detail" in message:
        body = _detail(message["detail"])
    elif isinstance(message, list):
        body = _detail(message)
    elif isinstance(message, str) and message:
        body = ErrorBody(message)
    else:
        return ErrorBody()
    code = body.code or _code(data.get("code"))
    param = data.get("param")
    return ErrorBody(body.message, code, body.param or (param if isinstance(param, str)
                                                       else None))


def _detail(detail: Any) -> ErrorBody:
    """FastAPI's `detail`: text, or pydantic's list of validation errors."""
    if isinstance(detail, str):
        return ErrorBody(detail or None)
    if not isinstance(detail, list):
        return ErrorBody()
    items = [d for d in detail if isinstance(d, dict)]
    if not items:
        return ErrorBody()
    parts = [_validation_error(d) for d in items[:MAX_DETAILS]]
    if len(items) > MAX_DETAILS:
        parts.append(f"and {len(items) - MAX_DETAILS} more")
    forbidden = any(d.get("type") == "extra_forbidden" for d in items)
    return ErrorBody("; ".join(parts), "unsupported_parameter" if forbidden else None,
                     _loc(items[0].get("loc")) or None)


def _validation_error(item: dict[str, Any]) -> str:
    """`stream_options.include_usage: Extra inputs are not permitted (extra_forbidden)`:
    where, what and pydantic's error type; never the input itself."""
    where = _loc(item.get("loc"))
    text = str(item.get("msg") or "invalid")
    kind = item.get("type")
    text += f" ({kind})" if isinstance(kind, str) and kind else ""
    return f"{where}: {text}" if where else text


def _loc(loc: Any) -> str:
    """pydantic's loc as a field path: ["body", "messages", 0, "name"] -> messages[0].name."""
    if not isinstance(loc, list | tuple):
        return ""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _code(value: Any) -> str | None:
    if not isinstance(value, str) or not value or _NUMERIC.fullmatch(value):
        return None
    return value


def _text_of(raw: bytes) -> str | None:
    """A non-JSON error body as a short message: an HTML page by its <title>, never its
    markup; plain text as it is (cut)."""
    text = raw[:4096].decode("utf-8", "replace").strip()
    if text[:1] == "<":
        title = _TITLE.search(text)
        return f"an HTML page ({title.group(1).strip()[:120]})" if title else "an HTML page"
    return text[:300] or None


def google_details(raw: bytes) -> tuple[str | None, str | None]:
    """(ErrorInfo reason, RetryInfo delay in whole seconds) of a Google API error body."""
    try:
        error = orjson.loads(raw).get("error")
        details = error.get("details") if isinstance(error, dict) else None
    except (orjson.JSONDecodeError, AttributeError):
        return None, None
    reason = delay = None
    for detail in details if isinstance(details, list) else ():
        if not isinstance(detail, dict):
            continue
        kind = detail.get("@type")
        if kind == GOOGLE_ERROR_INFO and isinstance(detail.get("reason"), str):
            reason = detail["reason"]
        elif kind == GOOGLE_RETRY_INFO and isinstance(detail.get("retryDelay"), str):
            delay = _whole_seconds(detail["retryDelay"])
    return reason, delay


def _whole_seconds(duration: str) -> str | None:
    """A protobuf Duration in JSON ("37s", "1.5s") as whole seconds, rounded up."""
    try:
        seconds = float(duration.removesuffix("s"))
    except ValueError:
        return None
    return str(max(1, math.ceil(seconds))) if math.isfinite(seconds) else None
