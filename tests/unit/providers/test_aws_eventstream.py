"""AWS event streams parsed into events. botocore's parser is the oracle: the encoder the
fakes use (bench/eventstream.py) is checked against it, and the proxy's parser must give
what it gives (the same messages, an error where it fails) on random streams split
anywhere, with random corruptions, and on random header blocks."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable
from itertools import pairwise
from typing import Any

import orjson
import pytest
from botocore.eventstream import EventStreamBuffer, EventStreamMessage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyrouter_proxy.errors import UpstreamError
from anyrouter_proxy.providers.aws_eventstream import (
    MAX_HEADERS_BYTES,
    MAX_PAYLOAD_BYTES,
    EventStreamDecoder,
    InvalidFrame,
    split_messages,
)
from anyrouter_proxy.sse import SSEEvent
from bench.eventstream import encode_frame, event_frame, exception_frame
from tests.fake_bedrock import golden

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_the_test_encoder_is_what_botocore_parses() -> None:
    frame = encode_frame({":event-type": "messageStart", ":message-type": "event",
                          ":content-type": "application/json"}, b'{"role":"assistant"}')
    buffer = EventStreamBuffer()
    buffer.add_data(frame)
    message = next(buffer)
    assert message.headers == {":event-type": "messageStart", ":message-type": "event",
                               ":content-type": "application/json"}
    assert message.payload == b'{"role":"assistant"}'
    headers_length = int.from_bytes(frame[4:8], "big")
    assert int.from_bytes(frame[:4], "big") == len(frame) == 16 + headers_length + 20


def test_events_come_whole_however_the_bytes_are_split() -> None:
    events = golden("stream_tool_use.json")
    data = b"".join(event_frame(e["event"], e["data"]) for e in events)
    for size in (1, 5, 64, len(data)):
        decoder = EventStreamDecoder()
        out = [event for start in range(0, len(data), size)
               for event in decoder.feed(data[start:start + size])]
        assert [(e.event, json.loads(e.data)) for e in out] == [
            (e["event"], e["data"]) for e in events]


def test_exceptions_and_errors_are_named() -> None:
    decoder = EventStreamDecoder()
    data = exception_frame("throttlingException", "Slow down") + encode_frame(
        {":message-type": "error", ":error-code": "InternalFailure",
         ":error-message": "Something broke"}, b"")
    first, second = decoder.feed(data)
    assert first.event == "throttlingException"
    assert json.loads(first.data) == {"message": "Slow down"}
    assert second.event == "error"
    assert json.loads(second.data) == {"code": "InternalFailure", "message": "Something broke"}


def test_a_corrupt_frame_is_the_upstreams_fault() -> None:
    frame = bytearray(event_frame("messageStart", {"role": "assistant"}))
    frame[20] ^= 0xFF  # a header byte: the message CRC no longer matches
    with pytest.raises(UpstreamError) as caught:
        EventStreamDecoder().feed(bytes(frame))
    assert caught.value.code == "upstream_invalid_response"
    assert caught.value.status == 502


# -- botocore as the oracle ----------------------------------------------------------------------

Header = tuple[int, Any]  # (AWS header type, value)
_FORMATS = {2: ">b", 3: ">h", 4: ">i", 5: ">q", 8: ">q"}


def encode_header(name: str, header: Header) -> bytes:
    """Any header type, as AWS encodes it (bench/eventstream.py writes strings only)."""
    kind, value = header
    raw = name.encode()
    out = bytes([len(raw)]) + raw + bytes([kind])
    if kind in _FORMATS:
        return out + struct.pack(_FORMATS[kind], value)
    if kind in (6, 7):
        data = value.encode() if kind == 7 else value
        return out + struct.pack(">H", len(data)) + data
    return out + (value if kind == 9 else b"")  # 0/1: true/false carry no bytes


def frame_of(raw_headers: bytes, payload: bytes) -> bytes:
    prelude = struct.pack(">II", 16 + len(raw_headers) + len(payload), len(raw_headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw_headers + payload
    return message + struct.pack(">I", zlib.crc32(message))


def botocore_event(message: EventStreamMessage) -> SSEEvent:
    """What each message meant before this parser: botocore's message, read as the module
    docstring's table says."""
    headers: dict[str, Any] = message.headers  # type: ignore[assignment]
    kind = headers.get(":message-type", "event")
    payload = message.payload.decode("utf-8", "replace")
    if kind == "event":
        return SSEEvent(payload, str(headers.get(":event-type", "")))
    if kind == "exception":
        name = str(headers.get(":exception-type", ""))
        return SSEEvent(payload, name if name.endswith("Exception") else "error")
    detail = {"code": str(headers.get(":error-code", "")),
              "message": str(headers.get(":error-message", "") or payload)}
    return SSEEvent(orjson.dumps(detail).decode(), "error")


Outcome = tuple[list[list[Any]], bool]  # what each chunk gave, and whether it failed


def botocore_outcome(chunks: Iterable[bytes]) -> tuple[Outcome, list[list[SSEEvent]]]:
    buffer = EventStreamBuffer()
    messages: list[list[Any]] = []
    events: list[list[SSEEvent]] = []
    for chunk in chunks:
        buffer.add_data(chunk)
        try:
            got = list(buffer)
        except Exception:  # ParserError; struct/Key/UnicodeDecodeError on bad headers
            return (messages, True), events
        messages.append([(m.headers, m.payload) for m in got])
        events.append([botocore_event(m) for m in got])
    return (messages, False), events


def lean_outcome(chunks: Iterable[bytes]) -> Outcome:
    data = b""
    messages: list[list[Any]] = []
    for chunk in chunks:
        data += chunk
        try:
            got, used = split_messages(data)
        except InvalidFrame:
            return messages, True
        messages.append([(dict(block.headers), payload) for block, payload in got])
        data = data[used:]
    return messages, False


def decoder_outcome(chunks: Iterable[bytes]) -> tuple[list[list[SSEEvent]], bool]:
    decoder = EventStreamDecoder()
    events: list[list[SSEEvent]] = []
    for chunk in chunks:
        try:
            events.append(decoder.feed(chunk))
        except UpstreamError as exc:
            assert exc.code == "upstream_invalid_response"
            return events, True
    return events, False


names = st.text(min_size=1, max_size=10)
values: st.SearchStrategy[Header] = st.one_of(
    st.booleans().map(lambda b: (0 if b else 1, b)),
    st.integers(-2**7, 2**7 - 1).map(lambda v: (2, v)),
    st.integers(-2**15, 2**15 - 1).map(lambda v: (3, v)),
    st.integers(-2**31, 2**31 - 1).map(lambda v: (4, v)),
    st.integers(-2**63, 2**63 - 1).map(lambda v: (5, v)),
    st.integers(-2**63, 2**63 - 1).map(lambda v: (8, v)),
    st.binary(max_size=24).map(lambda v: (6, v)),
    st.text(max_size=24).map(lambda v: (7, v)),
    st.binary(min_size=16, max_size=16).map(lambda v: (9, v)))
bedrock_headers = st.fixed_dictionaries({
    ":message-type": st.sampled_from(["event", "exception", "error"]).map(lambda v: (7, v))},
    optional={":event-type": st.sampled_from(["messageStart", "contentBlockDelta", "metadata"]),
              ":exception-type": st.sampled_from(["throttlingException", "oops"]),
              ":error-code": st.text(max_size=8), ":error-message": st.text(max_size=8),
              ":content-type": st.just("application/json")}).map(
    lambda h: {k: v if isinstance(v, tuple) else (7, v) for k, v in h.items()})
header_sets = bedrock_headers | st.dictionaries(names, values, max_size=5)
payloads = st.binary(max_size=48) | st.builds(
    lambda text: orjson.dumps({"delta": {"text": text}}), st.text(max_size=20))
messages = st.tuples(header_sets, payloads).map(lambda m: frame_of(
    b"".join(encode_header(name, value) for name, value in m[0].items()), m[1]))


@st.composite
def streams(draw: st.DrawFn) -> list[bytes]:
    """Valid messages, maybe corrupted (a byte flipped, cut short, bytes inserted), split
    into chunks anywhere."""
    data = bytearray(b"".join(draw(st.lists(messages, max_size=5))))
    change = draw(st.sampled_from(["none", "flip", "cut", "insert"]))
    if data and change != "none":
        at = draw(st.integers(0, len(data) - 1))
        if change == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif change == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    cuts = sorted(draw(st.sets(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return [bytes(data[a:b]) for a, b in pairwise(bounds)]


@FUZZ
@given(streams())
def test_same_messages_and_errors_as_botocore(chunks: list[bytes]) -> None:
    (expected, failed), expected_events = botocore_outcome(chunks)
    assert lean_outcome(chunks) == (expected, failed)
    assert decoder_outcome(chunks) == (expected_events, failed)


@FUZZ
@given(st.binary(max_size=64), payloads, st.integers(1, 8))
def test_random_header_blocks_are_read_as_botocore_reads_them(
        raw: bytes, payload: bytes, pieces: int) -> None:
    """Whatever a headers block holds (with true checksums): where botocore fails, this
    parser fails; what this parser reads, botocore reads alike. (It is stricter in one
    way: a value running past the end of the block is an error, not a shorter value.)"""
    data = frame_of(raw, payload)
    step = -(-len(data) // pieces)
    chunks = [data[i:i + step] for i in range(0, len(data), step)]
    (expected, failed), _ = botocore_outcome(chunks)
    got, lean_failed = lean_outcome(chunks)
    if failed:
        assert lean_failed
    if not lean_failed:
        assert (got, lean_failed) == (expected, failed)


def test_valid_header_blocks_of_every_type_are_read() -> None:
    header = {"b1": (0, True), "b0": (1, False), "i8": (2, -5), "i16": (3, 300),
              "i32": (4, -70000), "i64": (5, 2**40), "ts": (8, 1735689600000),
              "raw": (6, b"\x00\xff"), "s": (7, "h\u00e9"), "id": (9, bytes(range(16)))}
    data = frame_of(b"".join(encode_header(k, v) for k, v in header.items()), b"{}")
    got, used = split_messages(data)
    assert used == len(data)
    assert [(dict(block.headers), payload) for block, payload in got] == [
        ({name: value for name, (_, value) in header.items()}, b"{}")]
    assert botocore_outcome([data])[0] == ([[(dict(got[0][0].headers), b"{}")]], False)


def test_a_large_headers_block_is_read_each_time_alike() -> None:
    headers = {":message-type": (7, "event"), ":event-type": (7, "metadata"),
               "x-padding": (7, "p" * 3000)}
    data = frame_of(b"".join(encode_header(k, v) for k, v in headers.items()), b"{}") * 2
    assert lean_outcome([data]) == botocore_outcome([data])[0]
    assert EventStreamDecoder().feed(data) == [SSEEvent("{}", "metadata")] * 2


@pytest.mark.parametrize("raw", [
    encode_header("s", (7, "abc"))[:-1],  # a string cut short
    encode_header("u", (9, bytes(16)))[:-3],  # a uuid cut short
    encode_header("x", (7, "a")) + encode_header("x", (7, "b")),  # twice
    b"\x01x\x0a",  # type 10 does not exist
    b"\x02\xff\xfex\x00\x00",  # a name that is not UTF-8
])
def test_malformed_headers_are_the_upstreams_fault(raw: bytes) -> None:
    with pytest.raises(UpstreamError) as caught:
        EventStreamDecoder().feed(frame_of(raw, b"{}"))
    assert caught.value.code == "upstream_invalid_response"


def prelude(total: int, headers: int) -> bytes:
    head = struct.pack(">II", total, headers)
    return head + struct.pack(">I", zlib.crc32(head))


@pytest.mark.parametrize("head", [
    prelude(16 + MAX_HEADERS_BYTES + 1, MAX_HEADERS_BYTES + 1),
    prelude(16 + MAX_PAYLOAD_BYTES + 1, 0),
    prelude(15, 0),  # shorter than a prelude and a CRC
    prelude(20, 8),  # headers longer than the message
])
def test_impossible_lengths_fail_as_soon_as_the_prelude_is_here(head: bytes) -> None:
    with pytest.raises(UpstreamError):
        EventStreamDecoder().feed(head)


def test_a_message_waits_for_its_last_byte() -> None:
    data = event_frame("messageStart", {"role": "assistant"}) * 2
    decoder = EventStreamDecoder()
    assert decoder.feed(data[:-1]) == [SSEEvent('{"role":"assistant"}', "messageStart")]
    assert decoder.feed(data[-1:]) == [SSEEvent('{"role":"assistant"}', "messageStart")]
