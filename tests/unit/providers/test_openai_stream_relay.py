"""The OpenAI chat stream relay's short path (the usual text chunk relayed by a template
learnt from the first, not parsed and re-encoded) against its general path: the same bytes
to the client, the same books (output estimate, upstream id, finish reason, usage), the
same failures, whatever comes."""

from __future__ import annotations

import itertools
import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyrouter_proxy.config.model import ProviderConfig, Route
from anyrouter_proxy.errors import ProxyError
from anyrouter_proxy.providers.base import CallContext
from anyrouter_proxy.providers.openai import OpenAIStreamRelay
from anyrouter_proxy.sse import SSEDecoder, SSEEvent
from anyrouter_proxy.stream_session import translate_read, whole_event_path
from tests.unit.providers.relay_run import booked

HEAD = {"id": "chatcmpl-abc123", "object": "chat.completion.chunk", "created": 1735689600,
        "model": "gpt-4o-mini-2024-07-18", "service_tier": "default",
        "system_fingerprint": "fp_44709d6fcb"}


def context(include_usage: bool) -> CallContext:
    provider = ProviderConfig(id="p", kind="openai", base_url="http://127.0.0.1:9", api_key="k")
    return CallContext("gen-1\u00e9\"", "public/model", 1, provider,
                       Route(provider="p", model="upstream", priority=0), True, include_usage)


def compact(value: Any) -> str:
    """Compact JSON as OpenAI writes it (any integer: json, not orjson)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def chunk(choices: list[Any], head: dict[str, Any] = HEAD, **extra: Any) -> str:
    return compact({**head, "choices": choices, **extra})


def text(content: str, head: dict[str, Any] = HEAD, **extra: Any) -> str:
    return chunk([{"index": 0, "delta": {"content": content}, "logprobs": None,
                   "finish_reason": None}], head, **extra)


def transcript(**extra: Any) -> list[str]:
    """A chat stream as OpenAI sends it (`extra` on every chunk)."""
    return [
        chunk([{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None},
                "logprobs": None, "finish_reason": None}], **extra),
        *(text(piece, **extra) for piece in ("Hello", " world", "", " (it's", " 42)!")),
        chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}], **extra),
        chunk([], **{**extra, "usage": {"prompt_tokens": 9, "completion_tokens": 5,
                                        "total_tokens": 14}}),
        "[DONE]",
    ]


def relay(events: list[str], include_usage: bool, *, short: bool) -> dict[str, Any]:
    """What the relay sends and books; `short=False` takes only the general path."""
    translator = OpenAIStreamRelay(context(include_usage))
    sent: list[bytes] = []
    failure = None
    try:
        for data in events:
            event = SSEEvent(data)
            if short:
                sent.extend(translator.feed(event))
            elif (out := translator._chunk(event)) is not None:
                sent.append(b"data: " + orjson.dumps(out) + b"\n\n")
    except ProxyError as exc:
        failure = (type(exc), str(exc))
    usage = translator.usage
    return {"sent": sent, "failure": failure, "output_tokens": translator.output_tokens,
            "upstream_id": translator.upstream_id, "finish_reason": translator.finish_reason,
            "usage": None if usage is None else (usage.prompt_tokens, usage.completion_tokens,
                                                 usage.source)}


def assert_same(events: list[str], include_usage: bool) -> None:
    assert relay(events, include_usage, short=True) == relay(events, include_usage, short=False)


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("extra", [
    {}, {"usage": None}, {"usage": None, "obfuscation": "xK3"}, {"obfuscation": "a"}])
def test_openai_transcripts_relay_as_the_general_path_does(extra: dict[str, Any],
                                                            include_usage: bool) -> None:
    assert_same(transcript(**extra), include_usage)


def general_path_events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The events the relay takes on its general path from now on (filled as it goes)."""
    general: list[str] = []
    original = OpenAIStreamRelay._chunk

    def counted(self: OpenAIStreamRelay, event: SSEEvent) -> Any:
        general.append(event.data)
        return original(self, event)

    monkeypatch.setattr(OpenAIStreamRelay, "_chunk", counted)
    return general


def test_text_chunks_take_the_short_path(monkeypatch: pytest.MonkeyPatch) -> None:
    general = general_path_events(monkeypatch)
    events = transcript(usage=None, obfuscation="xyz")
    sent = relay(events, True, short=True)["sent"]
    # role, the first text (the template is learnt from it), finish, usage, [DONE]
    assert general == [events[0], events[1], *events[-3:]]
    assert sent[1] == (b'data: {"id":"gen-1\xc3\xa9\\"","object":"chat.completion.chunk",'
                       b'"created":1735689600,"model":"public/model","service_tier":"default",'
                       b'"system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":'
                       b'{"content":"Hello"},"logprobs":null,"finish_reason":null}],'
                       b'"usage":null,"obfuscation":"xyz"}\n\n')


# After a usual chunk, chunks with the same beginning that are not usual ones.
ODD_AFTER_THE_FIRST = [
    text("caf\u00e9"), text('say "hi"'), text("back\\slash"), text("line\nbreak"),
    text("tab\there"), text("del\x7f"), text("emoji \U0001f600"),
    text("a", usage={"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}),
    text("b", usage=None, x=1), text("c", obfuscation=None), text("d", obfuscation=5),
    text("e").replace('"finish_reason":null', '"finish_reason":"length"'),
    text("e").replace('"finish_reason":null', '"finish_reason":"ab"'),  # as long as null
    text("e").replace('"logprobs":null', '"logprobs":true'),
    text("f")[:-1] + ',"usage":null,"usage":{"prompt_tokens":1}}',
    text("g")[:-1] + ',"obfuscation":"a","obfuscation":"b"}',
    text("h")[:-1] + ' }', text("i") + " ", text("j")[:-1],
    text("k").replace('"content":"k"', '"content":"k","role":"assistant"'),
    text("l").replace('"content":"l"', '"content":"l\x01"'),
    text("m").replace('{"content":"m"}', '{"content":"m\\u0041"}'),
    text("n").replace('"index":0', '"index":1'),
    text("o")[:-1] + ',"error":{"message":"boom"}}',
    text("p").replace('"content":"p"', '"content":"p"}],"choices":[{"delta":{}'),
]




def obfuscated(data: str, value: str = "q") -> str:
    """The chunk as OpenAI ends it: a random obfuscation string last (`value` as written)."""
    return data[:-1] + ',"obfuscation":"' + value + '"}'


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("odd", range(len(ODD_AFTER_THE_FIRST)))
def test_odd_chunks_after_a_usual_one_relay_as_the_general_path_does(
        odd: int, include_usage: bool) -> None:
    assert_same([text("first"), ODD_AFTER_THE_FIRST[odd], text("last")], include_usage)
    assert_same([obfuscated(text("first")), obfuscated(ODD_AFTER_THE_FIRST[odd]),
                 obfuscated(text("last"))], include_usage)


@pytest.mark.parametrize("value", ["\\u00e9", "a\\/b", "\\\"", "x\x01", "del\x7f", "",
                                   'a","x":"b'])
@pytest.mark.parametrize("include_usage", [True, False])
def test_odd_obfuscation_strings_relay_as_the_general_path_does(
        value: str, include_usage: bool) -> None:
    assert_same([obfuscated(text("first")), obfuscated(text("second"), value),
                 obfuscated(text("third"))], include_usage)


@pytest.mark.parametrize("first", [
    text("x", head={**HEAD, "created": 1_000_000_000_000_000_000_000}),  # beyond 64 bits
    text("x", head={**HEAD, "id": "with \"quote\""}), text("x", head={**HEAD, "id": 7}),
    text("x", head={**HEAD, "model": "m\u00e9"}), text("x", head={**HEAD, "service_tier": None}),
    text("x", head={k: v for k, v in HEAD.items() if k != "system_fingerprint"}),
    text("x", head={k: v for k, v in HEAD.items() if k != "service_tier"}),
    text("x", head={"object": "chat.completion.chunk", **HEAD}),
    text("x", head={**HEAD, "created": 1.5}),
    text("x").replace('"created":1735689600', '"created":01735689600'),
    json.dumps(json.loads(text("x"))),  # not compact
])
@pytest.mark.parametrize("include_usage", [True, False])
def test_first_chunks_of_every_shape_relay_as_the_general_path_does(
        first: str, include_usage: bool) -> None:
    assert_same([first, text("second"), text("third\u00e9"), "[DONE]"], include_usage)


FILTERS = {"hate": {"filtered": False, "severity": "safe"},
           "self_harm": {"filtered": False, "severity": "safe"}}


def azure_text(content: str, filters: dict[str, Any] = FILTERS) -> str:
    """Azure OpenAI's chunk: keys in alphabetical order, content filter results."""
    return compact({"choices": [{"content_filter_results": filters,
                                 "delta": {"content": content}, "finish_reason": None,
                                 "index": 0, "logprobs": None}],
                    "created": 1735689600, "id": "chatcmpl-az", "model": "gpt-4o",
                    "object": "chat.completion.chunk", "system_fingerprint": "fp_az"})


@pytest.mark.parametrize("include_usage", [True, False])
def test_azure_chunks_relay_as_the_general_path_does(
        include_usage: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    flagged = {**FILTERS, "hate": {"filtered": False, "severity": "low"}}
    events = [compact({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                       "prompt_filter_results": [{"prompt_index": 0}]}),
              azure_text("Hi"), azure_text(" there"), azure_text(" you", flagged),
              azure_text(" all"), azure_text("\u00e9t\u00e9"), "[DONE]"]
    assert_same(events, include_usage)
    general = general_path_events(monkeypatch)
    relay(events, include_usage, short=True)
    assert general == [events[0], events[1], events[3], events[5], events[6]]


def test_a_content_found_twice_teaches_no_template(monkeypatch: pytest.MonkeyPatch) -> None:
    events = [text("Hi", note={"content": "Hi"}), text("Hi", note={"content": "Hi"}),
              text("Ho", note={"content": "Hi"}), "[DONE]"]
    assert_same(events, True)
    general = general_path_events(monkeypatch)
    relay(events, True, short=True)
    assert general == events


@pytest.mark.parametrize("include_usage", [True, False])
def test_text_books_what_chunks_would(include_usage: bool) -> None:
    """`text` (the Responses bridge's short path) against `chunks`."""
    events = [*transcript(usage=None, obfuscation="o1")[:-3],
              text("x", usage=None, obfuscation="o\\2"), text("y\u00e9", usage=None)]
    short, general = OpenAIStreamRelay(context(include_usage)), \
        OpenAIStreamRelay(context(include_usage))
    for data in events:
        taken = short.text(SSEEvent(data))
        expected = general.chunks(SSEEvent(data))
        if taken is None:
            assert short.chunks(SSEEvent(data)) == expected
        else:
            assert expected == [{**expected[0], "choices": [{
                "index": 0, "delta": {"content": taken}, "logprobs": None,
                "finish_reason": None}]}]
    assert (short.output_tokens, short.upstream_id, short.finish_reason) == (
        general.output_tokens, general.upstream_id, general.finish_reason)
    assert sum(OpenAIStreamRelay(context(include_usage)).text(SSEEvent(e)) is not None
               for e in events) == 0  # nothing learnt yet: `chunks` teaches it
    relay_ = OpenAIStreamRelay(context(include_usage))
    for data in events[:2]:
        relay_.feed(SSEEvent(data))
    assert relay_.text(SSEEvent(events[2])) == " world"


scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=6)
heads = st.fixed_dictionaries({}, optional={
    "id": st.sampled_from(["chatcmpl-1", "x\"y", ""]) | scalars,
    "object": st.sampled_from(["chat.completion.chunk"]) | scalars,
    "created": st.integers(0, 2**66) | scalars,
    "model": st.sampled_from(["gpt-4o", ""]) | scalars,
    "service_tier": st.sampled_from(["default", None]) | scalars,
    "system_fingerprint": st.sampled_from(["fp_1", None]) | scalars,
})
contents = st.text(alphabet=st.characters(codec="utf-8"), max_size=8) | st.sampled_from(
    ["", " tok", "a b", "[]{}", "it's", '"content":"', "Hi"])
tails = st.fixed_dictionaries({}, optional={
    "usage": st.none() | scalars, "obfuscation": st.text(max_size=4) | scalars,
    "note": st.fixed_dictionaries({"content": st.sampled_from(["Hi", " tok"])})})


def fuzz_chunk(head: dict[str, Any], content: Any, finish: Any, tail: dict[str, Any],
               dense: bool) -> str:
    return (compact if dense else json.dumps)(
        {**head, "choices": [{"index": 0, "delta": {"content": content}, "logprobs": None,
                              "finish_reason": finish}], **tail})


# A stream's chunks mostly share one head and tail (as a real stream's do), some do not.
streams = st.builds(
    lambda head, tail, parts: [fuzz_chunk(own_head or head, content, finish,
                                          tail if own_tail is None else own_tail, dense)
                               for content, finish, own_head, own_tail, dense in parts],
    heads, tails,
    st.lists(st.tuples(contents | scalars, st.sampled_from([None, None, None, "stop", 1]),
                       st.none() | st.none() | heads, st.none() | st.none() | tails,
                       st.sampled_from([True, True, True, False])),
             min_size=1, max_size=8))


@settings(max_examples=500, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(events=streams, include_usage=st.booleans())
def test_any_chunks_relay_as_the_general_path_does(events: list[str],
                                                   include_usage: bool) -> None:
    assert_same(events, include_usage)


# -- a whole read at once (relay_read): the same, without even the SSE decoder ---------------


def relay_reads(reads: list[bytes], include_usage: bool, *, short: bool) -> dict[str, Any]:
    """What a relayed stream's reads send and book; `short=False` never takes the path
    for a read that is one whole event."""
    translator, decoder = OpenAIStreamRelay(context(include_usage)), SSEDecoder()
    whole = whole_event_path(decoder, translator) if short else None
    sent: list[bytes] = []
    books = []
    failure = None
    for read in reads:
        out, error = translate_read(read, decoder, translator, whole)
        sent.append(out)
        books.append(booked(translator))
        if error is not None:
            failure = (type(error), str(error))
            break
    return {"sent": sent, "books": books, "failure": failure}


def wire(events: list[str], line_end: str = "\n", field: str = "data: ") -> list[bytes]:
    return [f"{field}{data}{line_end}{line_end}".encode() for data in events]


def assert_same_reads(reads: list[bytes], include_usage: bool) -> None:
    assert relay_reads(reads, include_usage, short=True) == \
        relay_reads(reads, include_usage, short=False)


def decoded_reads(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The reads the SSE decoder takes from now on (filled as it goes)."""
    decoded: list[bytes] = []
    original = SSEDecoder.feed

    def counted(self: SSEDecoder, chunk: bytes) -> Any:
        decoded.append(chunk)
        return original(self, chunk)

    monkeypatch.setattr(SSEDecoder, "feed", counted)
    return decoded


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("extra", [{}, {"usage": None, "obfuscation": "xK3"}])
def test_reads_of_one_usual_event_are_not_decoded(
        extra: dict[str, Any], include_usage: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = wire(transcript(**extra))
    assert_same_reads(reads, include_usage)
    decoded = decoded_reads(monkeypatch)
    sent = relay_reads(reads, include_usage, short=True)["sent"]
    # role, the first text (the template is learnt from it), finish, usage, [DONE]
    assert decoded == [reads[0], reads[1], *reads[-3:]]
    assert sent[2] == relay(transcript(**extra), include_usage, short=False)["sent"][2]


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("reads", [
    wire([text("a"), text("b"), text("c")], "\r\n"),  # CRLF: decoded
    wire([text("a"), text("b"), text("c")], "\r"),
    wire([text("a"), text("b"), text("c")], field="data:"),  # no space: decoded
    [*wire([text("a")]), b": keep-alive\n\n", *wire([text("b"), text("c")])],
    [*wire([text("a")]), b": ping\n\n" + wire([text("b")])[0], *wire([text("c")])],
    [*wire([text("a")]), b"event: x\n" + wire([text("b")])[0], *wire([text("c")])],
    [*wire([text("a")]), wire([text("b")])[0][:-1], b"\n" + wire([text("c")])[0]],
    [*wire([text("a")]), wire([text("b")])[0] + wire([text("c")])[0][:9],
     wire([text("c")])[0][9:]],
    [*wire([text("a")]), wire([text("b")])[0][:-2] + b"\r", b"\n\r\n", *wire([text("c")])],
    [*wire([text("a")]), b"data: " + text("b").encode() + b"\ndata: x\n\n"],
    [*wire([text("a")]), b"data: " + text("b").encode() + b"\n\n\n", *wire([text("c")])],
    [*wire([text("a")]), b"data: " + text("b\x7f").encode() + b"\n\n"],
    # a whole usual event while the decoder holds the start of another: one event of both
    [*wire([text("a")]), b"data: " + text("b").encode() + b"\n", *wire([text("c")])],
    [*wire([text("a")]), b"data: " + text("b").encode() + b"\r", *wire([text("c")])],
    # no event ends until its blank line
    [*wire([text("a")]), b"data: " + text("b").encode() + b"  ", b"\n\n"],
    [*wire([obfuscated(text("a"))]), b"data: " + obfuscated(text("b")).encode() + b"  ",
     b"\n\n"],
    [*wire([obfuscated(text("a"))]), b"data: " + text("b").encode()[:-1]
     + b',"obfuscation":"zz]}\n\n'],
    # a template learnt from an event on two data lines (valid JSON, joined by a line
    # break) does not take a read with that line break raw (its second line is no data)
    [b"data: " + text("a").encode().replace(b',"choices"', b',\ndata: "choices"') + b"\n\n",
     b"data: " + text("b").encode().replace(b',"choices"', b',\n"choices"') + b"\n\n"],
    [b"data: " + text("a").encode().replace(b',"logprobs"', b',\ndata: "logprobs"') + b"\n\n",
     b"data: " + text("b").encode().replace(b',"logprobs"', b',\n"logprobs"') + b"\n\n"],
    [*wire([text("a")]), b"data: " + text("b").encode()[:-1] + b"\xff}\n\n"],
    [*wire([text("a", head={**HEAD, "model": "m\ufffd"})]),  # the same, decoded
     wire([text("b")])[0].replace(b"gpt-4o-mini-2024-07-18", b"m\xff")],
])
def test_odd_reads_relay_as_the_general_path_does(reads: list[bytes],
                                                  include_usage: bool) -> None:
    assert_same_reads(reads, include_usage)
    obfuscated_reads = [read.replace(b'"finish_reason":null}]', b'"finish_reason":null}],'
                                                                  b'"obfuscation":"z"')
                        for read in reads]
    assert_same_reads(obfuscated_reads, include_usage)


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("odd", range(len(ODD_AFTER_THE_FIRST)))
def test_odd_chunks_read_whole_relay_as_the_general_path_does(
        odd: int, include_usage: bool) -> None:
    assert_same_reads(wire([text("first"), ODD_AFTER_THE_FIRST[odd], text("last")]),
                      include_usage)
    assert_same_reads(wire([obfuscated(text("first")), obfuscated(ODD_AFTER_THE_FIRST[odd]),
                            obfuscated(text("last"))]), include_usage)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(events=streams, include_usage=st.booleans(),
       cuts=st.lists(st.integers(0, 4000), max_size=6), crlf=st.booleans())
def test_any_reads_relay_as_the_general_path_does(events: list[str], include_usage: bool,
                                                  cuts: list[int], crlf: bool) -> None:
    whole = b"".join(wire([*events, "[DONE]"], "\r\n" if crlf else "\n"))
    bounds = sorted({0, len(whole), *(cut % (len(whole) + 1) for cut in cuts)})
    reads = [whole[a:b] for a, b in itertools.pairwise(bounds)]
    assert_same_reads(reads, include_usage)
    assert_same_reads(wire([*events, "[DONE]"]), include_usage)


@pytest.mark.parametrize("value", ["\\u00e9", "a\\/b", "\\\"", "x\x01", "del\x7f", "",
                                   'a","x":"b', "\u00e9"])
def test_odd_obfuscation_strings_read_whole_relay_as_the_general_path_does(value: str) -> None:
    assert_same_reads(wire([obfuscated(text("first")), obfuscated(text("second"), value),
                            obfuscated(text("third"))]), True)
