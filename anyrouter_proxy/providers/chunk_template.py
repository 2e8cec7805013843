"""Relaying the usual chunk of an OpenAI-compatible chat stream without parsing it.

Nearly every chunk of a stream is the previous one with another piece of text: the same
id, model and other fields, one choice whose delta is `{"content": ...}`. Once the
general path has parsed, booked and re-encoded one such chunk, `ChunkTemplate` holds its
upstream text around the content string and the relayed text around it. A later chunk
that is the same upstream text around another *plain* string (printable ASCII without a
quote or backslash: a JSON string that is its own encoding) parses to the same object with
that content, so it is relayed as the same relayed text around it: byte for byte what the
general path would write, without parsing or encoding.

OpenAI ends each chunk with a random `obfuscation` string; a template learnt from a chunk
ending so takes any plain value there (it is copied as is).

`relay_read` does the same for a whole upstream read that is one such event (`data: `,
the chunk, a blank line), on bytes: not even the event is decoded.

`TextChunk` is the other direction: the chat chunk of one piece of text for a relay that
translates another dialect, encoded without building it.
"""

from __future__ import annotations

import orjson

_CONTENT = '"content":"'
_OBFUSCATION = ',"obfuscation":"'
_WIRE_OBFUSCATION = _OBFUSCATION.encode()
# Printable ASCII but the quote and the backslash: deleting these from a plain string
# leaves nothing.
_PLAIN_BYTES = bytes(b for b in range(0x20, 0x7F) if b not in b'"\\')


def plain(text: str) -> bool:
    """A string whose JSON encoding is itself between quotes."""
    return (text.isascii() and text.isprintable() and text.find('"') == -1
            and text.find("\\") == -1)


class ChunkTemplate:
    """An upstream chunk's text and its relayed text, each split around the content."""

    __slots__ = ("_prefix", "_relayed_wire", "_suffix", "_varying", "_wire",
                 "relayed_prefix", "relayed_suffix", "tail")

    def __init__(self, prefix: str, suffix: str, relayed_prefix: str, relayed_suffix: str,
                 varying: bool) -> None:
        self._prefix = prefix
        self._suffix = suffix  # from the content's closing quote (without the obfuscation)
        self._varying = varying  # the upstream's chunks end with an obfuscation string
        self.relayed_prefix = relayed_prefix
        self.relayed_suffix = relayed_suffix
        self.tail = ""  # the obfuscation member of the chunk `match` last took, and its end
        # The same on the wire: the upstream's read (`data: `, prefix; suffix, then the
        # blank line unless an obfuscation member comes first) and ours. Only for a chunk
        # that came on one line (decoded data has no CR: the decoder made them LFs).
        one_line = prefix.find("\n") == -1 and suffix.find("\n") == -1
        self._wire = (("data: " + prefix).encode(),
                      (suffix if varying else suffix + "\n\n").encode()) if one_line else None
        self._relayed_wire = (relayed_prefix.encode(), relayed_suffix.encode())

    @classmethod
    def learn(cls, raw: str, content: str, relayed: str) -> ChunkTemplate | None:
        """From an upstream chunk `raw` whose delta is `{"content": content}` (its only
        varying part) and the JSON relayed for it; None when either is not made for it
        (the content not plain, or found elsewhere in the chunk)."""
        token = _CONTENT + content + '"'
        if not plain(content) or raw.count(token) != 1 or relayed.count(token) != 1:
            return None
        # Outside strings, `"content":"` can only be a key and its value's opening quote;
        # found once, it is the delta's.
        at = raw.index(token) + len(_CONTENT)
        relayed_at = relayed.index(token) + len(_CONTENT)
        prefix, suffix = raw[:at], raw[at + len(content):]
        relayed_prefix, relayed_suffix = relayed[:relayed_at], relayed[relayed_at + len(content):]
        varying = False
        last = suffix.rfind(_OBFUSCATION)
        if last != -1 and suffix.endswith('"}') and plain(suffix[last + len(_OBFUSCATION):-2]):
            tail = suffix[last:]  # the top object's last member: it ends the document
            if relayed_suffix.endswith(tail):
                suffix, relayed_suffix = suffix[:last], relayed_suffix[:-len(tail)]
                varying = True
        return cls(prefix, suffix, "data: " + relayed_prefix,
                   relayed_suffix if varying else relayed_suffix + "\n\n", varying)

    def match(self, data: str) -> str | None:
        """The content of a chunk that is this template around another plain string
        (`tail` then holds its obfuscation member and end, if any); else None."""
        prefix = self._prefix
        if not data.startswith(prefix):
            return None
        start = len(prefix)
        end = data.find('"', start)
        content = data[start:end]
        if (end == -1 or not content.isascii() or not content.isprintable()
                or content.find("\\") != -1):  # plain(), inline: the quote ends it already
            return None
        suffix = self._suffix
        if not self._varying:
            return content if len(data) - end == len(suffix) and data.endswith(suffix) \
                else None
        tail = data[end + len(suffix):]
        if (data.startswith(suffix, end) and tail.startswith(_OBFUSCATION)
                and tail.endswith('"}') and plain(tail[len(_OBFUSCATION):-2])):
            self.tail = tail + "\n\n"
            return content
        return None

    def relay_read(self, read: bytes) -> tuple[bytes, int] | None:
        """For a read that is exactly one event of this template around a plain string:
        what `match` then `relayed` make of its decoded data, and the string's length;
        else None. No byte of such a read is a line break but the blank line's, so it is
        the one event the SSE decoder would make of it."""
        wire = self._wire
        if wire is None or not read.startswith(wire[0]) or not read.endswith(b"\n\n"):
            return None
        start = len(wire[0])
        end = read.find(b'"', start)
        content = read[start:end]
        if end == -1 or content.translate(None, _PLAIN_BYTES):  # something not plain
            return None
        suffix = wire[1]
        relayed_prefix, relayed_suffix = self._relayed_wire
        if not self._varying:
            if len(read) - end == len(suffix) and read.endswith(suffix):
                return relayed_prefix + content + relayed_suffix, len(content)
            return None
        tail = read[end + len(suffix):-2]
        if (read.startswith(suffix, end) and tail.startswith(_WIRE_OBFUSCATION)
                and tail.endswith(b'"}')
                and not tail[len(_WIRE_OBFUSCATION):-2].translate(None, _PLAIN_BYTES)):
            return relayed_prefix + content + relayed_suffix + tail + b"\n\n", len(content)
        return None

    def relayed(self, content: str) -> bytes:
        """The relayed event for the content `match` returned."""
        return (self.relayed_prefix + content + self.relayed_suffix + self.tail).encode()


class TextChunk:
    """`data: ` and the chat chunk {id, object, created, model, choices: [{index: 0, delta:
    {content: text}, logprobs: null, finish_reason: null}], usage: null (when the client
    asked for usage)} as orjson encodes that dict, for any text."""

    __slots__ = ("_prefix", "_suffix")

    def __init__(self, *, gen_id: str, model: str, created: int, include_usage: bool) -> None:
        self._prefix = (b'data: {"id":' + orjson.dumps(gen_id)
                        + b',"object":"chat.completion.chunk","created":' + orjson.dumps(created)
                        + b',"model":' + orjson.dumps(model)
                        + b',"choices":[{"index":0,"delta":{"content":')
        self._suffix = (b'},"logprobs":null,"finish_reason":null}]'
                        + (b',"usage":null}\n\n' if include_usage else b"}\n\n"))

    def encode(self, text: str) -> bytes:
        return self._prefix + orjson.dumps(text) + self._suffix
