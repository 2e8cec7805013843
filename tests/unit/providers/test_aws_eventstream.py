"""AWS event streams parsed with botocore into events; the encoder the fakes use
(bench/eventstream.py) checked against botocore's own parser."""

from __future__ import annotations

import json

import pytest
from botocore.eventstream import EventStreamBuffer

from anyrouter_proxy.errors import UpstreamError
from anyrouter_proxy.providers.aws_eventstream import EventStreamDecoder
from bench.eventstream import encode_frame, event_frame, exception_frame
from tests.fake_bedrock import golden


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
