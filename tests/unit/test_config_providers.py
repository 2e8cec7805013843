"""Config of providers and wildcard models: kind azure, base_url without query or fragment,
empty headers, stream_options, forward_routing_fields, wildcard pricing and route models,
and bad ids explained in plain sentences."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from anyrouter_proxy.config.loader import ConfigError, ConfigProblem, parse_config
from anyrouter_proxy.config.model import Config, ProviderConfig

AZURE = "https://contoso.openai.azure.com"


def config_text(providers: str, models: str = "", keys: str = "") -> str:
    models = models or """\
        demo/echo:
          routes: [{provider: demo, model: echo}]
        """
    text = ("version: 1\nproviders:\n  demo: {kind: mock}\n"
            + textwrap.indent(textwrap.dedent(providers), "  ")
            + "models:\n" + textwrap.indent(textwrap.dedent(models), "  "))
    if keys:
        text += "keys:\n" + textwrap.indent(textwrap.dedent(keys), "  ")
    return text


def load(text: str, environ: dict[str, str] | None = None) -> Config:
    return parse_config(text, source="routes.yaml", environ=environ or {})


def problems(text: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load(text)
    return info.value.problems


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# --- base_url --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "anthropic", "azure"])
@pytest.mark.parametrize("url", [
    f"{AZURE}/openai/deployments/gpt-4o?api-version=2024-10-21",
    "https://api.example.com/v1?key=abc", "https://api.example.com/v1#frag",
    "https://api.example.com/v1?"])
def test_a_base_url_with_a_query_or_fragment_is_refused(kind: str, url: str) -> None:
    text = config_text(f"""\
        up:
          kind: {kind}
          base_url: "{url}"
          api_key: k
        """)
    [problem] = problems(text)
    assert problem.path == "providers.up.base_url"
    assert problem.line == line_of(text, "base_url")
    assert "must not carry a query string or fragment" in problem.message
    assert ("api_version" in problem.message) is (kind == "azure")


@pytest.mark.parametrize("path", ["/openai", "/openai/", "/openai/v1",
                                  "/openai/deployments/gpt-4o", "/OpenAI/Deployments/x/"])
def test_an_azure_base_url_is_the_resource(path: str) -> None:
    [problem] = problems(config_text(f"""\
        az: {{kind: azure, base_url: "{AZURE}{path}", api_key: k}}
        """))
    assert problem.path == "providers.az.base_url"
    assert "resource URL, such as https://RESOURCE.openai.azure.com" in problem.message


def test_an_azure_base_url_behind_a_gateway_is_fine() -> None:
    config = load(config_text("""\
        az: {kind: azure, base_url: "https://apim.example.com/aoai/", api_key: k}
        """))
    assert config.providers["az"].base_url == "https://apim.example.com/aoai"


# --- kind azure ------------------------------------------------------------------------


def test_azure_fields_and_defaults() -> None:
    config = load(config_text(f"""\
        classic: {{kind: azure, base_url: "{AZURE}", api_version: "2024-10-21", api_key: k}}
        v1: {{kind: azure, base_url: "{AZURE}", headers: {{api-key: k}}}}
        """))
    classic, v1 = config.providers["classic"], config.providers["v1"]
    assert (classic.kind, classic.api_version, classic.api_key) == ("azure", "2024-10-21", "k")
    assert v1.api_version is None and v1.api_key is None and v1.has_credentials
    assert classic.stream_options is True and classic.forward_routing_fields is False


@pytest.mark.parametrize(("fields", "message"), [
    ("api_key: k", None),
    ("headers: {api-key: k}", None),
    ("headers: {Authorization: Bearer entra-token}", None),
    ("headers: {X-Other: v}", "kind azure needs api_key"),
    ("", "kind azure needs api_key"),
])
def test_azure_needs_credentials_somewhere(fields: str, message: str | None) -> None:
    text = config_text(f"""\
        az:
          kind: azure
          base_url: "{AZURE}"
          {fields}
        """)
    if message is None:
        load(text)
        return
    [problem] = problems(text)
    assert problem.path == "providers.az" and message in problem.message


def test_api_version_is_for_azure_only() -> None:
    [problem] = problems(config_text("""\
        oa: {kind: openai, base_url: "https://api.openai.com/v1", api_version: "2024-10-21"}
        """))
    assert (problem.path, problem.message) == ("providers.oa.api_version",
                                               "is for kind azure only")


def test_azure_needs_a_base_url() -> None:
    [problem] = problems(config_text("az: {kind: azure, api_key: k}\n"))
    assert problem.path == "providers.az" and "'base_url' is a required property" in \
        problem.message


def test_a_classic_deployment_name_must_fit_in_a_url() -> None:
    text = config_text(f"""\
        az: {{kind: azure, base_url: "{AZURE}", api_version: "2024-10-21", api_key: k}}
        v1: {{kind: azure, base_url: "{AZURE}", api_key: k}}
        """, """\
        azure/gpt-4o:
          routes: [{provider: az, model: "gpt 4o/../x"}]
        azure/fine:
          routes: [{provider: az, model: gpt-4o.2024_08-06}, {provider: v1, model: "any thing"}]
        """)
    [problem] = problems(text)
    assert problem.path == "models.azure/gpt-4o.routes[0].model"
    assert "'gpt 4o/../x' is not an Azure deployment name" in problem.message


# --- headers, stream_options, forward_routing_fields -----------------------------------------


@pytest.mark.parametrize(("environ", "available"), [({}, False), ({"AZ_KEY": "secret"}, True)])
def test_an_empty_header_means_no_credentials(environ: dict[str, str],
                                              available: bool) -> None:
    config = load(config_text(f"""\
        az:
          kind: azure
          base_url: "{AZURE}"
          headers: {{api-key: "${{AZ_KEY:-}}"}}
        side:
          kind: openai
          base_url: https://api.example.com/v1
          headers: {{X-Team: "${{AZ_KEY:-}}"}}
        """), environ)
    assert config.providers["az"].has_credentials is available
    assert config.providers["side"].has_credentials is available


def test_credentials_of_other_kinds() -> None:
    def provider(**fields: Any) -> ProviderConfig:
        return ProviderConfig(id="p", kind="openai", **fields)

    assert provider().has_credentials  # a local server that needs no key
    assert not provider(api_key="").has_credentials
    assert provider(api_key="k", headers={"X-Title": "app"}).has_credentials
    assert not provider(api_key="k", headers={"X-Title": ""}).has_credentials
    assert ProviderConfig(id="m", kind="mock", headers={"X": ""}).has_credentials


def test_quirk_options_are_loaded() -> None:
    config = load(config_text("""\
        mistral: {kind: openai, base_url: "https://api.mistral.ai/v1", stream_options: false}
        openrouter:
          kind: openai
          base_url: https://openrouter.ai/api/v1
          forward_routing_fields: true
        """))
    assert config.providers["mistral"].stream_options is False
    assert config.providers["openrouter"].forward_routing_fields is True
    assert config.providers["openrouter"].stream_options is True


# --- wildcards ---------------------------------------------------------------------------


def test_a_wildcard_needs_pricing() -> None:
    text = config_text("groq: {kind: openai, base_url: 'https://api.groq.com/openai/v1'}\n",
                       """\
        groq/*:
          routes: [{provider: groq, model: "*"}]
        priced-per-route/*:
          routes: [{provider: groq, model: "*", pricing: {prompt: 1, completion: 1}}]
        free/*:
          pricing: {prompt: 0, completion: 0}
          routes: [{provider: groq, model: "*"}]
        """)
    [problem] = problems(text)
    assert problem.path == "models.groq/*" and problem.line == line_of(text, "groq/*:")
    assert problem.message.startswith("a wildcard model needs pricing")


def test_a_star_in_a_route_model_is_for_wildcards() -> None:
    text = config_text("", """\
        demo/echo:
          routes: [{provider: demo, model: "echo-*"}]
        """)
    [problem] = problems(text)
    assert problem.path == "models.demo/echo.routes[0].model"
    assert "this model is not a wildcard" in problem.message


def test_globs_and_successors_may_point_under_a_wildcard() -> None:
    config = load(config_text("", """\
        demo/*:
          pricing: {prompt: 0, completion: 0}
          routes: [{provider: demo, model: "*"}]
        old/model:
          deprecated: {since: 2025-01-01, successor: demo/echo-2}
          routes: [{provider: demo, model: echo}]
        """, """\
        alice:
          key_sha256: "%s"
          models: ["demo/echo-*"]
          model_limits: {"demo/big-*": {requests_per_minute: 5}}
        """ % ("a" * 64)))
    assert config.keys["alice"].models == ("demo/echo-*",)
    [problem] = problems(config_text("", """\
        demo/*:
          pricing: {prompt: 0, completion: 0}
          routes: [{provider: demo, model: "*"}]
        """, """\
        alice: {key_sha256: "%s", models: ["openai/*"]}
        """ % ("a" * 64)))
    assert problem.message == "'openai/*' matches no model"


@pytest.mark.parametrize(("section", "name", "what"), [
    ("models", "has space", "is not a valid model id"),
    ("models", "groq/*/x", "is not a valid model id"),
    ("models", "*", "is not a valid model id"),
    ("providers", "my provider", "is not a valid provider id"),
    ("keys", "-alice", "is not a valid key name"),
])
def test_bad_ids_are_told_in_a_sentence(section: str, name: str, what: str) -> None:
    entries = {
        "models": f'"{name}": {{routes: [{{provider: demo, model: echo}}]}}\n',
        "providers": f'"{name}": {{kind: mock}}\n',
        "keys": f'"{name}": {{key_sha256: "{"a" * 64}"}}\n',
    }
    text = config_text(entries["providers"] if section == "providers" else "",
                       ("demo/echo: {routes: [{provider: demo, model: echo}]}\n"
                        + (entries["models"] if section == "models" else "")),
                       entries["keys"] if section == "keys" else "")
    [problem] = problems(text)
    assert problem.path == f"{section}.{name}"
    assert problem.line == line_of(text, f'"{name}"')
    assert problem.message.startswith(f"{name!r} {what}: use letters, digits")
    assert "^[" not in problem.message  # no regex
