"""What the operator may owe a provider for an attempt the key is not charged for (pure).

A non-stream request that timed out after the upstream accepted it is abandoned: the client
gets no answer and pays nothing, but the upstream may finish generating it and bill the
gateway. Its estimate (prompt estimate + the request's output cap, at the route's prices)
is recorded on the usage row as `operator_cost`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .config.model import ModelConfig, Pricing
from .credits import worst_case_cost

OUTPUT_CAP_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def abandoned_cost(body: Mapping[str, Any], model: ModelConfig, pricing: Pricing,
                   prompt_tokens: int, default_max_tokens: int) -> float:
    """USD an abandoned attempt may cost at most: the prompt estimate plus the request's
    output cap (else the model's max_output_tokens, else server.default_max_tokens)."""
    caps = [cap for name in OUTPUT_CAP_FIELDS
            if isinstance(cap := body.get(name), int) and not isinstance(cap, bool) and cap > 0]
    priced = model if model.pricing == pricing else dataclasses.replace(model, pricing=pricing)
    return worst_case_cost(priced, prompt_tokens, max(caps) if caps else None,
                           default_max_tokens)
