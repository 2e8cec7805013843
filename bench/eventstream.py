"""The AWS event-stream framing (`application/vnd.amazon.eventstream`) Bedrock streams in,
on the sending side: what the benchmark's upstream and the tests' fake Bedrock write.

One message: a prelude (total length, headers length, the prelude's CRC32), the headers
(string-typed, type 7), the payload and the whole message's CRC32; big-endian throughout.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

STRING = b"\x07"  # the header value type for strings


def encode_frame(headers: dict[str, str], payload: bytes) -> bytes:
    raw_headers = b"".join(
        bytes([len(name)]) + name.encode() + STRING + struct.pack(">H", len(value.encode()))
        + value.encode() for name, value in headers.items())
    prelude = struct.pack(">II", 16 + len(raw_headers) + len(payload), len(raw_headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw_headers + payload
    return message + struct.pack(">I", zlib.crc32(message))


def _json(data: dict[str, Any]) -> bytes:
    """A payload as Bedrock writes it: compact JSON."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def event_frame(event: str, data: dict[str, Any]) -> bytes:
    return encode_frame({":event-type": event, ":content-type": "application/json",
                         ":message-type": "event"}, _json(data))


def exception_frame(exception: str, message: str) -> bytes:
    return encode_frame({":exception-type": exception, ":content-type": "application/json",
                         ":message-type": "exception"}, _json({"message": message}))
