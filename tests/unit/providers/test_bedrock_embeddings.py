"""Bedrock embeddings without I/O: which family a route model is, each family's InvokeModel
bodies and calls, the options refused or passed, and answers read back in input order
with their usage."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyrouter_proxy.config.model import ProviderConfig, Route
from anyrouter_proxy.errors import InvalidRequest, UpstreamError
from anyrouter_proxy.providers.anthropic_translate import MAX_TOKEN_COUNT
from anyrouter_proxy.providers.base import CallContext, as_fan_out
from anyrouter_proxy.providers.bedrock_embed_wire import (
    COHERE_V3,
    COHERE_V4,
    TITAN_V1,
    TITAN_V2,
    family_of,
    family_options,
)
from anyrouter_proxy.providers.bedrock_embeddings import BedrockEmbeddings
from anyrouter_proxy.providers.registry import exchange_for
from anyrouter_proxy.types import CHAT, EMBEDDINGS

BEDROCK = ProviderConfig(id="aws", kind="bedrock", base_url="https://bedrock", region="us-east-1",
                         headers={"X-Amzn-Bedrock-Trace": "ENABLED"})
TITAN = "amazon.titan-embed-text-v2:0"
COHERE = "cohere.embed-multilingual-v3"


def ctx(model: str) -> CallContext:
    return CallContext("gen-1", "aws/embed", 7, BEDROCK, Route("aws", model, 0), False, False)


def exchange() -> BedrockEmbeddings:
    found = exchange_for(EMBEDDINGS, "bedrock")
    assert isinstance(found, BedrockEmbeddings) and as_fan_out(found) is found
    return found


@pytest.mark.parametrize(("model", "family"), [
    ("amazon.titan-embed-text-v1", TITAN_V1),
    ("amazon.titan-embed-text-v1:2:8k", TITAN_V1),
    ("amazon.titan-embed-g1-text-02", TITAN_V1),
    ("amazon.titan-embed-text-v2:0", TITAN_V2),
    ("arn:aws:bedrock:us-east-1::foundation-model/amazon.titan-embed-text-v2:0", TITAN_V2),
    ("cohere.embed-english-v3", COHERE_V3),
    ("cohere.embed-multilingual-v3", COHERE_V3),
    ("cohere.embed-v4:0", COHERE_V4),
    ("us.cohere.embed-v4:0", COHERE_V4),
    ("arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.cohere.embed-v4:0",
     COHERE_V4),
])
def test_families_by_model_id(model: str, family: Any) -> None:
    assert family_of(model) is family


@pytest.mark.parametrize("model", [
    "anthropic.claude-3-5-sonnet-20240620-v1:0", "cohere.command-r-v1:0",
    "amazon.titan-embed-image-v1", "amazon.titan-embed-text-v20", "xamazon.titan-embed-text-v1",
    "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3"])
def test_other_models_are_refused_naming_the_model(model: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        exchange().build_all({"input": "hi"}, ctx(model))
    assert (caught.value.code, caught.value.param) == ("unsupported_parameter", "model")


def test_titan_takes_one_text_per_signed_call() -> None:
    calls = exchange().build_all({"input": ["a", "b", "c"], "dimensions": 512,
                                  "normalize": False}, ctx(TITAN))
    assert [c.body for c in calls] == [{"inputText": t, "dimensions": 512, "normalize": False}
                                       for t in "abc"]
    assert {c.path for c in calls} == {"/model/amazon.titan-embed-text-v2%3A0/invoke"}
    assert all(c.signed for c in calls)
    assert calls[0].headers == {"Content-Type": "application/json",
                                "Accept": "application/json", "X-Amzn-Bedrock-Trace": "ENABLED"}


def test_cohere_takes_96_texts_per_call() -> None:
    texts = [f"t{i}" for i in range(200)]
    calls = exchange().build_all({"input": texts, "input_type": "clustering",
                                  "truncate": "START"}, ctx(COHERE))
    assert [len(c.body["texts"]) for c in calls] == [96, 96, 8]
    assert [t for c in calls for t in c.body["texts"]] == texts
    assert calls[0].body == {"texts": texts[:96], "input_type": "clustering",
                             "embedding_types": ["float"], "truncate": "START"}


def test_cohere_v4_dimensions_are_its_output_dimension() -> None:
    [call] = exchange().build_all({"input": "x", "dimensions": 1536}, ctx("cohere.embed-v4:0"))
    assert call.body["output_dimension"] == 1536


@pytest.mark.parametrize(("family", "body", "param", "code"), [
    (TITAN_V1, {"dimensions": 256}, "dimensions", "unsupported_parameter"),
    (COHERE_V3, {"dimensions": 1024}, "dimensions", "unsupported_parameter"),
    (TITAN_V2, {"dimensions": 1536}, "dimensions", "invalid_request"),
    (COHERE_V4, {"dimensions": 300}, "dimensions", "invalid_request"),
    (COHERE_V3, {"input_type": "image"}, "input_type", "invalid_request"),
    (COHERE_V3, {"truncate": 1}, "truncate", "invalid_request"),
    (TITAN_V2, {"normalize": "yes"}, "normalize", "invalid_request"),
])
def test_options_a_family_refuses(family: Any, body: dict[str, Any], param: str,
                                  code: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        family_options(family, body, body.get("dimensions"))
    assert (caught.value.param, caught.value.code) == (param, code)


def test_options_of_other_families_are_ignored() -> None:
    body = {"input_type": "not-checked", "truncate": 5, "normalize": "x"}
    assert family_options(TITAN_V1, body, None).normalize is None
    assert family_options(COHERE_V3, {"normalize": "x"}, None).normalize is None


@pytest.mark.parametrize("body", [{"input": [[1, 2]]}, {"input": [1, 2]},
                                  {"input": ["a", 3]}])
def test_token_arrays_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        exchange().build_all(body, ctx(TITAN))
    assert caught.value.param == "input" and "token arrays" in caught.value.message


def titan_answer(vector: list[float], tokens: int | None) -> dict[str, Any]:
    answer: dict[str, Any] = {"embedding": vector}
    if tokens is not None:
        answer["inputTextTokenCount"] = tokens
    return answer


def test_titan_answers_in_call_order_with_tokens_summed() -> None:
    context = ctx(TITAN)
    exchange().build_all({"input": ["a", "b"], "encoding_format": "float"}, context)
    reply = exchange().reply_all([titan_answer([0.5, 1], 3), titan_answer([-0.25, 2], 4)],
                                 context)
    assert [d["embedding"] for d in reply.body["data"]] == [[0.5, 1.0], [-0.25, 2.0]]
    assert [d["index"] for d in reply.body["data"]] == [0, 1]
    assert reply.usage is not None and reply.usage.prompt_tokens == 7
    assert reply.body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert reply.body["model"] == "aws/embed" and reply.body["provider"] == "aws"


def test_a_missing_count_charges_the_estimate() -> None:
    context = ctx(TITAN)
    exchange().build_all({"input": ["a", "b"]}, context)
    reply = exchange().reply_all([titan_answer([1], 3), titan_answer([2], None)], context)
    assert reply.usage is None
    assert reply.body["usage"]["prompt_tokens"] == context.notes["prompt_estimate"] > 0


@pytest.mark.parametrize("answer", [
    {"embeddings": [[0.5], [0.25]], "response_type": "embeddings_floats"},
    {"embeddings": {"float": [[0.5], [0.25]]}, "response_type": "embeddings_by_type"},
])
def test_cohere_answers_in_either_shape(answer: dict[str, Any]) -> None:
    context = ctx(COHERE)
    exchange().build_all({"input": ["a", "b"], "encoding_format": "base64"}, context)
    reply = exchange().reply_all([answer], context)
    assert [d["embedding"] for d in reply.body["data"]] == [
        base64.b64encode(struct.pack("<f", 0.5)).decode(),
        base64.b64encode(struct.pack("<f", 0.25)).decode()]
    assert reply.usage is None  # Cohere on Bedrock counts nothing: the estimate is charged


def test_cohere_billed_units_are_its_usage() -> None:
    context = ctx(COHERE)
    exchange().build_all({"input": "a"}, context)
    reply = exchange().reply_all([{"embeddings": [[1.0]],
                                   "meta": {"billed_units": {"input_tokens": 5}}}], context)
    assert reply.usage is not None and reply.usage.prompt_tokens == 5


@pytest.mark.parametrize(("model", "answers"), [
    (TITAN, [titan_answer([1], 1)]),  # two texts, one answer
    (TITAN, [titan_answer([1], 1), {"embedding": ["x"]}]),
    (TITAN, [titan_answer([1], 1), {"embeddings": [[1.0]]}]),
    (COHERE, [{"embeddings": [[1.0]]}]),  # one vector for two texts
    (COHERE, [{"embeddings": {"int8": [[1], [2]]}}]),
    (COHERE, ["not an object"]),
])
def test_answers_that_do_not_fit_are_the_upstreams_fault(model: str,
                                                         answers: list[Any]) -> None:
    context = ctx(model)
    exchange().build_all({"input": ["a", "b"]}, context)
    with pytest.raises(UpstreamError) as caught:
        exchange().reply_all(answers, context)
    assert caught.value.code == "upstream_invalid_response"


def test_other_exchanges_are_not_fan_outs() -> None:
    chat = exchange_for(CHAT, "bedrock")
    assert chat is not None and as_fan_out(chat) is None


def test_embeddings_do_not_stream() -> None:
    with pytest.raises(InvalidRequest):
        exchange().translator(ctx(TITAN))


# -- any JSON in, only the documented errors out -----------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
scalars = (st.none() | st.booleans() | st.integers(min_value=-2**64, max_value=2**64)
           | st.floats(min_value=-1e300, max_value=1e300) | st.text(max_size=8))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
texts = st.text(max_size=6) | json_values
requests = st.fixed_dictionaries({}, optional={
    "input": st.lists(texts, max_size=4) | texts, "dimensions": st.sampled_from(
        [256, 512, 1024, 1536]) | json_values, "encoding_format": st.sampled_from(
        ["float", "base64"]) | json_values, "input_type": json_values, "truncate": json_values,
    "normalize": json_values}) | json_values
vectors = st.lists(st.floats(-1, 1) | json_values, max_size=3)
counts = st.sampled_from([3, 0, -1, 1e300, 2**64, 2.5]) | json_values
answers = st.lists(st.fixed_dictionaries({}, optional={
    "embedding": vectors, "inputTextTokenCount": counts,
    "embeddings": st.lists(vectors, max_size=3) | st.fixed_dictionaries(
        {"float": st.lists(vectors, max_size=3)}) | json_values,
    "meta": st.fixed_dictionaries({"billed_units": st.fixed_dictionaries(
        {"input_tokens": counts})}) | json_values}) | json_values, max_size=3)
MODELS = st.sampled_from([TITAN, "amazon.titan-embed-text-v1", COHERE, "cohere.embed-v4:0"])


@FUZZ
@given(MODELS, requests)
def test_any_request_is_calls_or_a_400(model: str, body: Any) -> None:
    try:
        calls = exchange().build_all(body, ctx(model))
    except InvalidRequest as exc:
        assert exc.status == 400
        return
    assert calls and all(orjson.dumps(call.body) for call in calls)


@FUZZ
@given(MODELS, st.lists(st.text(max_size=4), min_size=1, max_size=3), answers)
def test_any_answer_is_an_answer_or_a_502(model: str, inputs: list[str],
                                          data: list[Any]) -> None:
    context = ctx(model)
    exchange().build_all({"input": inputs, "encoding_format": "base64"}, context)
    try:
        reply = exchange().reply_all(data, context)
    except UpstreamError as exc:
        assert exc.status == 502
        return
    assert len(reply.body["data"]) == len(inputs)
    assert orjson.dumps(reply.body)
    assert reply.usage is None or 0 <= reply.usage.prompt_tokens <= MAX_TOKEN_COUNT * 3


@pytest.mark.parametrize("count", [1e300, 2**64])
def test_absurd_counts_are_capped_and_serialise(count: float) -> None:
    context = ctx(TITAN)
    exchange().build_all({"input": "a"}, context)
    reply = exchange().reply_all([{"embedding": [0.5], "inputTextTokenCount": count}], context)
    assert reply.usage is not None and reply.usage.prompt_tokens == MAX_TOKEN_COUNT
    assert orjson.dumps(reply.body)
