"""Shared records that cross module boundaries (small leaf module)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

CANCELLED = "cancelled"  # an attempt the client left while the upstream had it
DROPPED = "dropped"  # a send on a reused connection that closed unanswered, sent again


@dataclass(slots=True)
class Attempt:
    """One try of one route: `{"provider", "status", "latency_ms"}`."""

    provider: str
    status: int | str  # HTTP status, or an error class such as "timeout"
    latency_ms: float

    def as_dict(self) -> dict[str, object]:
        return {"provider": self.provider, "status": self.status,
                "latency_ms": round(self.latency_ms, 1)}


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0
    web_search_requests: int = 0  # server-side web searches the provider ran (billed each)
    source: str = "provider"  # PROVIDER | PARTIAL | ESTIMATED | NONE


# Usage.source: where a usage row's counts come from.
PROVIDER = "provider"  # the provider's own final usage
PARTIAL = "partial"  # the provider reported the input only; the output is estimated
ESTIMATED = "estimated"  # no usage from the provider: prompt and output estimated
NONE = "none"  # no answer, nothing charged


@dataclass(slots=True)
class GenerationRecord:
    """One row of the usage log: one proxied request (batch items included)."""

    id: str
    created_at: float  # Unix seconds
    key_name: str
    endpoint: str
    model: str
    trace_id: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    upstream_id: str | None = None
    streamed: bool = False
    cancelled: bool = False
    finish_reason: str | None = None
    status_code: int = 200
    error_code: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost: float = 0.0  # what the key is charged
    operator_cost: float = 0.0  # estimated upstream cost of abandoned attempts, not charged
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    generation_time_ms: float | None = None
    attempts: list[Attempt] = field(default_factory=list)
    # The wildcard entry (`groq/*`) that served `model`, if one did: the metrics label,
    # so that ids a client makes up under a wildcard do not multiply the series.
    wildcard: str | None = None


class Interrupted(NamedTuple):
    """A request a process had in flight when it died, charged by the next start (its
    usage row: status `interrupted`, cost the amount it had reserved)."""

    gen_id: str
    key_name: str
    cost: float


# The proxied endpoints, by the client's dialect.
CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES = "chat", "completions", "embeddings", "messages"
RESPONSES = "responses"
ENDPOINT_PATHS = {
    CHAT: "/chat/completions",
    COMPLETIONS: "/completions",
    EMBEDDINGS: "/embeddings",
    MESSAGES: "/messages",
    RESPONSES: "/responses",
}
