"""routes.yaml for kind bedrock: region required (and only for it), the default endpoint,
the credential fields and what they mean (chain, keys, bearer, none)."""

from __future__ import annotations

import textwrap

import pytest

from anyrouter_proxy.config.loader import ConfigError, parse_config
from anyrouter_proxy.config.model import Config


def load(provider: str) -> Config:
    return parse_config(textwrap.dedent("""\
        version: 1
        providers:
          aws: {%s}
        models:
          m:
            routes: [{provider: aws, model: anthropic.claude-3-haiku-20240307-v1:0}]
        """) % provider, environ={})


def problems(provider: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(provider)
    return [f"{p.path}: {p.message}" for p in caught.value.problems]


def test_default_endpoint_follows_the_region() -> None:
    provider = load("kind: bedrock, region: eu-central-1").providers["aws"]
    assert provider.base_url == "https://bedrock-runtime.eu-central-1.amazonaws.com"
    assert provider.region == "eu-central-1"


def test_base_url_overrides_the_endpoint() -> None:
    provider = load("kind: bedrock, region: us-west-2, base_url: 'https://vpce.example/'"
                    ).providers["aws"]
    assert provider.base_url == "https://vpce.example"


def test_region_is_required_and_checked() -> None:
    assert any(p.startswith("providers.aws:") and "region" in p
               for p in problems("kind: bedrock"))
    assert any(p.startswith("providers.aws.region") for p in problems(
        "kind: bedrock, region: 'US East'"))


def test_aws_fields_belong_to_kind_bedrock() -> None:
    found = problems("kind: openai, base_url: 'https://x.example', region: us-east-1")
    assert any(p.startswith("providers.aws.region") for p in found)


def test_a_key_id_needs_its_secret() -> None:
    assert any("aws_secret_access_key" in p for p in problems(
        "kind: bedrock, region: us-east-1, aws_access_key_id: AKIAEXAMPLE"))
    assert any("aws_access_key_id" in p for p in problems(
        "kind: bedrock, region: us-east-1, aws_session_token: token"))


@pytest.mark.parametrize(("fields", "source", "usable"), [
    ("", "chain", True),
    ("aws_profile: prod", "chain", True),
    ("aws_access_key_id: AKIAEXAMPLE, aws_secret_access_key: s3cret", "keys", True),
    ("api_key: ABSKexample", "bearer", True),
    ("api_key: ABSKexample, aws_access_key_id: AKIA, aws_secret_access_key: s", "bearer", True),
    ("api_key: '', aws_access_key_id: AKIAEXAMPLE, aws_secret_access_key: s3cret", "keys", True),
    ("api_key: ''", "none", False),
    ("aws_access_key_id: '', aws_secret_access_key: ''", "none", False),
])
def test_where_credentials_come_from(fields: str, source: str, usable: bool) -> None:
    provider = load(f"kind: bedrock, region: us-east-1, {fields}".rstrip(", ")
                    ).providers["aws"]
    assert provider.aws_credentials == source
    assert provider.has_credentials is usable


def test_secrets_stay_out_of_the_repr() -> None:
    provider = load("kind: bedrock, region: us-east-1, aws_access_key_id: AKIAEXAMPLE, "
                    "aws_secret_access_key: very-secret-value, aws_session_token: tok-secret"
                    ).providers["aws"]
    assert "very-secret-value" not in repr(provider) and "tok-secret" not in repr(provider)
