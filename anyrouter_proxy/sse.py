"""Server-sent events, parsed once: bytes in, events out (and back to bytes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

DONE = "[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"
KEEPALIVE = b": ANYROUTER PROCESSING\n\n"
MAX_EVENT_BYTES = 16 * 1024 * 1024  # one event larger than this is not an LLM stream


class EventTooLarge(ValueError):
    pass


@dataclass(slots=True)
class SSEEvent:
    data: str
    event: str | None = None

    @property
    def is_done(self) -> bool:
        return self.data == DONE


class EventDecoder(Protocol):
    """Raw upstream bytes in, whole events out: SSEDecoder, or the decoder of another
    framing (AWS event streams, providers/aws_eventstream.py) yielding the same events."""

    def feed(self, chunk: bytes) -> list[SSEEvent]: ...


class SSEDecoder:
    """Incremental decoder: feed raw chunks as they arrive, get whole events back.

    Comment lines (`: ping`) are dropped; `id:` and `retry:` are ignored because no
    upstream we speak to uses them. CRLF and CR line endings are normalised. Bytes of an
    unfinished event are kept as a list and joined once the event ends, so a huge event
    costs linear time, and more than MAX_EVENT_BYTES of it raises EventTooLarge.
    """

    __slots__ = ("_parts", "_pending_cr", "_size")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._pending_cr = False

    @property
    def idle(self) -> bool:
        """Between events: no bytes of an unfinished one kept."""
        return not self._parts and not self._pending_cr

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        # Most reads of a relayed stream are one whole `data:` event: its only line break
        # is the pair that ends it (so it has no CR either).
        if (chunk.find(b"\n") == len(chunk) - 2 and chunk[-1:] == b"\n" and not self._parts
                and chunk.startswith(b"data: ") and not self._pending_cr
                and chunk.find(b"\r") == -1):
            return [SSEEvent(chunk[6:-2].decode("utf-8", "replace"))]
        # ... or a named one (Anthropic's): `event:` and `data:` lines and nothing else.
        if (chunk[-2:] == b"\n\n" and chunk.startswith(b"event: ") and not self._parts
                and not self._pending_cr and chunk.find(b"\r") == -1):
            event = _named(chunk[:-2])
            if event is not None:
                return [event]
        # ... or, from Google, the same ended by CRLF CRLF.
        if (chunk.find(b"\r") == len(chunk) - 4 and chunk.find(b"\n") == len(chunk) - 3
                and chunk.endswith(b"\r\n\r\n") and not self._parts
                and chunk.startswith(b"data: ") and not self._pending_cr):
            return [SSEEvent(chunk[6:-4].decode("utf-8", "replace"))]
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        # find() rather than `in`: on bytes, `in` first tries the needle as an integer and
        # builds (then drops) a TypeError, which costs more than the search.
        if chunk.find(b"\r") != -1:
            if chunk.endswith(b"\r"):  # might be half of a CRLF split across chunks
                chunk, self._pending_cr = chunk[:-1], True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        parts = self._parts
        if parts:  # an event continues: only the new bytes (and one before) can end it
            if parts[-1][-1:] + chunk[:1] != b"\n\n" and chunk.find(b"\n\n") == -1:
                return self._keep(chunk)
            chunk = b"".join(parts) + chunk
        blocks = chunk.split(b"\n\n")
        rest = blocks.pop()
        if not blocks:  # no event ends in these bytes
            return self._keep(rest)
        self._parts = [rest] if rest else []
        self._size = len(rest)
        events = []
        for block in blocks:
            if block.startswith(b"data: ") and block.find(b"\n") == -1:  # most events
                events.append(SSEEvent(block[6:].decode("utf-8", "replace")))
            elif (event := _named(block) or _parse_block(block)) is not None:
                events.append(event)
        return events

    def _keep(self, chunk: bytes) -> list[SSEEvent]:
        """Bytes of an event still unfinished."""
        if chunk:
            self._parts.append(chunk)
            self._size += len(chunk)
            if self._size > MAX_EVENT_BYTES:
                raise EventTooLarge(f"a stream event exceeds {MAX_EVENT_BYTES} bytes")
        return []


def _named(block: bytes) -> SSEEvent | None:
    """`event: NAME` then `data: DATA` (LF, no further line) as `_parse_block` reads it;
    None for any other block."""
    end = block.find(b"\n")
    if (end == -1 or not block.startswith(b"event: ") or not block.startswith(b"data: ", end + 1)
            or block.find(b"\n", end + 1) != -1):
        return None
    return SSEEvent(block[end + 7:].decode("utf-8", "replace"),
                    block[7:end].decode("utf-8", "replace"))


def _parse_block(block: bytes) -> SSEEvent | None:
    data: list[str] = []
    event: str | None = None
    for line in block.decode("utf-8", "replace").split("\n"):
        if not line or line[0] == ":":
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if not data and event is None:
        return None
    return SSEEvent("\n".join(data), event)


def encode_event(data: bytes | str, event: str | None = None) -> bytes:
    """One event on the wire; `data` must be a single line (JSON always is)."""
    if isinstance(data, str):
        data = data.encode()
    if event is None:
        return b"data: " + data + b"\n\n"
    head = _HEADS.get(event)
    if head is None:  # a dialect's event names are few: each head is encoded once
        head = b"event: " + event.encode() + b"\ndata: "
        if len(_HEADS) < MAX_HEADS:
            _HEADS[event] = head
    return head + data + b"\n\n"


MAX_HEADS = 256  # event names are ours or an upstream's: a bound all the same
_HEADS: dict[str, bytes] = {}
