"""The SSE decoder: the same events whichever way a stream's bytes are cut into reads
(a whole event per read takes a shortcut; any other cut takes the general path)."""

from __future__ import annotations

import pytest

from anyrouter_proxy import sse
from anyrouter_proxy.sse import SSEDecoder, SSEEvent, encode_event

EVENTS = [
    b'data: {"a": 1}\n\n',
    b"data: \n\n",  # empty data
    b"data:no-space\n\n",
    b"data: crlf\r\n\r\n",
    b"data: crlf one\r\ndata: crlf two\r\n\r\n",
    b"data: lone-cr\r\r",
    b"event: named\ndata: x\n\n",
    b"event: \ndata: \n\n",  # empty name and data
    b"event: a:b \xff\ndata: y: z\n\n",
    b"event: twice\nevent: again\ndata: w\n\n",
    b"event: data-last\ndata: v\ndata: u\n\n",
    b"event:tight\ndata: t\n\n",
    b"event: tight-data\ndata:s\n\n",
    b"event: only-name\n\n",
    b": a comment\n\n",
    b"data: one\ndata: two\n\n",
    "data: é ü 中\n\n".encode(),
    b"data: \xff\xfe invalid utf-8\n\n",
    b"data: [DONE]\n\n",
]


def decoded(reads: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    return [event for read in reads for event in decoder.feed(read)]


EXPECTED = [SSEEvent('{"a": 1}'), SSEEvent(""), SSEEvent("no-space"), SSEEvent("crlf"),
            SSEEvent("crlf one\ncrlf two"),
            SSEEvent("lone-cr"), SSEEvent("x", "named"), SSEEvent("", ""),
            SSEEvent("y: z", "a:b \ufffd"), SSEEvent("w", "again"), SSEEvent("v\nu", "data-last"),
            SSEEvent("t", "tight"), SSEEvent("s", "tight-data"), SSEEvent("", "only-name"),
            SSEEvent("one\ntwo"),
            SSEEvent("é ü 中"), SSEEvent("\ufffd\ufffd invalid utf-8"), SSEEvent("[DONE]")]


def test_one_event_per_read() -> None:
    assert decoded(EVENTS) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_any_cut_of_the_same_bytes(size: int) -> None:
    stream = b"".join(EVENTS)
    assert decoded([stream[i:i + size] for i in range(0, len(stream), size)]) == EXPECTED


def test_a_whole_event_shape_that_continues_an_unfinished_one() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: par") == []
    assert decoder.feed(b"data: x\n\n") == [SSEEvent("pardata: x")]
    assert decoder.feed(b"data: par") == []
    assert decoder.feed(b"data: y\r\n\r\n") == [SSEEvent("pardata: y")]
    assert decoder.feed(b"data: a\r") == []  # a CR that may be half of a CRLF
    assert decoder.feed(b"data: b\n\n") == [SSEEvent("a\nb")]  # it was a line end


def test_named_events_are_encoded_alike_however_many_names_come() -> None:
    names = [f"name-{i}" for i in range(sse.MAX_HEADS + 10)] + ["name-0", "é"]
    for name in names:
        assert encode_event(b"{}", name) == f"event: {name}\ndata: {{}}\n\n".encode()
    assert len(sse._HEADS) <= sse.MAX_HEADS
    assert encode_event("x") == b"data: x\n\n"
