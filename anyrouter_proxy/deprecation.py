"""Deprecated models and endpoints: RFC 9745 `Deprecation`, RFC 8594 `Sunset`, and a
`Link` to the successor; after the sunset, 410."""

from __future__ import annotations

import datetime as dt
import email.utils

from .config.model import Deprecation, ModelConfig
from .errors import Gone

API_BASE = "/api/v1"


def _past_sunset(deprecated: Deprecation | None) -> bool:
    return bool(deprecated and deprecated.sunset
                and dt.datetime.now(dt.UTC).date() >= deprecated.sunset)


def is_sunset(model: ModelConfig) -> bool:
    return _past_sunset(model.deprecated)


def headers_for(deprecated: Deprecation | None, successor_url: str | None) -> dict[str, str]:
    if deprecated is None:
        return {}
    since = dt.datetime.combine(deprecated.since, dt.time(), dt.UTC)
    headers = {"Deprecation": f"@{int(since.timestamp())}"}
    if deprecated.sunset is not None:
        sunset = dt.datetime.combine(deprecated.sunset, dt.time(), dt.UTC)
        headers["Sunset"] = email.utils.format_datetime(sunset, usegmt=True)
    if successor_url:
        headers["Link"] = f'<{successor_url}>; rel="successor-version"'
    return headers


def deprecation_headers(model: ModelConfig) -> dict[str, str]:
    successor = model.deprecated.successor if model.deprecated else None
    return headers_for(model.deprecated, f"{API_BASE}/models/{successor}" if successor else None)


def endpoint_headers(path: str, deprecated: Deprecation | None) -> dict[str, str]:
    """Headers for a deprecated endpoint; 410 `endpoint_sunset` after its sunset."""
    if deprecated is None:
        return {}
    successor = deprecated.successor
    if _past_sunset(deprecated):
        assert deprecated.sunset is not None
        hint = f"; use {successor}" if successor else ""
        raise Gone(f"{path} was retired on {deprecated.sunset.isoformat()}{hint}",
                   code="endpoint_sunset", metadata={"successor": successor})
    return headers_for(deprecated, f"{API_BASE}{successor}" if successor else None)
