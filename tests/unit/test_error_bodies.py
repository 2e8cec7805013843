"""Upstream error bodies in each provider's shape -> message, code, param (and Azure's
innererror) for the client's envelope."""

from __future__ import annotations

import json
from typing import Any

import pytest

from anyrouter_proxy.error_bodies import ErrorBody, read_error_body

EXTRA_FORBIDDEN = [{"type": "extra_forbidden", "loc": ["body", "stream_options"],
                    "msg": "Extra inputs are not permitted", "input": {"include_usage": True},
                    "url": "https://errors.pydantic.dev/2.10/v/extra_forbidden"}]
FORBIDDEN_TEXT = "stream_options: Extra inputs are not permitted (extra_forbidden)"


def read(body: Any) -> ErrorBody:
    return read_error_body(json.dumps(body).encode())


def test_openai_shape() -> None:
    said = read({"error": {"message": "Invalid value for 'temperature'", "type":
                           "invalid_request_error", "param": "temperature",
                           "code": "invalid_value"}})
    assert said == ErrorBody("Invalid value for 'temperature'", "invalid_value", "temperature")


def test_azure_content_filter_keeps_its_innererror() -> None:
    result = {"violence": {"filtered": True, "severity": "medium"}}
    said = read({"error": {"message": "The response was filtered", "type": None,
                           "param": "prompt", "code": "content_filter", "status": 400,
                           "innererror": {"code": "ResponsibleAIPolicyViolation",
                                          "content_filter_result": result,
                                          "something_else": "not passed on"}}})
    assert (said.message, said.code, said.param) == ("The response was filtered",
                                                     "content_filter", "prompt")
    assert said.metadata == {"innererror": {"code": "ResponsibleAIPolicyViolation",
                                            "content_filter_result": result}}


@pytest.mark.parametrize("code", ["401", 429, 3001, None, ""])
def test_numeric_or_empty_codes_are_dropped(code: Any) -> None:
    assert read({"error": {"code": code, "message": "Access denied"}}) == \
        ErrorBody("Access denied")


def test_fastapi_validation_errors() -> None:
    said = read({"detail": [
        *EXTRA_FORBIDDEN,
        {"type": "missing", "loc": ["body", "messages", 2, "content"], "msg": "Field required",
         "input": {"role": "user"}}]})
    assert said.message == f"{FORBIDDEN_TEXT}; messages[2].content: Field required (missing)"
    assert said.code == "unsupported_parameter"  # a field the upstream does not take
    assert said.param == "stream_options"


def test_fastapi_detail_text_and_many_errors() -> None:
    assert read({"detail": "Not Found"}) == ErrorBody("Not Found")
    many = read({"detail": [{"loc": ["body", f"f{i}"], "msg": "bad"} for i in range(8)]})
    assert many.message is not None and many.message.endswith("f4: bad; and 3 more")
    assert many.code is None


@pytest.mark.parametrize("body", [
    {"object": "error", "message": {"detail": EXTRA_FORBIDDEN}, "type": "invalid_request_error",
     "param": None, "code": None},
    {"object": "error", "message": json.dumps({"detail": EXTRA_FORBIDDEN}),
     "type": "internal_error_proxy", "param": None, "code": "1000"},
    {"object": "Error", "detail": EXTRA_FORBIDDEN, "message": EXTRA_FORBIDDEN,
     "type": "invalid_request_error", "code": 3001},
    {"object": "Error", "message": EXTRA_FORBIDDEN, "type": "invalid_request_error"},
])
def test_mistral_shapes(body: dict[str, Any]) -> None:
    said = read(body)
    assert said.message == FORBIDDEN_TEXT
    assert said.code == "unsupported_parameter" and said.param == "stream_options"


def test_mistral_plain_message_and_top_level_message() -> None:
    assert read({"object": "error", "message": "Invalid model: x", "type": "invalid_model",
                 "param": None, "code": "1500"}) == ErrorBody("Invalid model: x")
    assert read({"message": "Bad things", "code": "bad_things"}) == \
        ErrorBody("Bad things", "bad_things")
    assert read({"Message": "User is not authorized"}) == ErrorBody("User is not authorized")


def test_never_the_rejected_input() -> None:
    said = read({"detail": [{"type": "string_type", "loc": ["body", "messages", 0, "content"],
                             "msg": "Input should be a valid string", "input": "SECRET PROMPT"}]})
    assert said.message is not None and "SECRET PROMPT" not in said.message


@pytest.mark.parametrize(("raw", "message"), [
    (b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
     "an HTML page (502 Bad Gateway)"),
    (b"upstream connect error", "upstream connect error"),
    (b"", None),
    (b"[1, 2]", None),
    (b'{"error": "model overloaded"}', "model overloaded"),
])
def test_other_bodies(raw: bytes, message: str | None) -> None:
    assert read_error_body(raw).message == message
