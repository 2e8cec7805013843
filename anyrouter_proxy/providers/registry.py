"""Which exchange serves a (client endpoint, provider kind) pair."""

from __future__ import annotations

from ..types import CHAT, COMPLETIONS, EMBEDDINGS
from .base import Exchange
from .openai import OpenAIPassthrough

_OPENAI_WIRE = {endpoint: OpenAIPassthrough(endpoint) for endpoint in (CHAT, COMPLETIONS,
                                                                       EMBEDDINGS)}
_EXCHANGES: dict[tuple[str, str], Exchange] = {
    **{(endpoint, "openai"): exchange for endpoint, exchange in _OPENAI_WIRE.items()},
    **{(endpoint, "mock"): exchange for endpoint, exchange in _OPENAI_WIRE.items()},
}


def exchange_for(endpoint: str, kind: str) -> Exchange | None:
    """None when this kind of provider cannot serve the endpoint (routing skips it)."""
    return _EXCHANGES.get((endpoint, kind))
