"""The books of one proxied request: its limits admission, credit reservation and usage
row, closed exactly once however the request ends (success, error, cancel)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING

from .config.model import Pricing
from .errors import ProxyError
from .limits.quota import Held, Reserved
from .output_cap import OutputCap
from .pricing import request_cost, worst_case_cost
from .types import CANCELLED, ESTIMATED, NONE, PARTIAL, GenerationRecord, Usage

if TYPE_CHECKING:
    from .metrics import Metrics
    from .storage.store import Store

OVERSPEND_TOLERANCE_USD = 1e-9  # float and rounding slack (costs are rounded to 1e-10)


class Ledger:
    """Where closed books go: the usage log and the metrics."""

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics


def settled_usage(reported: Usage | None, answered: bool, prompt_estimate: int,
                  output_estimate: int) -> Usage:
    """The usage a request is charged for: the provider's when it reported a final one;
    its input with the output estimated when it reported input only (`partial`); else,
    for an answer that began, the prompt estimate and the output estimated (`estimated`);
    nothing for a request that got no answer."""
    if reported is not None and reported.source == PARTIAL:
        return dataclasses.replace(reported, completion_tokens=max(
            reported.completion_tokens, output_estimate))
    if reported is not None:
        return reported
    if not answered:
        return Usage(source=NONE)
    return Usage(prompt_tokens=prompt_estimate, completion_tokens=output_estimate,
                 source=ESTIMATED)


def generation_time(latency_ms: float, ttft_ms: float | None,
                    answered_ms: float | None) -> float:
    """The time spent generating: from the first event (streams) or from the upstream's
    response headers (otherwise) to the end; 0 when no upstream answered."""
    start = ttft_ms if ttft_ms is not None else answered_ms
    return 0.0 if start is None else max(0.0, latency_ms - start)


class Books:
    __slots__ = ("_closed", "_ledger", "admission", "answered_ms", "cap", "min_web_searches",
                 "model_admission", "pricing", "prompt_estimate", "provider_admission", "record",
                 "reservation", "reserved_cost", "started", "token_estimate")

    def __init__(self, ledger: Ledger, record: GenerationRecord, pricing: Pricing,
                 admission: Held, reservation: Reserved,
                 prompt_estimate: int, cap: OutputCap | None = None,
                 reserved_cost: float | None = None, token_estimate: int = 0) -> None:
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
        self.cap = cap  # the output reserved for: what the upstream is told it may write
        self.reserved_cost = reserved_cost  # USD; None: not known, no overspend check
        self.token_estimate = token_estimate  # what `admission` took from the token limits
        self.min_web_searches = 0  # searches charged to an answer that reports fewer
        self.started = time.perf_counter()
        self.answered_ms: float | None = None  # when the last upstream's headers came

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
        # An answer began once its first event came, or (not streamed) once the upstream
        # answered 200; a request that failed before that costs nothing. An estimate never
        # goes past the output reserved: the upstream was told not to write more.
        answered = bool(rec.attempts) and (rec.ttft_ms is not None or (
            error is None and rec.attempts[-1].status == 200))
        # The client left while the upstream had its request: the prompt is charged (the
        # upstream has read it); a non-stream answer may still be written and billed
        # upstream, at most the output reserved: the operator's cost.
        abandoned = (cancelled and not answered and bool(rec.attempts)
                     and rec.attempts[-1].status == CANCELLED)
        if abandoned:
            answered, completion_estimate = True, 0
            if not rec.streamed:
                rec.operator_cost += worst_case_cost(
                    self.pricing, 0, self.cap.total if self.cap is not None else 0)
        if self.cap is not None:
            completion_estimate = min(completion_estimate, self.cap.total)
        usage = settled_usage(usage, answered, self.prompt_estimate, completion_estimate)
        if usage.source != NONE and usage.web_search_requests < self.min_web_searches:
            # OpenAI reports no count: an answer that asked for search pays at least this
            usage = dataclasses.replace(usage, web_search_requests=self.min_web_searches)
        rec.usage = usage
        rec.cost = request_cost(self.pricing, usage) if rec.attempts else 0.0
        reserved = self.reserved_cost
        if reserved is not None and rec.cost > reserved + OVERSPEND_TOLERANCE_USD:
            self._overspent(rec, reserved)
        rec.cancelled = cancelled
        rec.status_code = error.status if error is not None else (499 if cancelled else status)
        rec.error_code = error.code if error is not None else ("cancelled" if cancelled else None)
        rec.latency_ms = self.elapsed_ms()
        rec.generation_time_ms = generation_time(rec.latency_ms, rec.ttft_ms, self.answered_ms)
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

    def _overspent(self, rec: GenerationRecord, reserved: float) -> None:
        """The provider reported more than was reserved: charged in full all the same,
        and the excess counted and audited."""
        self._ledger.metrics.overspent(rec.key_name, rec.cost - reserved)
        self._ledger.store.audit("overspend", key_name=rec.key_name, trace_id=rec.trace_id,
                                 detail={"generation_id": rec.id,
                                         "reserved": round(reserved, 10),
                                         "charged": rec.cost, "model": rec.model,
                                         "provider": rec.provider})
