"""A fast fake LLM upstream for the benchmark: OpenAI and Anthropic wire, over HTTP/1.1.

A raw asyncio.Protocol server (uvloop when available) with every response body
precomputed, so that it costs a small fraction of what the proxy costs per request and
never is the bottleneck. It is not a test fake: it checks nothing and records nothing.

    POST /v1/chat/completions   non-stream: a 16-token answer with usage
                                stream: a role chunk, 50 content chunks, a finish chunk, a
                                usage chunk (when stream_options.include_usage) and [DONE]:
                                54 events, as OpenAI sends them
    POST /v1/completions        the same, legacy text-completion shape
    POST /v1/embeddings         one embedding (--embedding-dim floats) per input
    POST /v1/messages           Anthropic Messages; stream: message_start,
                                content_block_start, ping, content_block_delta x 50,
                                content_block_stop, message_delta, message_stop
    GET  /health                200 "ok"

The native provider kinds, streams only, each checking its credential (a wrong one is
401; see bench/native_wire.py for the wire formats and the credentials):

    POST /openai/v1/chat/completions                      Azure OpenAI (v1 API)
    POST /v1beta/models/M:streamGenerateContent?alt=sse   Gemini API
    POST /v1/projects/P/locations/L/publishers/google/models/M:streamGenerateContent?alt=sse
                                                          Vertex AI (bearer from /token)
    POST /token                                           the OAuth token endpoint (a
                                                          service account's JWT grant)
    POST /model/ID/converse-stream                        Bedrock ConverseStream (SigV4:
                                                          the access key is checked, the
                                                          signature is not)

Pacing: prefix any path with /paced/<ttft_ms>/<chunk_ms>, e.g.
/paced/100/5/v1/chat/completions: the stream's first event comes <ttft_ms> after the
response headers, and each following event <chunk_ms> after the one before (the finish,
usage and [DONE] events go out together after the last content chunk, as real upstreams
do). A paced non-stream answer comes <ttft_ms> late.

Run: python bench/upstream.py --port 9100 [--host 127.0.0.1] [--chunks 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

try:
    import orjson

    def _loads(data: bytes) -> Any:
        return orjson.loads(data)

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)
except ImportError:  # pragma: no cover - orjson is a dependency of the proxy
    def _loads(data: bytes) -> Any:
        return json.loads(data)

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script

from bench.native_wire import (
    AWS_ACCESS_KEY,
    AZURE_KEY,
    EVENT_STREAM,
    GEMINI_KEY,
    VERTEX_TOKEN,
    azure_stream_events,
    converse_stream_frames,
    gemini_stream_events,
    token_answer,
)

CREATED = 1735689600
ANSWER_16 = ("The capital of France is Paris, a city known for art, food and the "
             "Eiffel Tower.")  # 16 tokens for the usage below
PROMPT_TOKENS = 62
ANSWER_TOKENS = 16
MAX_HEAD = 65536


# --------------------------------------------------------------------------- bodies

def _http(status: str, ctype: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: " + ctype
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + extra
            + b"\r\n" + body)


SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
CHUNK_END = b"0\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _usage(completion: int) -> dict[str, Any]:
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion,
            "total_tokens": PROMPT_TOKENS + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0}}


def openai_nonstream(model: str, chat: bool) -> bytes:
    if chat:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant",
                                                          "content": ANSWER_16,
                                                          "refusal": None,
                                                          "annotations": []},
                                  "logprobs": None, "finish_reason": "stop"}
    else:
        choice = {"index": 0, "text": ANSWER_16, "logprobs": None, "finish_reason": "stop"}
    body = {"id": "chatcmpl-bench0000000000000000000000", "created": CREATED,
            "object": "chat.completion" if chat else "text_completion", "model": model,
            "choices": [choice], "usage": _usage(ANSWER_TOKENS),
            "service_tier": "default", "system_fingerprint": "fp_bench00"}
    return _dumps(body)


def openai_stream_events(model: str, chat: bool, usage: bool, chunks: int) -> list[bytes]:
    base = {"id": "chatcmpl-bench0000000000000000000000",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": CREATED, "model": model, "service_tier": "default",
            "system_fingerprint": "fp_bench00"}

    def event(choices: list[Any], u: Any = None) -> bytes:
        data = {**base, "choices": choices}
        if usage:
            data["usage"] = u
        return b"data: " + _dumps(data) + b"\n\n"

    events = []
    if chat:  # OpenAI opens every chat stream with a role-only chunk
        events.append(event([{"index": 0, "delta": {"role": "assistant", "content": "",
                                                     "refusal": None},
                              "logprobs": None, "finish_reason": None}]))
    for i in range(chunks):
        text = f" tok{i}"
        if chat:
            events.append(event([{"index": 0, "delta": {"content": text}, "logprobs": None,
                                  "finish_reason": None}]))
        else:
            events.append(event([{"index": 0, "text": text, "logprobs": None,
                                  "finish_reason": None}]))
    events.append(event([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
                        if chat else [{"index": 0, "text": "", "logprobs": None,
                                       "finish_reason": "stop"}]))
    if usage:
        events.append(event([], _usage(chunks)))
    events.append(b"data: [DONE]\n\n")
    return events


def embeddings_body(model: str, n: int, dim: int) -> bytes:
    vec = [round(((i * 7919) % 2000 - 1000) / 31337.0, 8) for i in range(dim)]
    data = [{"object": "embedding", "index": i, "embedding": vec} for i in range(n)]
    return _dumps({"object": "list", "data": data, "model": model,
                   "usage": {"prompt_tokens": 8 * n, "total_tokens": 8 * n}})


def messages_nonstream(model: str) -> bytes:
    return _dumps({"id": "msg_bench000000000000000000", "type": "message", "role": "assistant",
                   "model": model, "content": [{"type": "text", "text": ANSWER_16}],
                   "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": ANSWER_TOKENS,
                             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}})


def messages_stream_events(model: str, chunks: int) -> list[bytes]:
    def ev(name: str, data: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + _dumps(data) + b"\n\n"

    events = [
        ev("message_start", {"type": "message_start", "message": {
            "id": "msg_bench000000000000000000", "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": PROMPT_TOKENS, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": 1}}}),
        ev("content_block_start", {"type": "content_block_start", "index": 0,
                                   "content_block": {"type": "text", "text": ""}}),
        ev("ping", {"type": "ping"}),
    ]
    for i in range(chunks):
        events.append(ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                 "delta": {"type": "text_delta",
                                                           "text": f" tok{i}"}}))
    events.append(ev("content_block_stop", {"type": "content_block_stop", "index": 0}))
    events.append(ev("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": "end_turn",
                                                 "stop_sequence": None},
                                       "usage": {"output_tokens": chunks}}))
    events.append(ev("message_stop", {"type": "message_stop"}))
    return events


NOT_FOUND = _http("404 Not Found", b"application/json",
                  b'{"error":{"message":"not found","type":"invalid_request_error",'
                  b'"code":"not_found","param":null}}')
BAD_REQUEST = _http("400 Bad Request", b"application/json",
                    b'{"error":{"message":"bad request body","type":"invalid_request_error",'
                    b'"code":"invalid_json","param":null}}')
HEALTH = _http("200 OK", b"text/plain", b"ok")
UNAUTHORIZED = _http("401 Unauthorized", b"application/json",
                     b'{"error":{"code":401,"message":"bad credentials","status":'
                     b'"UNAUTHENTICATED"}}')
TOKEN = _http("200 OK", b"application/json", token_answer())
EVENT_STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: " + EVENT_STREAM
                     + b"\r\nx-amzn-RequestId: 6b4ba1b4-0000-4000-8000-benchbench00"
                     b"\r\nTransfer-Encoding: chunked\r\n\r\n")
# Each native kind's route: (kind, path prefix, path suffix, the request head must hold
# this credential; head and path are lower-cased)
NATIVE = (
    ("azure", "/openai/v1/chat/completions", "", b"\r\napi-key: " + AZURE_KEY.lower().encode()),
    ("gemini", "/v1beta/models/", ":streamgeneratecontent",
     b"\r\nx-goog-api-key: " + GEMINI_KEY.lower().encode()),
    ("vertex", "/v1/projects/", ":streamgeneratecontent",
     b"\r\nauthorization: bearer " + VERTEX_TOKEN.lower().encode()),
    ("bedrock", "/model/", "/converse-stream",
     b"\r\nauthorization: aws4-hmac-sha256 credential=" + AWS_ACCESS_KEY.lower().encode()
     + b"/"),
)


class Bodies:
    """Every response, built once per (kind, model, flags) and cached as wire bytes."""

    def __init__(self, chunks: int, dim: int) -> None:
        self.chunks = chunks
        self.dim = dim
        self.cache: dict[tuple[Any, ...], Any] = {}

    def get(self, key: tuple[Any, ...]) -> Any:
        hit = self.cache.get(key)
        if hit is None:
            hit = self.cache[key] = self._build(key)
        return hit

    def _build(self, key: tuple[Any, ...]) -> Any:
        kind, model, *flags = key
        if kind == "chat" or kind == "completions":
            chat = kind == "chat"
            stream, usage = flags
            if not stream:
                return _http("200 OK", b"application/json", openai_nonstream(model, chat))
            return self._stream(openai_stream_events(model, chat, usage, self.chunks),
                                3 if usage else 2)
        if kind == "embeddings":
            return _http("200 OK", b"application/json", embeddings_body(model, flags[0],
                                                                       self.dim))
        if kind == "messages":
            if not flags[0]:
                return _http("200 OK", b"application/json", messages_nonstream(model))
            return self._stream(messages_stream_events(model, self.chunks), 3)
        if kind == "azure":
            return self._stream(azure_stream_events(
                model, self.chunks, _usage(self.chunks) if flags[0] else None),
                3 if flags[0] else 2)
        if kind in ("gemini", "vertex"):
            return self._stream(gemini_stream_events(model, self.chunks, PROMPT_TOKENS,
                                                     vertex=kind == "vertex"), 1)
        if kind == "bedrock":
            return self._stream(converse_stream_frames(self.chunks, PROMPT_TOKENS), 3,
                                EVENT_STREAM_HEAD)
        raise KeyError(kind)

    @staticmethod
    def _stream(events: list[bytes], n_tail: int, head: bytes = SSE_HEAD
                ) -> tuple[bytes, bytes, list[bytes], list[bytes]]:
        """(the whole response in one buffer, then for pacing: the response head, the
        chunk-framed content events, and the tail events that go out together at the end)"""
        framed = [_chunk(e) for e in events]
        return (head + b"".join(framed) + CHUNK_END, head, framed[:-n_tail],
                framed[-n_tail:])


# --------------------------------------------------------------------------- server

class UpstreamProtocol(asyncio.Protocol):
    __slots__ = ("bodies", "buf", "busy", "closed", "task", "transport")

    def __init__(self, bodies: Bodies) -> None:
        self.bodies = bodies
        self.buf = bytearray()
        self.busy = False
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._process()

    def _process(self) -> None:
        buf = self.buf
        transport = self.transport
        assert transport is not None
        while buf and not self.busy:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    transport.close()
                return
            head = bytes(buf[:end]).lower()
            start = end + 4
            close = b"\r\nconnection: close" in head
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                length = int(head[i + 17: j if j >= 0 else len(head)])
                if len(buf) < start + length:
                    return
                body = bytes(buf[start:start + length])
                consumed = start + length
            elif b"\r\ntransfer-encoding: chunked" in head:
                got = _dechunk(buf, start)
                if got is None:
                    return
                body, consumed = got
            else:
                body, consumed = b"", start
            del buf[:consumed]
            sp1 = head.find(b" ")
            sp2 = head.find(b" ", sp1 + 1)
            method = head[:sp1]
            path = head[sp1 + 1:sp2].split(b"?", 1)[0].decode("latin-1")
            self._respond(method, path, head, body)
            if close:
                transport.close()
                return

    def _respond(self, method: bytes, path: str, head: bytes, body: bytes) -> None:
        transport = self.transport
        assert transport is not None
        ttft_ms = chunk_ms = 0.0
        if path.startswith("/paced/"):
            try:
                _, _, a, b, rest = path.split("/", 4)
                ttft_ms, chunk_ms, path = float(a), float(b), "/" + rest
            except ValueError:
                transport.write(NOT_FOUND)
                return
        if method == b"get":
            transport.write(HEALTH if path in ("/health", "/") else NOT_FOUND)
            return
        if path == "/token":
            transport.write(TOKEN)
            return
        kind = _KINDS.get(path)
        model = ""
        if kind is None:
            for name, prefix, suffix, credential in NATIVE:
                if path.startswith(prefix) and path.endswith(suffix):
                    if credential not in head:
                        transport.write(UNAUTHORIZED)
                        return
                    kind, model = name, _native_model(path, prefix, suffix)
                    break
            else:
                transport.write(NOT_FOUND)
                return
        try:
            req = _loads(body)
            model = model or str(req.get("model", "bench"))
        except Exception:
            transport.write(BAD_REQUEST)
            return
        if kind in ("gemini", "vertex", "bedrock"):
            key: tuple[Any, ...] = (kind, model)
        elif kind == "azure":
            opts = req.get("stream_options")
            key = (kind, model, isinstance(opts, dict) and opts.get("include_usage") is True)
        elif kind == "embeddings":
            inp = req.get("input")
            key = (kind, model, len(inp) if isinstance(inp, list)
                                    and inp and not isinstance(inp[0], int) else 1)
        elif kind == "messages":
            key = (kind, model, req.get("stream") is True)
        else:
            stream = req.get("stream") is True
            opts = req.get("stream_options")
            usage = stream and isinstance(opts, dict) and opts.get("include_usage") is True
            key = (kind, model, stream, usage)
        out = self.bodies.get(key)
        if not (ttft_ms or chunk_ms):
            transport.write(out if isinstance(out, bytes) else out[0])
            return
        self.busy = True
        self.task = asyncio.ensure_future(self._paced(out, ttft_ms / 1000, chunk_ms / 1000))

    async def _paced(self, out: Any, ttft: float, gap: float) -> None:
        """Events at fixed offsets from the request's arrival (ttft, ttft + gap, ...), not
        after relative sleeps, so that timer jitter does not add up over a stream."""
        transport = self.transport
        assert transport is not None
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def until(offset: float) -> None:
            delay = t0 + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

        try:
            if isinstance(out, bytes):  # non-stream: late, whole
                await until(ttft)
                transport.write(out)
            else:
                _, response_head, head, rest = out
                transport.write(response_head)
                # content events one by one; the tail (finish/usage/[DONE] or
                # content_block_stop/message_delta/message_stop) in one go
                for i, part in enumerate(head):
                    await until(ttft + i * gap)
                    transport.write(part)
                await until(ttft + len(head) * gap)
                transport.write(b"".join(rest) + CHUNK_END)
        except asyncio.CancelledError:
            return
        finally:
            self.task = None
            self.busy = False
        if not self.closed and self.buf:
            self._process()


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    out = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", pos - 2)
            if end < 0:
                return None
            return bytes(out), end + 4
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos:pos + size]
        pos += size + 2


def _native_model(path: str, prefix: str, suffix: str) -> str:
    """The model of a native route's path: Bedrock's model id, or Google's model name."""
    inner = path[len(prefix):len(path) - len(suffix)]
    return inner.rsplit("/", 1)[-1]


_KINDS = {"/v1/chat/completions": "chat", "/v1/completions": "completions",
          "/v1/embeddings": "embeddings", "/v1/messages": "messages",
          "/chat/completions": "chat", "/completions": "completions",
          "/embeddings": "embeddings", "/messages": "messages"}


async def serve(host: str, port: int, chunks: int, dim: int) -> None:
    loop = asyncio.get_running_loop()
    bodies = Bodies(chunks, dim)
    server = await loop.create_server(lambda: UpstreamProtocol(bodies), host, port,
                                      backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"bench upstream listening on http://{host}:{port}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9100)
    ap.add_argument("--chunks", type=int, default=50, help="content events per stream")
    ap.add_argument("--embedding-dim", type=int, default=1536)
    args = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.host, args.port, args.chunks, args.embedding_dim))


if __name__ == "__main__":
    main()
