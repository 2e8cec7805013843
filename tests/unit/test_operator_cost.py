"""abandoned_cost: the estimate of an attempt the key is not charged for."""

from __future__ import annotations

import pytest

from anyrouter_proxy.config.model import ModelConfig, Pricing, Route
from anyrouter_proxy.operator_cost import abandoned_cost

MODEL = ModelConfig(id="m", routes=(Route("p", "x", 0),), pricing=Pricing(prompt=1, completion=3),
                    max_output_tokens=500)
ROUTE_PRICES = Pricing(prompt=2, completion=10)


def test_prompt_estimate_plus_the_requests_cap_at_the_routes_prices() -> None:
    cost = abandoned_cost({"max_tokens": 100}, MODEL, ROUTE_PRICES, 40, 4096)
    assert cost == pytest.approx((40 * 2 + 100 * 10) / 1e6)


@pytest.mark.parametrize("body", [{"max_completion_tokens": 100}, {"max_output_tokens": 100},
                                  {"max_tokens": 30, "max_completion_tokens": 100}])
def test_every_output_cap_field_counts_the_largest(body: dict[str, int]) -> None:
    assert abandoned_cost(body, MODEL, MODEL.pricing, 0, 4096) == pytest.approx(300 / 1e6)


@pytest.mark.parametrize("body", [{}, {"max_tokens": 0}, {"max_tokens": True},
                                  {"max_tokens": "9"}])
def test_without_a_cap_the_models_limit_then_the_servers_default(body: dict[str, object]
                                                                  ) -> None:
    assert abandoned_cost(body, MODEL, MODEL.pricing, 0, 4096) == pytest.approx(1500 / 1e6)
    bare = ModelConfig(id="b", routes=MODEL.routes, pricing=MODEL.pricing)
    assert abandoned_cost(body, bare, bare.pricing, 0, 4096) == pytest.approx(4096 * 3 / 1e6)
