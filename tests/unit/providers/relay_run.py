"""Running a stream relay over events, for the tests that hold a short path to its general
one: what it sends, what it has booked after every event (usage is read at any time: the
/generation endpoint), and the failure it stopped at."""

from __future__ import annotations

from typing import Any

from anyrouter_proxy.errors import ProxyError
from anyrouter_proxy.sse import SSEEvent


def relay_run(relay: Any, events: list[SSEEvent]) -> dict[str, Any]:
    sent: list[bytes] = []
    books: list[tuple[Any, ...]] = []
    failure = None
    try:
        for event in events:
            sent.extend(relay.feed(event))
            books.append(booked(relay))
        sent.extend(relay.finish())
    except ProxyError as exc:
        failure = (type(exc), str(exc))
    return {"sent": sent, "failure": failure, "books": books, "end": booked(relay)}


def booked(relay: Any) -> tuple[Any, ...]:
    usage = relay.usage
    return (relay.output_tokens, relay.upstream_id, relay.finish_reason,
            None if usage is None else (usage.prompt_tokens, usage.completion_tokens,
                                        usage.source))
