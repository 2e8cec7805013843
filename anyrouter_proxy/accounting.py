"""The books of one proxied request: its limits admission, credit reservation and usage
row, closed exactly once however the request ends (success, error, cancel)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from .config.model import Pricing
from .credits import request_cost
from .errors import ProxyError
from .quota import Held, Reserved
from .types import GenerationRecord, Usage

if TYPE_CHECKING:
    from .metrics import Metrics
    from .usage_store import UsageStore


class Ledger:
    """Where closed books go: the usage log and the metrics."""

    def __init__(self, store: UsageStore, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics


class Books:
    __slots__ = ("_closed", "_ledger", "admission", "min_web_searches", "model_admission",
                 "pricing", "prompt_estimate", "provider_admission", "record", "reservation",
                 "started", "token_estimate")

    def __init__(self, ledger: Ledger, record: GenerationRecord, pricing: Pricing,
                 admission: Held, reservation: Reserved,
                 prompt_estimate: int, token_estimate: int = 0) -> None:
        self._ledger = ledger
        self._closed = False
        self.record = record
        self.pricing = pricing  # of the route that answered, once one has
        self.admission = admission
        self.reservation = reservation
        self.provider_admission: Held | None = None
        # A fallback model's own model_limits, held for the attempt that answered.
        self.model_admission: Held | None = None
        self.prompt_estimate = prompt_estimate
        self.token_estimate = token_estimate  # what `admission` took from the token limits
        self.min_web_searches = 0  # searches charged to an answer that reports fewer
        self.started = time.perf_counter()

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def first_token(self) -> None:
        if self.record.ttft_ms is None:
            self.record.ttft_ms = self.elapsed_ms()

    def close(self, *, status: int = 200, usage: Usage | None = None,
              error: ProxyError | None = None, cancelled: bool = False,
              completion_estimate: int = 0) -> float:
        """Settle everything and queue the usage row; returns the cost. Idempotent."""
        if self._closed:
            return self.record.cost
        self._closed = True
        rec = self.record
        answered = rec.attempts and (rec.ttft_ms is not None
                                     or (error is None and not cancelled))
        if usage is None:
            # Unreported usage is estimated only for an answer that (began to) come back;
            # a request that failed or was dropped before any answer costs nothing.
            usage = Usage(prompt_tokens=self.prompt_estimate, completion_tokens=completion_estimate,
                          source="estimated") if answered else Usage(source="none")
        if usage.source != "none" and usage.web_search_requests < self.min_web_searches:
            usage.web_search_requests = self.min_web_searches  # OpenAI reports no count
        rec.usage = usage
        rec.cost = request_cost(self.pricing, usage) if rec.attempts else 0.0
        rec.cancelled = cancelled
        rec.status_code = error.status if error is not None else (499 if cancelled else status)
        rec.error_code = error.code if error is not None else ("cancelled" if cancelled else None)
        rec.latency_ms = self.elapsed_ms()
        if rec.ttft_ms is not None:
            rec.generation_time_ms = rec.latency_ms - rec.ttft_ms
        self.reservation.settle(rec.cost)
        total_tokens = usage.prompt_tokens + usage.completion_tokens
        self.admission.settle_tokens(total_tokens)
        self.admission.release()
        for held in (self.provider_admission, self.model_admission):
            if held is not None:
                held.settle_tokens(total_tokens)
                held.release()
        self._ledger.store.record(rec)
        # Metrics only observe: once the answer is out, not on the client's clock.
        asyncio.get_running_loop().call_soon(self._ledger.metrics.observe, rec)
        return rec.cost
