"""Deprecated models: RFC 9745 `Deprecation`, RFC 8594 `Sunset`, a successor `Link`."""

from __future__ import annotations

import datetime as dt
import email.utils

from .config.model import ModelConfig


def is_sunset(model: ModelConfig, today: dt.date | None = None) -> bool:
    deprecated = model.deprecated
    return bool(deprecated and deprecated.sunset
                and (today or dt.datetime.now(dt.UTC).date()) >= deprecated.sunset)


def deprecation_headers(model: ModelConfig) -> dict[str, str]:
    deprecated = model.deprecated
    if deprecated is None:
        return {}
    since = dt.datetime.combine(deprecated.since, dt.time(), dt.UTC)
    headers = {"Deprecation": f"@{int(since.timestamp())}"}
    if deprecated.sunset is not None:
        sunset = dt.datetime.combine(deprecated.sunset, dt.time(), dt.UTC)
        headers["Sunset"] = email.utils.format_datetime(sunset, usegmt=True)
    if deprecated.successor:
        headers["Link"] = f'</api/v1/models/{deprecated.successor}>; rel="successor-version"'
    return headers
