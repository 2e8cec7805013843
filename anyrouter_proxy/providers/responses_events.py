"""Responses events the proxy writes on its own, outside any translation."""

from __future__ import annotations

from typing import Any

import orjson

from ..sse import encode_event
from .responses_output import response_shell


def failed_before_start(error: dict[str, Any], *, gen_id: str, model: str) -> bytes:
    """A Responses stream that fails before its first event (after keep-alive comments
    committed the 200): response.created, then response.failed with the error."""
    shell = response_shell({}, gen_id=gen_id, model=model, created_at=0)
    created = {"type": "response.created", "response": shell, "sequence_number": 0}
    failed = {"type": "response.failed", "sequence_number": 1,
              "response": {**shell, "status": "failed", "error": error}}
    return (encode_event(orjson.dumps(created), "response.created")
            + encode_event(orjson.dumps(failed), "response.failed"))
