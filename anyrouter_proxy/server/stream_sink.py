"""A relayed stream's bytes onto the client's connection, with as little as possible per
event: the first write goes through aiohttp (the headers leave with it, in one write),
every later one straight onto the transport in the answer's framing (chunked, or raw for
an HTTP/1.0 client), awaiting only while the client is behind (the transport above its
high-water mark: when server/protocol.py's write timeout runs), and the end through
aiohttp again (the last chunk and the terminator in one write, its state closed as usual).
A request served on the lean lane (server/lane.py) gets the lane's sink instead.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.http_writer import StreamWriter

from ..stream_session import Sink
from .lane_exchange import LaneRequest


class SSEResponse(web.StreamResponse):
    """Its headers leave with the first event, in one write (as web.Response does with
    its body): every stream starts with an event or a keep-alive comment right away."""

    _send_headers_immediately = False
    begun = False  # on the lane, where aiohttp never prepares it

    @property
    def prepared(self) -> bool:
        return self.begun or super().prepared


async def open_stream(request: web.Request, response: SSEResponse) -> Sink:
    """Commit to `response` (decorated already): its head leaves with the first bytes."""
    if isinstance(request, LaneRequest):
        response.begun = True
        return await request.stream(response)
    writer = await response.prepare(request)
    assert isinstance(writer, StreamWriter)
    return StreamSink(response, writer)


class StreamSink:
    __slots__ = ("_chunked", "_response", "_writer")

    def __init__(self, response: web.StreamResponse, writer: StreamWriter) -> None:
        self._response = response
        self._writer = writer  # aiohttp's writer of this answer (never compressed)
        self._chunked = writer.chunked

    async def write(self, data: bytes) -> None:
        """The first bytes: the headers go with them."""
        await self._response.write(data)

    def send(self, data: bytes) -> bool:
        """Put `data` on the wire now (after `write`); True when the client is behind and
        `drain` is due. Raises ConnectionResetError once the client has gone, as aiohttp's
        own write does."""
        writer = self._writer
        protocol = writer.protocol
        if not data:  # an empty chunk is the last one: it would end the body here
            return protocol.writing_paused
        transport = protocol.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        writer.output_size += len(data)
        return protocol.writing_paused

    async def drain(self) -> None:
        """Wait until the client takes what was sent (ConnectionError if it goes)."""
        await self._writer.drain()

    async def end(self, data: bytes) -> None:
        await self._response.write_eof(data)
