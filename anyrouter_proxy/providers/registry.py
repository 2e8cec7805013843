"""Which exchange serves a (client endpoint, provider kind) pair."""

from __future__ import annotations

from ..sse import EventDecoder, SSEDecoder
from ..types import CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES
from .anthropic import AnthropicPassthrough, OpenAIViaAnthropic
from .aws_eventstream import EventStreamDecoder
from .azure import AZURE_ADDRESS
from .base import Exchange
from .bedrock import ChatViaBedrock, MessagesViaBedrock
from .openai import AnthropicViaOpenAI, OpenAIPassthrough

_OPENAI_WIRE: dict[str, Exchange] = {
    CHAT: OpenAIPassthrough(CHAT),
    COMPLETIONS: OpenAIPassthrough(COMPLETIONS),
    EMBEDDINGS: OpenAIPassthrough(EMBEDDINGS),
    MESSAGES: AnthropicViaOpenAI(),
}
_ANTHROPIC_WIRE: dict[str, Exchange] = {
    CHAT: OpenAIViaAnthropic(),
    MESSAGES: AnthropicPassthrough(),
}
_BEDROCK_WIRE: dict[str, Exchange] = {
    CHAT: ChatViaBedrock(),
    MESSAGES: MessagesViaBedrock(),
}
_AZURE_WIRE: dict[str, Exchange] = {
    CHAT: OpenAIPassthrough(CHAT, AZURE_ADDRESS),
    COMPLETIONS: OpenAIPassthrough(COMPLETIONS, AZURE_ADDRESS),
    EMBEDDINGS: OpenAIPassthrough(EMBEDDINGS, AZURE_ADDRESS),
    MESSAGES: AnthropicViaOpenAI(AZURE_ADDRESS),
}
_BY_KIND = {"openai": _OPENAI_WIRE, "mock": _OPENAI_WIRE, "anthropic": _ANTHROPIC_WIRE,
            "bedrock": _BEDROCK_WIRE, "azure": _AZURE_WIRE}
# Kinds whose streams are not SSE.
_STREAM_DECODERS: dict[str, type[EventDecoder]] = {"bedrock": EventStreamDecoder}


def exchange_for(endpoint: str, kind: str) -> Exchange | None:
    """None when this kind of provider cannot serve the endpoint (routing skips it)."""
    return _BY_KIND.get(kind, {}).get(endpoint)


def stream_decoder(kind: str) -> EventDecoder:
    """A fresh decoder for the framing of this kind's streams (SSE unless it says)."""
    return _STREAM_DECODERS.get(kind, SSEDecoder)()
