"""AWS event streams (`application/vnd.amazon.eventstream`), parsed once with botocore's own
parser into the events the stream translators read, as `sse.py` does for SSE.

Each binary message becomes one `SSEEvent` whose `data` is its JSON payload and whose
`event` says what it is:

| message (`:message-type`) | SSEEvent.event | SSEEvent.data |
|---|---|---|
| event | its `:event-type` (messageStart, metadata, ...) | the payload |
| exception | its `:exception-type` (throttlingException, ...) | the payload |
| error | "error" | `{"code": :error-code, "message": :error-message}` |

Exception types always end in "Exception"; their payload is `{"message": ...}`.
A message whose checksum or lengths are wrong is the upstream's fault: UpstreamError
(502 `upstream_invalid_response`).
"""

from __future__ import annotations

from typing import Any, cast

import orjson
from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError

from ..errors import UpstreamError
from ..sse import SSEEvent

ERROR_EVENT = "error"
EXCEPTION_SUFFIX = "Exception"


class EventStreamDecoder:
    """Incremental: feed raw chunks as they arrive (split anywhere), get whole events."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = EventStreamBuffer()

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buffer.add_data(chunk)
        try:
            return [_event(message) for message in self._buffer]
        except ParserError as exc:
            raise UpstreamError(f"The upstream event stream is invalid: {exc}",
                                code="upstream_invalid_response") from None


def _event(message: EventStreamMessage) -> SSEEvent:
    headers = cast(dict[str, Any], message.headers)  # botocore's stubs say int
    kind = headers.get(":message-type", "event")
    payload = message.payload.decode("utf-8", "replace")
    if kind == "event":
        return SSEEvent(payload, str(headers.get(":event-type", "")))
    if kind == "exception":
        name = str(headers.get(":exception-type", ""))
        return SSEEvent(payload, name if name.endswith(EXCEPTION_SUFFIX) else ERROR_EVENT)
    detail = {"code": str(headers.get(":error-code", "")),
              "message": str(headers.get(":error-message", "") or payload)}
    return SSEEvent(orjson.dumps(detail).decode(), ERROR_EVENT)
