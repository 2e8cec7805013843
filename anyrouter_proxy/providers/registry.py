"""Which exchange serves a (client endpoint, provider kind) pair."""

from __future__ import annotations

from ..sse import EventDecoder, SSEDecoder
from ..types import CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES, RESPONSES
from .anthropic import AnthropicPassthrough, AnthropicTokenCounter, OpenAIViaAnthropic
from .aws_eventstream import EventStreamDecoder
from .azure import AZURE_ADDRESS
from .base import Exchange, TokenCounter
from .bedrock import ChatViaBedrock, MessagesViaBedrock
from .bedrock_embeddings import BedrockEmbeddings
from .gemini import GeminiChat, GeminiMessages, GeminiTokenCounter
from .gemini_embeddings import GeminiEmbeddings
from .openai import OPENAI_ADDRESS, AnthropicViaOpenAI, OpenAIPassthrough
from .responses import ResponsesViaChat
from .responses_native import ResponsesPassthrough

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
    EMBEDDINGS: BedrockEmbeddings(),
    MESSAGES: MessagesViaBedrock(),
}
_AZURE_WIRE: dict[str, Exchange] = {
    CHAT: OpenAIPassthrough(CHAT, AZURE_ADDRESS),
    COMPLETIONS: OpenAIPassthrough(COMPLETIONS, AZURE_ADDRESS),
    EMBEDDINGS: OpenAIPassthrough(EMBEDDINGS, AZURE_ADDRESS),
    MESSAGES: AnthropicViaOpenAI(AZURE_ADDRESS),
}
_GEMINI_WIRE: dict[str, Exchange] = {  # Google AI Studio and Vertex AI alike
    CHAT: GeminiChat(),
    EMBEDDINGS: GeminiEmbeddings(),
    MESSAGES: GeminiMessages(),
}
_BY_KIND = {"openai": _OPENAI_WIRE, "mock": _OPENAI_WIRE, "anthropic": _ANTHROPIC_WIRE,
            "bedrock": _BEDROCK_WIRE, "azure": _AZURE_WIRE, "gemini": _GEMINI_WIRE,
            "vertex": _GEMINI_WIRE}
# Kinds whose streams are not SSE.
_STREAM_DECODERS: dict[str, type[EventDecoder]] = {"bedrock": EventStreamDecoder}
_COUNTERS: dict[str, TokenCounter] = {"anthropic": AnthropicTokenCounter(),
                                      "gemini": GeminiTokenCounter(),
                                      "vertex": GeminiTokenCounter()}
# Kinds whose chat exchange takes Anthropic thinking blocks back (signed reasoning).
SIGNED_THINKING_KINDS = frozenset({"anthropic"})
NATIVE_RESPONSES_KINDS = frozenset({"openai"})
_NATIVE_RESPONSES = ResponsesPassthrough(OPENAI_ADDRESS)
_RESPONSES_BRIDGES: dict[str, Exchange] = {}


def exchange_for(endpoint: str, kind: str, *, native_responses: bool = False
                 ) -> Exchange | None:
    """None when this kind of provider cannot serve the endpoint (routing skips it).
    Responses: passed through where the provider has `native_responses`, else through
    the kind's own chat exchange (any kind that serves chat serves Responses)."""
    if endpoint == RESPONSES:
        if native_responses and kind in NATIVE_RESPONSES_KINDS:
            return _NATIVE_RESPONSES
        return _responses_bridge(kind)
    return _BY_KIND.get(kind, {}).get(endpoint)


def _responses_bridge(kind: str) -> Exchange | None:
    bridge = _RESPONSES_BRIDGES.get(kind)
    if bridge is None:
        chat = exchange_for(CHAT, kind)
        if chat is None:
            return None
        bridge = _RESPONSES_BRIDGES[kind] = ResponsesViaChat(
            chat, signed_thinking=kind in SIGNED_THINKING_KINDS)
    return bridge


def stream_decoder(kind: str) -> EventDecoder:
    """A fresh decoder for the framing of this kind's streams (SSE unless it says)."""
    return _STREAM_DECODERS.get(kind, SSEDecoder)()


def token_counter_for(kind: str) -> TokenCounter | None:
    """None when this kind of provider cannot count tokens (the estimate is given)."""
    return _COUNTERS.get(kind)
