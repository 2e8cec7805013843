"""routing.py (provider choice, model fallbacks, weighted order) and failures.py (how
upstream failures are classified and summed up), as pure functions."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from anyrouter_proxy.config.model import ModelConfig, Pricing, ProviderConfig, Route
from anyrouter_proxy.errors import (
    InvalidRequest,
    ProxyError,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from anyrouter_proxy.failures import (
    counts_against_health,
    final_error,
    retry_after_s,
    should_fail_over,
    slow_answer,
    upstream_failure,
    worth_retrying,
)
from anyrouter_proxy.routing import (
    MAX_FALLBACK_MODELS,
    ProviderPrefs,
    fallback_models,
    order_routes,
    parse_prefs,
    resolve_targets,
)

# -- helpers ------------------------------------------------------------------------------


def provider(pid: str, api_key: str | None = "sk-upstream") -> ProviderConfig:
    return ProviderConfig(id=pid, kind="openai", base_url=f"http://{pid}.invalid/v1",
                          api_key=api_key)


PROVIDERS = {pid: provider(pid) for pid in ("a", "b", "c")} | {
    "nokey": provider("nokey", api_key="")}


def route(pid: str, priority: int = 0, weight: float = 1.0,
          pricing: Pricing | None = None) -> Route:
    return Route(provider=pid, model=f"{pid}-model", priority=priority, weight=weight,
                 pricing=pricing)


def model(model_id: str, *routes: Route, pricing: Pricing | None = None) -> ModelConfig:
    return ModelConfig(id=model_id, routes=routes, pricing=pricing or Pricing())


def draws(*values: float) -> Callable[[], float]:
    """A deterministic stand-in for random.random: the given values, in order."""
    it: Iterator[float] = iter(values)
    return lambda: next(it)


def providers_of(targets: list[Any]) -> list[str]:
    return [t.provider.id for t in targets]


# Three routes in written order: a, b, c (priority = position, as the loader does).
ABC = model("m", route("a", 0), route("b", 1), route("c", 2))


# -- parse_prefs --------------------------------------------------------------------------


def test_parse_prefs_absent_is_none() -> None:
    assert parse_prefs(None) is None


def test_parse_prefs_reads_every_field() -> None:
    prefs = parse_prefs({"order": ["b", "a"], "only": ["a", "b"], "ignore": ["c"],
                         "allow_fallbacks": False, "sort": "price"})
    assert prefs == ProviderPrefs(order=("b", "a"), only=frozenset({"a", "b"}),
                                  ignore=frozenset({"c"}), allow_fallbacks=False, sort="price")


def test_parse_prefs_defaults() -> None:
    assert parse_prefs({}) == ProviderPrefs()
    prefs = parse_prefs({"data_collection": "deny"})  # unknown OpenRouter fields are ignored
    assert prefs is not None and prefs.allow_fallbacks is True and prefs.only is None


@pytest.mark.parametrize(("raw", "param"), [
    ("openai", "provider"),
    (["a"], "provider"),
    ({"order": "a"}, "provider.order"),
    ({"order": ["a", 1]}, "provider.order"),
    ({"only": "a"}, "provider.only"),
    ({"only": [None]}, "provider.only"),
    ({"ignore": {"a": 1}}, "provider.ignore"),
    ({"allow_fallbacks": "no"}, "provider.allow_fallbacks"),
    ({"allow_fallbacks": 0}, "provider.allow_fallbacks"),
    ({"sort": "cheapest"}, "provider.sort"),
    ({"sort": 1}, "provider.sort"),
])
def test_parse_prefs_errors_name_the_field(raw: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_prefs(raw)
    assert info.value.status == 400
    assert info.value.param == param


# -- fallback_models ----------------------------------------------------------------------


def test_fallback_models_order_and_dedup() -> None:
    assert fallback_models({"model": "a"}) == ["a"]
    assert fallback_models({"model": "a", "models": ["b", "a", "c", "b"]}) == ["a", "b", "c"]
    assert fallback_models({"models": ["b", "c"]}) == ["b", "c"]
    assert fallback_models({}) == []


@pytest.mark.parametrize("models", ["b", [1], [""], ["m"] * (MAX_FALLBACK_MODELS + 1)])
def test_fallback_models_errors(models: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        fallback_models({"model": "a", "models": models})
    assert info.value.param == "models"


# -- order_routes ---------------------------------------------------------------------------


def test_order_routes_priority_first_then_weight() -> None:
    routes = [route("c", 5), route("a", 0, weight=3), route("b", 0, weight=1)]
    # Equal draws: the heavier route wins (0.5 ** (1/3) > 0.5 ** 1).
    assert [r.provider for r in order_routes(routes, draws(0.5, 0.5))] == ["a", "b", "c"]
    # A low draw for a and a high one for b: b first within priority 0; c stays last.
    assert [r.provider for r in order_routes(routes, draws(0.1, 0.9))] == ["b", "a", "c"]


def test_order_routes_single_route_per_priority_draws_nothing() -> None:
    def no_draw() -> float:
        raise AssertionError("no weighted choice to make")

    routes = [route("b", 1), route("a", 0), route("c", 2)]
    assert [r.provider for r in order_routes(routes, no_draw)] == ["a", "b", "c"]


def test_order_routes_weight_3_to_1_spreads_three_to_one() -> None:
    rng = random.Random(20240601)
    routes = [route("a", 0, weight=3), route("b", 0, weight=1)]
    firsts = [order_routes(routes, rng.random)[0].provider for _ in range(20000)]
    share = firsts.count("a") / len(firsts)
    assert 0.73 < share < 0.77  # 3 / (3 + 1)


def test_order_routes_three_weights_first_choice_proportional() -> None:
    rng = random.Random(7)
    routes = [route("a", 0, weight=1), route("b", 0, weight=2), route("c", 0, weight=5)]
    firsts = [order_routes(routes, rng.random)[0].provider for _ in range(20000)]
    for pid, expected in (("a", 1 / 8), ("b", 2 / 8), ("c", 5 / 8)):
        assert abs(firsts.count(pid) / len(firsts) - expected) < 0.02


# -- resolve_targets ----------------------------------------------------------------------


def test_resolve_targets_follows_config_order() -> None:
    assert providers_of(resolve_targets([ABC], PROVIDERS)) == ["a", "b", "c"]


def test_resolve_targets_forced_provider_only() -> None:
    targets = resolve_targets([ABC], PROVIDERS, forced="b",
                              prefs=ProviderPrefs(order=("c",), allow_fallbacks=False))
    assert providers_of(targets) == ["b"]  # the header outranks the body's preferences
    assert targets[0].route.model == "b-model" and targets[0].model.id == "m"


@pytest.mark.parametrize("forced", ["zzz", "nokey"])
def test_resolve_targets_forced_unknown_or_not_serving(forced: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        resolve_targets([ABC], PROVIDERS, forced=forced)
    exc = info.value
    assert (exc.status, exc.code, exc.param) == (400, "provider_not_available",
                                                 "X-AnyRouter-Provider")
    assert "allowed: a, b, c" in exc.message and forced in exc.message


def test_resolve_targets_forced_without_credentials_is_503() -> None:
    m = model("m", route("nokey", 0), route("a", 1))
    with pytest.raises(ServiceUnavailable):
        resolve_targets([m], PROVIDERS, forced="nokey")


@pytest.mark.parametrize(("prefs", "expected"), [
    (ProviderPrefs(order=("c", "a")), ["c", "a", "b"]),
    (ProviderPrefs(order=("c", "a"), allow_fallbacks=False), ["c", "a"]),
    (ProviderPrefs(order=("zzz", "b")), ["b", "a", "c"]),
    (ProviderPrefs(only=frozenset({"c", "b"})), ["b", "c"]),
    (ProviderPrefs(ignore=frozenset({"a"})), ["b", "c"]),
    (ProviderPrefs(only=frozenset({"a", "c"}), ignore=frozenset({"a"})), ["c"]),
    (ProviderPrefs(allow_fallbacks=False), ["a"]),
    (ProviderPrefs(order=("b",), ignore=frozenset({"b"})), ["a", "c"]),
])
def test_resolve_targets_honours_prefs(prefs: ProviderPrefs, expected: list[str]) -> None:
    assert providers_of(resolve_targets([ABC], PROVIDERS, prefs=prefs)) == expected


@pytest.mark.parametrize("prefs", [ProviderPrefs(only=frozenset({"zzz"})),
                                   ProviderPrefs(only=frozenset()),
                                   ProviderPrefs(ignore=frozenset({"a", "b", "c"}))])
def test_resolve_targets_prefs_leaving_nothing_is_400(prefs: ProviderPrefs) -> None:
    with pytest.raises(InvalidRequest) as info:
        resolve_targets([ABC], PROVIDERS, prefs=prefs)
    assert (info.value.code, info.value.param) == ("provider_not_available", "provider")
    assert "allowed: a, b, c" in info.value.message


def test_resolve_targets_order_without_fallbacks_naming_no_route_is_400() -> None:
    with pytest.raises(InvalidRequest) as info:
        resolve_targets([ABC], PROVIDERS,
                        prefs=ProviderPrefs(order=("zzz",), allow_fallbacks=False))
    assert (info.value.code, info.value.param) == ("provider_not_available", "provider")


def test_resolve_targets_sort_price_uses_route_pricing() -> None:
    m = model("m", route("a", 0, pricing=Pricing(prompt=5, completion=10)),
              route("b", 1),  # the model's price: 2 + 4
              route("c", 2, pricing=Pricing(prompt=0.5, completion=1)),
              pricing=Pricing(prompt=2, completion=4))
    prefs = ProviderPrefs(sort="price")
    assert providers_of(resolve_targets([m], PROVIDERS, prefs=prefs)) == ["c", "b", "a"]
    cheapest = resolve_targets([m], PROVIDERS,
                               prefs=ProviderPrefs(sort="price", allow_fallbacks=False))
    assert providers_of(cheapest) == ["c"]
    assert cheapest[0].pricing == Pricing(prompt=0.5, completion=1)


def test_resolve_targets_sort_latency_and_throughput_use_measurements() -> None:
    latency = {"a": 900.0, "b": None, "c": 100.0}
    throughput = {"a": 10.0, "b": 80.0, "c": None}
    by_latency = resolve_targets([ABC], PROVIDERS, prefs=ProviderPrefs(sort="latency"),
                                 latency=latency.get)
    assert providers_of(by_latency) == ["c", "a", "b"]  # unmeasured last
    by_tps = resolve_targets([ABC], PROVIDERS, prefs=ProviderPrefs(sort="throughput"),
                             throughput=throughput.get)
    assert providers_of(by_tps) == ["b", "a", "c"]  # fastest first, unmeasured last


def test_resolve_targets_order_outranks_sort() -> None:
    m = model("m", route("a", 0, pricing=Pricing(prompt=9)), route("b", 1),
              route("c", 2, pricing=Pricing(prompt=5)))
    prefs = ProviderPrefs(sort="price", order=("a",))
    assert providers_of(resolve_targets([m], PROVIDERS, prefs=prefs)) == ["a", "b", "c"]


def test_resolve_targets_skips_providers_without_credentials() -> None:
    m = model("m", route("nokey", 0), route("b", 1))
    assert providers_of(resolve_targets([m], PROVIDERS)) == ["b"]
    only_nokey = model("m", route("nokey", 0))
    with pytest.raises(ServiceUnavailable) as info:
        resolve_targets([only_nokey], PROVIDERS)
    assert info.value.status == 503 and info.value.code == "no_provider_available"


def test_resolve_targets_model_fallbacks_in_turn() -> None:
    first = model("first", route("a", 0), route("b", 1))
    second = model("second", route("c", 0), route("a", 1))
    targets = resolve_targets([first, second], PROVIDERS)
    assert [(t.model.id, t.provider.id) for t in targets] == [
        ("first", "a"), ("first", "b"), ("second", "c"), ("second", "a")]
    forced = resolve_targets([first, second], PROVIDERS, forced="c")
    assert [(t.model.id, t.provider.id) for t in forced] == [("second", "c")]
    ignoring = resolve_targets([first, second], PROVIDERS,
                               prefs=ProviderPrefs(ignore=frozenset({"a"})))
    assert [(t.model.id, t.provider.id) for t in ignoring] == [("first", "b"),
                                                               ("second", "c")]


def test_resolve_targets_weighted_draw_reaches_the_order() -> None:
    m = model("m", route("a", 0, weight=3), route("b", 0, weight=1), route("c", 1))
    assert providers_of(resolve_targets([m], PROVIDERS, draw=draws(0.5, 0.5))) == [
        "a", "b", "c"]
    assert providers_of(resolve_targets([m], PROVIDERS, draw=draws(0.01, 0.99))) == [
        "b", "a", "c"]


# -- failures: classification --------------------------------------------------------------


def err(raw: bytes | str = b"", status: int = 500, pid: str = "a",
        headers: dict[str, str] | None = None) -> ProxyError:
    body = raw.encode() if isinstance(raw, str) else raw
    return upstream_failure(ProviderConfig(id=pid, kind="openai"), status, body, headers)


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_request_faults_pass_through_with_upstream_message(status: int) -> None:
    exc = err(b'{"error": {"message": "messages[0].content is bad", "type": "invalid",'
              b' "code": "bad_content", "param": "messages"}}', status)
    assert exc.status == status
    assert exc.message == "messages[0].content is bad"
    assert (exc.code, exc.param) == ("bad_content", "messages")
    assert exc.metadata == {"provider_name": "a", "provider_status": status}
    assert not should_fail_over(exc) and not worth_retrying(exc)
    assert not counts_against_health(exc)


@pytest.mark.parametrize("status", [401, 403])
def test_credential_faults_fail_over_without_retry(status: int) -> None:
    exc = err(b'{"error": {"message": "Incorrect API key provided: sk-upstream-secret"}}',
              status, pid="acme")
    assert isinstance(exc, UpstreamError) and (exc.status, exc.code) == (502, "upstream_error")
    assert "acme" in exc.message and "sk-upstream" not in exc.message
    assert should_fail_over(exc) and not worth_retrying(exc)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_faults_fail_over_and_retry(status: int) -> None:
    exc = err(b'{"error": {"message": "overloaded"}}', status)
    assert isinstance(exc, UpstreamError) and exc.status == 502
    assert "overloaded" in exc.message and str(status) in exc.message
    assert should_fail_over(exc) and worth_retrying(exc) and counts_against_health(exc)


def test_rate_limit_keeps_numeric_retry_after() -> None:
    exc = err(b"", 429, headers={"Retry-After": "7"})
    assert isinstance(exc, RateLimited) and exc.code == "upstream_rate_limited"
    assert exc.headers == {"Retry-After": "7"} and retry_after_s(exc) == 7.0
    assert should_fail_over(exc) and worth_retrying(exc)
    assert not counts_against_health(exc)  # rate limiting is not ill health
    dated = err(b"", 429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert dated.headers == {"Retry-After": "1"}  # a 429 always has Retry-After


def test_non_json_error_body_becomes_the_message() -> None:
    assert "upstream is overloaded" in err("upstream is overloaded", 502).message
    html = err("<html><title>502 Bad Gateway</title><body>x</body></html>", 502)
    assert "502 Bad Gateway" in html.message and "<" not in html.message  # no markup


def test_timeouts_and_internal_errors_for_health() -> None:
    assert counts_against_health(UpstreamTimeout("t"))
    assert worth_retrying(UpstreamTimeout("t"))
    assert not counts_against_health(UpstreamError("x", code="internal_error", status=500))


def test_timeout_stages_for_health_and_retries() -> None:
    waited = UpstreamTimeout("no free connection", stage="pool")  # our own pool was full
    assert not counts_against_health(waited) and not counts_against_health(waited,
                                                                           streamed=False)
    assert worth_retrying(waited) and not slow_answer(waited, streamed=False)
    late = UpstreamTimeout("sent, not answered", stage="answer")
    assert not counts_against_health(late, streamed=False)  # the client chose its length
    assert slow_answer(late, streamed=False)
    assert counts_against_health(late, streamed=True)  # a stream should start at once
    assert not slow_answer(late, streamed=True)
    assert counts_against_health(UpstreamTimeout("connect"), streamed=False)
    assert not slow_answer(UpstreamError("x"), streamed=False)


# -- failures: final_error ------------------------------------------------------------------


def timeout(pid: str) -> UpstreamTimeout:
    return UpstreamTimeout(f"Provider {pid} timed out", metadata={"provider_name": pid})


def test_final_error_nothing_tried_is_503_naming_skipped() -> None:
    exc = final_error(ABC, [], ["a: circuit open", "b: circuit open", "a: circuit open"])
    assert (exc.status, exc.code) == (503, "no_provider_available")
    assert "a: circuit open, b: circuit open" in exc.message
    assert exc.metadata == {"skipped": ["a: circuit open", "b: circuit open"]}


def test_final_error_one_provider_is_its_last_failure() -> None:
    last = err(b"", 503)
    exc = final_error(ABC, [err(b"", 500), last], [])
    assert exc is last and exc.status == 502
    assert exc.metadata is not None and exc.metadata["attempts"] == ["a", "a"]


def test_final_error_all_rate_limited_is_429() -> None:
    exc = final_error(ABC, [err(b"", 429, "a"), err(b"", 429, "b", {"Retry-After": "3"})], [])
    assert (exc.status, exc.code) == (429, "upstream_rate_limited")
    assert "a (429" in exc.message and "b (429" in exc.message
    assert exc.headers == {"Retry-After": "3"}
    assert exc.metadata == {"attempts": ["a", "b"]}


def test_final_error_all_timed_out_is_504() -> None:
    exc = final_error(ABC, [timeout("a"), timeout("b"), timeout("c")], [])
    assert (exc.status, exc.code) == (504, "upstream_timeout")
    assert all(pid in exc.message for pid in "abc")
    assert exc.metadata == {"attempts": ["a", "b", "c"]}


def test_final_error_mixed_is_502_listing_every_provider() -> None:
    exc = final_error(ABC, [timeout("a"), err(b"", 429, "b"), err(b"", 500, "c")],
                      ["x: circuit open"])
    assert (exc.status, exc.code) == (502, "upstream_error")
    assert "a (504 upstream_timeout)" in exc.message
    assert "b (429 upstream_rate_limited)" in exc.message
    assert "c (502 upstream_error)" in exc.message
    assert exc.metadata == {"attempts": ["a", "b", "c"]}
