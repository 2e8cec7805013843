"""Shape checks for request and answer bodies: every bad type becomes an InvalidRequest
naming the field (400); `upstream_invalid` turns one found in an upstream answer into the
upstream's fault (502). Shared by the translators."""

from __future__ import annotations

import math
from typing import Any

from anyrouter_proxy.errors import InvalidRequest, UpstreamError


def bad_type(param: str, expected: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}' must be {expected}", param=param)


def unsupported(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}' is not supported: {why}", code="unsupported_parameter",
                          param=param)


def need_dict(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_type(param, "an object")
    return value


def need_list(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise bad_type(param, "a list")
    return value


def need_str(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise bad_type(param, "a string")
    return value


def opt_str(value: Any, param: str) -> str | None:
    return None if value is None else need_str(value, param)


def need_int(value: Any, param: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_type(param, "an integer")
    if value < minimum:
        raise bad_type(param, f"at least {minimum}")
    return value


def need_number(value: Any, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad_type(param, "a number")
    return float(value)


def need_bool(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise bad_type(param, "a boolean")
    return value


def need_body(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return value


def upstream_invalid(exc: InvalidRequest) -> UpstreamError:
    """A shape error found in an upstream answer is the upstream's fault: 502."""
    return UpstreamError(f"invalid upstream response: {exc.message}",
                         code="upstream_invalid_response")
