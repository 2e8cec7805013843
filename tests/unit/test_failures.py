"""upstream_failure on Google's error bodies: RetryInfo says when to come back, a 400 about
the gateway's own API key is the gateway's misconfiguration (like a 401), other 400s pass
with Google's message."""

from __future__ import annotations

import json

import pytest

from anyrouter_proxy.config.model import ProviderConfig
from anyrouter_proxy.errors import InvalidRequest, ProxyError, RateLimited, UpstreamError
from anyrouter_proxy.failures import should_fail_over, upstream_failure, worth_retrying
from tests.fake_gemini import golden

GEMINI = ProviderConfig(id="gemini", kind="gemini", api_key="AIza-secret-key-123")


def failure(status: int, name: str, headers: dict[str, str] | None = None) -> ProxyError:
    return upstream_failure(GEMINI, status, json.dumps(golden(name)).encode(), headers or {})


def test_retry_info_becomes_retry_after() -> None:
    error = failure(429, "error_resource_exhausted.json")
    assert isinstance(error, RateLimited)
    assert error.headers == {"Retry-After": "37"}
    assert error.code == "upstream_rate_limited"


def test_an_upstream_retry_after_header_wins() -> None:
    error = failure(429, "error_resource_exhausted.json", {"Retry-After": "5"})
    assert isinstance(error, RateLimited) and error.headers == {"Retry-After": "5"}


@pytest.mark.parametrize(("delay", "header"), [("1.5s", "2"), ("0.2s", "1"), ("60s", "60"),
                                               ("soon", "1"), ("nans", "1")])
def test_retry_delays_in_whole_seconds(delay: str, header: str) -> None:
    body = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "slow down",
                      "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                   "retryDelay": delay}]}}
    error = upstream_failure(GEMINI, 429, json.dumps(body).encode(), {})
    assert error.headers == {"Retry-After": header}


def test_an_invalid_api_key_is_the_gateways_problem() -> None:
    error = failure(400, "error_api_key_invalid.json")
    assert isinstance(error, UpstreamError) and error.status == 502
    assert "rejected the gateway's credentials" in error.message
    assert error.metadata == {"provider_name": "gemini", "provider_status": 401}
    assert should_fail_over(error) and not worth_retrying(error)


def test_other_400s_pass_with_googles_message() -> None:
    error = failure(400, "error_invalid_argument.json")
    assert isinstance(error, InvalidRequest)
    assert "temperature: must be between 0 and 2" in error.message
    assert error.code == "invalid_request" and not should_fail_over(error)
