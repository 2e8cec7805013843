"""AWS event streams (`application/vnd.amazon.eventstream`), parsed once into the events
the stream translators read, as `sse.py` does for SSE.

Each binary message becomes one `SSEEvent` whose `data` is its JSON payload and whose
`event` says what it is:

| message (`:message-type`) | SSEEvent.event | SSEEvent.data |
|---|---|---|
| event | its `:event-type` (messageStart, metadata, ...) | the payload |
| exception | its `:exception-type` (throttlingException, ...) | the payload |
| error | "error" | `{"code": :error-code, "message": :error-message}` |

Exception types always end in "Exception"; their payload is `{"message": ...}`.
A message whose checksums, lengths or headers are wrong is the upstream's fault:
UpstreamError (502 `upstream_invalid_response`).

The framing (AWS's event-stream encoding, as botocore reads it; the unit tests hold this
parser to botocore's on random and corrupted input): a 12-byte prelude (total length,
headers length, CRC32 of those 8 bytes), the headers, the payload, and a CRC32 of all
that. botocore's parser builds several Python objects per message and re-slices its
buffer per field, the largest cost of a Bedrock stream; this one reads each message
with a few C calls (struct, zlib) and parses a headers block only the first time it
sees those bytes: a stream repeats the same few blocks.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from zlib import crc32

import orjson

from ..errors import UpstreamError
from ..sse import SSEEvent

ERROR_EVENT = "error"
EXCEPTION_SUFFIX = "Exception"
PRELUDE_BYTES = 12
MESSAGE_OVERHEAD = PRELUDE_BYTES + 4  # the prelude and the message CRC
MAX_HEADERS_BYTES = 128 * 1024  # botocore's limits
MAX_PAYLOAD_BYTES = 24 * 1024 * 1024
HEADER_CACHE_SIZE = 256  # distinct headers blocks remembered (a stream uses a handful)
CACHED_HEADERS_BYTES = 1024  # larger blocks are parsed each time, never kept

HeaderValue = bool | int | bytes | str
Headers = Mapping[str, HeaderValue]

_PRELUDE = struct.Struct(">III")
_CRC = struct.Struct(">I")
_LENGTH = struct.Struct(">H")
# Header value types (AWS's numbering): fixed-size ones as (struct, size).
_FIXED: dict[int, tuple[struct.Struct, int]] = {
    2: (struct.Struct(">b"), 1), 3: (struct.Struct(">h"), 2), 4: (struct.Struct(">i"), 4),
    5: (struct.Struct(">q"), 8), 8: (struct.Struct(">q"), 8)}  # 8: a timestamp (ms)
_BYTES, _STRING, _UUID = 6, 7, 9


class InvalidFrame(ValueError):
    """The bytes are not a well-formed event-stream message."""


@dataclass(frozen=True, slots=True)
class HeadersBlock:
    """One message's headers, and the SSEEvent.event they make (None: an error message,
    whose event data comes from its headers)."""

    headers: Headers
    event: str | None


Message = tuple[HeadersBlock, bytes]  # (headers, payload)


class EventStreamDecoder:
    """Incremental: feed raw chunks as they arrive (split anywhere), get whole events."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data = b""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        data = self._data + chunk if self._data else chunk
        try:
            messages, used = split_messages(data)
        except InvalidFrame as exc:
            raise UpstreamError(f"The upstream event stream is invalid: {exc}",
                                code="upstream_invalid_response") from None
        self._data = data[used:] if used else data
        return [SSEEvent(payload.decode("utf-8", "replace"), block.event)
                if block.event is not None else _error_event(block.headers, payload)
                for block, payload in messages]


def split_messages(data: bytes) -> tuple[list[Message], int]:
    """The whole messages at the start of `data`, and how many bytes they took; raises
    InvalidFrame for bytes that cannot be a message (a checksum, a length, a header)."""
    messages: list[Message] = []
    start, size = 0, len(data)
    while size - start >= PRELUDE_BYTES:
        total, headers_length, prelude_crc = _PRELUDE.unpack_from(data, start)
        # The prelude is checked as soon as it is here, before its message (as botocore).
        if crc32(data[start:start + 8]) != prelude_crc:
            raise InvalidFrame("the prelude's checksum does not match")
        if headers_length > MAX_HEADERS_BYTES:
            raise InvalidFrame(f"headers of {headers_length} bytes")
        if total - headers_length - MESSAGE_OVERHEAD > MAX_PAYLOAD_BYTES:
            raise InvalidFrame(f"a payload of {total - headers_length - MESSAGE_OVERHEAD} "
                               "bytes")
        if total < headers_length + MESSAGE_OVERHEAD:
            raise InvalidFrame(f"a message of {total} bytes with {headers_length} bytes "
                               "of headers")
        end = start + total
        if end > size:
            break
        crc_at = end - 4
        if crc32(data[start + 8:crc_at], prelude_crc) != _CRC.unpack_from(data, crc_at)[0]:
            raise InvalidFrame("the message's checksum does not match")
        payload_at = start + PRELUDE_BYTES + headers_length
        raw = data[start + PRELUDE_BYTES:payload_at]
        messages.append((_cached_block(raw) if headers_length <= CACHED_HEADERS_BYTES
                         else _headers_block(raw),
                         data[payload_at:crc_at]))
        start = end
    return messages, start


def _error_event(headers: Headers, payload: bytes) -> SSEEvent:
    detail = {"code": str(headers.get(":error-code", "")),
              "message": str(headers.get(":error-message", "")
                             or payload.decode("utf-8", "replace"))}
    return SSEEvent(orjson.dumps(detail).decode(), ERROR_EVENT)


def _headers_block(raw: bytes) -> HeadersBlock:
    """A headers block read: its headers and the event they make (`_cached_block` keeps
    small blocks' by their bytes, so the result is shared and never changed)."""
    try:
        headers = _parse_headers(raw)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise InvalidFrame(f"malformed headers ({exc})") from None
    kind = headers.get(":message-type", "event")
    if kind == "event":
        return HeadersBlock(headers, str(headers.get(":event-type", "")))
    if kind == "exception":
        name = str(headers.get(":exception-type", ""))
        return HeadersBlock(headers, name if name.endswith(EXCEPTION_SUFFIX) else ERROR_EVENT)
    return HeadersBlock(headers, None)


def _parse_headers(raw: bytes) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    at, size = 0, len(raw)
    while at < size:
        name_end = at + 1 + raw[at]
        name = raw[at + 1:name_end].decode()
        kind = raw[name_end]
        at = name_end + 1
        value: HeaderValue
        if kind in (_STRING, _BYTES):
            value_end = at + 2 + _LENGTH.unpack_from(raw, at)[0]
            value = raw[at + 2:value_end]
            if kind == _STRING:
                value = value.decode()
            at = value_end
        elif kind <= 1:
            value = kind == 0
        elif kind in _FIXED:
            unpacker, width = _FIXED[kind]
            value = unpacker.unpack_from(raw, at)[0]
            at += width
        elif kind == _UUID:
            value = raw[at:at + 16]
            at += 16
        else:
            raise InvalidFrame(f"header {name!r} has unknown type {kind}")
        if at > size:
            raise InvalidFrame(f"header {name!r} runs past the headers")
        if name in headers:
            raise InvalidFrame(f"header {name!r} appears twice")
        headers[name] = value
    return headers


# Bedrock's blocks are under 100 bytes: the cache holds at most 256 KB of keys.
_cached_block = lru_cache(maxsize=HEADER_CACHE_SIZE)(_headers_block)
