"""Which exchange serves a (client endpoint, provider kind) pair."""

from __future__ import annotations

from ..types import CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES
from .anthropic import AnthropicPassthrough, OpenAIViaAnthropic
from .azure import AZURE_ADDRESS
from .base import Exchange
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
_AZURE_WIRE: dict[str, Exchange] = {
    CHAT: OpenAIPassthrough(CHAT, AZURE_ADDRESS),
    COMPLETIONS: OpenAIPassthrough(COMPLETIONS, AZURE_ADDRESS),
    EMBEDDINGS: OpenAIPassthrough(EMBEDDINGS, AZURE_ADDRESS),
    MESSAGES: AnthropicViaOpenAI(AZURE_ADDRESS),
}
_BY_KIND = {"openai": _OPENAI_WIRE, "mock": _OPENAI_WIRE, "anthropic": _ANTHROPIC_WIRE,
            "azure": _AZURE_WIRE}


def exchange_for(endpoint: str, kind: str) -> Exchange | None:
    """None when this kind of provider cannot serve the endpoint (routing skips it)."""
    return _BY_KIND.get(kind, {}).get(endpoint)
