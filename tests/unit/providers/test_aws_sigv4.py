"""SigV4 signing with cached pieces (aws_sigv4.py) gives botocore's SigV4Auth headers,
byte for byte, for random URLs, headers, bodies, credentials and times; the first request
(which builds the cached canonical request) and the next ones alike."""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import quote

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyrouter_proxy.providers.aws_sigv4 import SigV4Signer

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
ASCII = st.characters(min_codepoint=32, max_codepoint=126)
header_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,12}", fullmatch=True) | st.sampled_from(
    ["Content-Type", "content-type", "Accept", "User-Agent", "Host", "X-Amz-Date", "Date",
     "Authorization", "X-Amz-Security-Token", "X-Amz-Content-SHA256", "X-Amzn-Trace-Id"])
header_values = st.text(ASCII, max_size=20) | st.sampled_from(
    ["application/json", "application/vnd.amazon.eventstream", "  a   b  ",
     "Thu, 01 Jan 2026 00:00:00 GMT"])
hosts = st.sampled_from(["bedrock-runtime.us-east-1.amazonaws.com", "127.0.0.1", "[::1]",
                         "Bedrock.Example.COM"])


@st.composite
def urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["https", "http"]))
    port = draw(st.sampled_from(["", ":443", ":80", ":8443"]))
    model = quote(draw(st.text(min_size=1, max_size=30)), safe="")
    operation = draw(st.sampled_from(["converse", "converse-stream"]))
    query = draw(st.sampled_from(["", "?b=2&a=1", "?x"]))
    return f"{scheme}://{draw(hosts)}{port}/model/{model}/{operation}{query}"


credentials = st.builds(
    ReadOnlyCredentials,
    st.from_regex(r"(AKIA|ASIA)[A-Z0-9]{16}", fullmatch=True),
    st.text(ASCII, min_size=1, max_size=40),
    st.none() | st.text(ASCII, min_size=1, max_size=40))
times = st.datetimes(min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2035, 1, 1))


def botocore_headers(creds: ReadOnlyCredentials, region: str, url: str, body: bytes,
                     headers: dict[str, str], when: dt.datetime) -> list[tuple[str, str]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(botocore.auth, "get_current_datetime", lambda: when)
        request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
        botocore.auth.SigV4Auth(creds, "bedrock", region).add_auth(request)
    return list(request.headers.items())


def signed(signer: SigV4Signer, url: str, body: bytes, headers: dict[str, str],
           when: dt.datetime) -> list[tuple[str, str]]:
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    with pytest.MonkeyPatch.context() as patch:  # for the headers botocore signs itself
        patch.setattr(botocore.auth, "get_current_datetime", lambda: when)
        return list(signer.sign(url, body, headers, now=(stamp, stamp[:8])).items())


@FUZZ
@given(credentials, st.sampled_from(["us-east-1", "eu-west-3"]), urls(),
       st.lists(st.binary(max_size=64), min_size=1, max_size=3),
       st.dictionaries(header_names, header_values, max_size=4), times, times)
def test_signatures_are_botocores(creds: ReadOnlyCredentials, region: str, url: str,
                                  bodies: list[bytes], headers: dict[str, str],
                                  first: dt.datetime, later: dt.datetime) -> None:
    signer = SigV4Signer(creds, region, "bedrock")
    for body in bodies:
        for when in (first, later):
            assert signed(signer, url, body, headers, when) == botocore_headers(
                creds, region, url, body, headers, when)


def test_the_bedrock_request_is_signed_as_botocore_signs_it() -> None:
    creds = ReadOnlyCredentials("ASIAFAKE0000000000001", "secret/key+1", "token==")
    url = ("https://bedrock-runtime.us-east-1.amazonaws.com/model/"
           "anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream")
    headers = {"Content-Type": "application/json",
               "Accept": "application/vnd.amazon.eventstream"}
    when = dt.datetime(2026, 12, 5, 23, 59, 59)
    signer = SigV4Signer(creds, "us-east-1", "bedrock")
    got: dict[str, Any] = dict(signed(signer, url, b'{"messages":[]}', headers, when))
    assert list(got) == ["Content-Type", "Accept", "X-Amz-Date", "X-Amz-Security-Token",
                         "Authorization"]
    assert got["Authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=ASIAFAKE0000000000001/20261205/us-east-1/bedrock/"
        "aws4_request, SignedHeaders=accept;content-type;host;x-amz-date;"
        "x-amz-security-token, Signature=")
    assert list(got.items()) == botocore_headers(creds, "us-east-1", url, b'{"messages":[]}',
                                                 headers, when)
