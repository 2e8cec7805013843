"""routes.yaml loading: YAML -> ${VAR} substitution -> JSON Schema -> cross-checks
-> frozen Config. Every problem carries its YAML path, its line and a message, and all the
problems of a file are reported at once."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import textwrap
from pathlib import Path

import jsonschema
import pytest

from anyrouter_proxy.config.loader import (
    ConfigError,
    ConfigProblem,
    load_config,
    parse_config,
    schema,
    schema_path,
)
from anyrouter_proxy.config.model import Budget, Config, KeyConfig, Limits

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "routes.yaml"
HASH_A = "a" * 64
HASH_B = "b" * 64

# The smallest valid config; most tests append a section to it.
BASE = """\
version: 1
providers:
  demo: {kind: mock}
models:
  demo/echo:
    routes:
      - {provider: demo, model: echo}
"""


def yml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based number of the line holding the nth occurrence of `needle`."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) >= nth, f"{needle!r} not in the test YAML"
    return hits[nth - 1]


def write(tmp_path: Path, text: str, name: str = "routes.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, "utf-8")
    return path


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), environ={} if environ is None else environ)


def parse(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return parse_config(text, source="routes.yaml", base_dir=tmp_path,
                        environ={} if environ is None else environ)


def problems(tmp_path: Path, text: str, environ: dict[str, str] | None = None,
             ) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        parse(tmp_path, text, environ)
    assert info.value.source == "routes.yaml"
    return info.value.problems


def only_problem(tmp_path: Path, text: str, environ: dict[str, str] | None = None,
                 ) -> ConfigProblem:
    found = problems(tmp_path, text, environ)
    assert len(found) == 1, found
    return found[0]


# --- YAML structure -------------------------------------------------------------------


def test_invalid_yaml_syntax_is_one_problem_at_its_line(tmp_path: Path) -> None:
    text = yml("""
        version: 1
        providers:
          demo: kind: mock
        models: {}
    """)
    problem = only_problem(tmp_path, text)
    assert problem.path == ""
    assert problem.line == 3
    assert problem.message.startswith("invalid YAML")
    assert "mapping values are not allowed" in problem.message


def test_unclosed_flow_mapping_is_invalid_yaml(tmp_path: Path) -> None:
    text = "version: 1\nproviders: {demo: {kind: mock}\nmodels:\n  x: 1\n"
    problem = only_problem(tmp_path, text)
    assert problem.path == ""
    assert problem.line == 3
    assert "invalid YAML" in problem.message


def test_top_level_list_is_rejected(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "- version: 1\n- providers: {}\n")
    assert problem.path == ""
    assert problem.line == 1
    assert "is not of type 'object'" in problem.message


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing but a comment\n"])
def test_empty_file_is_rejected(tmp_path: Path, text: str) -> None:
    problem = only_problem(tmp_path, text)
    assert problem.path == ""
    assert problem.line is None  # an empty document has no line to point at
    assert "empty" in problem.message


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, environ={})
    [problem] = info.value.problems
    assert info.value.source == str(missing)
    assert problem.line is None
    assert "cannot read config" in problem.message


# --- duplicate keys -------------------------------------------------------------------


def test_duplicate_top_level_key(tmp_path: Path) -> None:
    text = BASE + "version: 1\n"
    problem = only_problem(tmp_path, text)
    assert problem.path == "version"
    assert problem.line == 8
    assert problem.message == "duplicate key 'version' (first at line 1)"


def test_duplicate_provider_id(tmp_path: Path) -> None:
    text = yml("""
        version: 1
        providers:
          demo: {kind: mock}
          demo: {kind: mock}
        models:
          demo/echo: {routes: [{provider: demo, model: echo}]}
    """)
    problem = only_problem(tmp_path, text)
    assert problem.path == "providers.demo"
    assert problem.line == 4
    assert "duplicate key 'demo' (first at line 3)" in problem.message


def test_duplicate_key_in_nested_mapping(tmp_path: Path) -> None:
    text = yml("""
        version: 1
        providers:
          demo:
            kind: mock
            kind: openai
        models:
          demo/echo: {routes: [{provider: demo, model: echo}]}
    """)
    problem = only_problem(tmp_path, text)
    assert problem.path == "providers.demo.kind"
    assert problem.line == 5
    assert "duplicate key 'kind' (first at line 4)" in problem.message


def test_duplicate_key_is_not_a_silent_override(tmp_path: Path) -> None:
    text = BASE.replace("  demo: {kind: mock}\n", "  demo: {kind: mock}\n  demo: {kind: foo}\n")
    with pytest.raises(ConfigError):
        parse(tmp_path, text)


def test_duplicate_block_mapping_key_names_the_line_of_the_first_key(tmp_path: Path) -> None:
    text = yml("""
        version: 1
        providers:
          demo:
            kind: mock
          demo:
            kind: mock
        models:
          demo/echo: {routes: [{provider: demo, model: echo}]}
    """)
    problem = only_problem(tmp_path, text)
    assert (problem.path, problem.line) == ("providers.demo", 5)
    assert "(first at line 3)" in problem.message  # `demo:` is on line 3, not 4


# --- ${VAR} substitution --------------------------------------------------------------

OPENAI = yml("""
    version: 1
    providers:
      oa:
        kind: openai
        base_url: https://api.example.com/v1
        api_key: {api_key}
    models:
      m: {{routes: [{{provider: oa, model: m}}]}}
""")


def openai_with(api_key: str) -> str:
    return OPENAI.format(api_key=api_key)


def test_var_is_substituted(tmp_path: Path) -> None:
    config = parse(tmp_path, openai_with("${OA_KEY}"), {"OA_KEY": "sk-upstream"})
    assert config.providers["oa"].api_key == "sk-upstream"


def test_var_default_used_when_unset(tmp_path: Path) -> None:
    config = parse(tmp_path, openai_with("${OA_KEY:-fallback}"), {})
    assert config.providers["oa"].api_key == "fallback"


def test_var_default_ignored_when_set(tmp_path: Path) -> None:
    config = parse(tmp_path, openai_with("${OA_KEY:-fallback}"), {"OA_KEY": "real"})
    assert config.providers["oa"].api_key == "real"


def test_var_empty_default_gives_empty_string(tmp_path: Path) -> None:
    config = parse(tmp_path, openai_with("${OA_KEY:-}"), {})
    assert config.providers["oa"].api_key == ""


def test_missing_var_without_default_is_a_problem(tmp_path: Path) -> None:
    text = openai_with("${OA_KEY}")
    problem = only_problem(tmp_path, text, {"OTHER": "x"})
    assert problem.path == "providers.oa.api_key"
    assert problem.line == line_of(text, "api_key:")
    assert "environment variable OA_KEY is not set" in problem.message


def test_environ_argument_replaces_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OA_KEY", "from-process")
    problem = only_problem(tmp_path, openai_with("${OA_KEY}"), {})
    assert "OA_KEY" in problem.message


def test_var_substituted_inside_a_longer_string(tmp_path: Path) -> None:
    text = openai_with("k").replace("https://api.example.com/v1",
                                    "http://${HOST:-localhost}:${PORT}/v1")
    config = parse(tmp_path, text, {"PORT": "9000"})
    assert config.providers["oa"].base_url == "http://localhost:9000/v1"


def test_substituted_value_is_not_expanded_again(tmp_path: Path) -> None:
    config = parse(tmp_path, openai_with("${OA_KEY}"), {"OA_KEY": "${SECRET}", "SECRET": "x"})
    assert config.providers["oa"].api_key == "${SECRET}"


def test_every_missing_var_is_reported(tmp_path: Path) -> None:
    text = openai_with("${OA_KEY}").replace(
        "    api_key:", "    headers: {X-Org: \"org-${OA_ORG}\"}\n    api_key:")
    found = problems(tmp_path, text)
    assert [(p.path, p.line) for p in found] == [
        ("providers.oa.headers.X-Org", line_of(text, "headers:")),
        ("providers.oa.api_key", line_of(text, "api_key:")),
    ]
    assert "OA_ORG" in found[0].message
    assert "OA_KEY" in found[1].message


# --- providers and credentials --------------------------------------------------------


def test_empty_api_key_keeps_provider_without_credentials(tmp_path: Path) -> None:
    config = parse(tmp_path, openai_with("${OA_KEY:-}"), {})
    assert "oa" in config.providers
    assert config.providers["oa"].has_credentials is False


def test_absent_api_key_means_no_key_needed(tmp_path: Path) -> None:
    text = openai_with("DROP").replace("    api_key: DROP\n", "")
    config = parse(tmp_path, text)
    provider = config.providers["oa"]
    assert provider.api_key is None
    assert provider.has_credentials is True


def test_mock_provider_needs_no_base_url_nor_key(tmp_path: Path) -> None:
    provider = parse(tmp_path, BASE).providers["demo"]
    assert provider.kind == "mock"
    assert provider.base_url == ""
    assert provider.has_credentials is True


def test_connection_pool_and_timeout_defaults(tmp_path: Path) -> None:
    config = parse(tmp_path, BASE)
    provider = config.providers["demo"]
    assert (provider.max_connections, provider.per_key_connections) == (256, None)
    assert provider.connections_per_key == 128
    server = config.server
    assert (server.write_timeout_s, server.keepalive_timeout_s) == (30.0, 75.0)
    assert server.retry_slow_answers is False


def test_connection_pool_and_timeouts_as_written(tmp_path: Path) -> None:
    text = BASE.replace("  demo: {kind: mock}\n", "  demo: {kind: mock, max_connections: 10, "
                        "per_key_connections: 4}\n") + yml("""
        server: {write_timeout_s: 5, keepalive_timeout_s: 2.5, retry_slow_answers: true}
        """)
    config = parse(tmp_path, text)
    assert config.providers["demo"].connections_per_key == 4
    assert config.providers["demo"].max_connections == 10
    assert (config.server.write_timeout_s, config.server.keepalive_timeout_s,
            config.server.retry_slow_answers) == (5, 2.5, True)


def test_a_key_share_larger_than_the_pool_is_an_error(tmp_path: Path) -> None:
    text = BASE.replace("  demo: {kind: mock}\n", "  demo: {kind: mock, per_key_connections: "
                        "300}\n")
    problem = only_problem(tmp_path, text)
    assert problem.path == "providers.demo.per_key_connections"
    assert "300" in problem.message and "max_connections (256)" in problem.message


@pytest.mark.parametrize("field", ["max_connections: 0", "per_key_connections: 0",
                                   "max_connections: 1.5"])
def test_pool_sizes_are_positive_integers(tmp_path: Path, field: str) -> None:
    text = BASE.replace("  demo: {kind: mock}\n", f"  demo: {{kind: mock, {field}}}\n")
    assert only_problem(tmp_path, text).path.startswith("providers.demo.")


@pytest.mark.parametrize("field", ["write_timeout_s", "keepalive_timeout_s"])
def test_connection_timeouts_must_be_positive(tmp_path: Path, field: str) -> None:
    assert only_problem(tmp_path, BASE + f"server: {{{field}: 0}}\n").path == f"server.{field}"


def test_base_url_trailing_slash_is_dropped(tmp_path: Path) -> None:
    text = openai_with("k").replace("/v1", "/v1/")
    assert parse(tmp_path, text).providers["oa"].base_url == "https://api.example.com/v1"


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_upstream_kind_without_base_url_is_an_error(tmp_path: Path, kind: str) -> None:
    text = BASE.replace("  demo: {kind: mock}\n",
                        f"  demo: {{kind: mock}}\n  up: {{kind: {kind}}}\n")
    problem = only_problem(tmp_path, text)
    assert problem.path == "providers.up"
    assert problem.line == 4
    assert "'base_url' is a required property" in problem.message


def test_block_provider_without_base_url_is_reported_at_its_key(tmp_path: Path) -> None:
    text = yml("""
        version: 1
        providers:
          up:
            kind: openai
        models:
          m: {routes: [{provider: up, model: m}]}
    """)
    problem = only_problem(tmp_path, text)
    assert problem.path == "providers.up"
    assert problem.line == 3  # `up:`; the loader says 4 (`kind: openai`)


# --- schema errors --------------------------------------------------------------------


def test_unknown_top_level_field(tmp_path: Path) -> None:
    text = "colour: red\n" + BASE
    problem = only_problem(tmp_path, text)
    assert problem.path == "colour"
    assert problem.line == 1
    assert problem.message.startswith("unknown field")
    assert "'colour'" in problem.message


def test_unknown_top_level_field_is_reported_at_its_own_line(tmp_path: Path) -> None:
    text = BASE + "colour: red\n"
    problem = only_problem(tmp_path, text)
    assert "'colour'" in problem.message
    assert problem.line == line_of(text, "colour:")


def test_unknown_field_in_provider(tmp_path: Path) -> None:
    text = BASE.replace("{kind: mock}", "{kind: mock, colour: red}")
    problem = only_problem(tmp_path, text)
    assert problem.path == "providers.demo.colour"
    assert problem.line == 3
    assert "unknown field" in problem.message
    assert "'colour'" in problem.message


def test_port_as_string_is_a_type_error(tmp_path: Path) -> None:
    text = BASE + 'server:\n  host: 0.0.0.0\n  port: "8080"\n'
    problem = only_problem(tmp_path, text)
    assert problem.path == "server.port"
    assert problem.line == line_of(text, "port:")
    assert "'8080' is not of type 'integer'" in problem.message


def test_unknown_provider_kind(tmp_path: Path) -> None:
    text = BASE.replace("{kind: mock}", "{kind: foo}")
    problem = only_problem(tmp_path, text)
    assert problem.path == "providers.demo.kind"
    assert problem.line == 3
    assert "'foo' is not one of" in problem.message
    assert "'mock'" in problem.message


@pytest.mark.parametrize("digest", ["abc", "A" * 64, "a" * 63, "g" * 64, "a" * 65])
def test_bad_key_sha256_format(tmp_path: Path, digest: str) -> None:
    text = BASE + f"keys:\n  alice:\n    key_sha256: '{digest}'\n"
    problem = only_problem(tmp_path, text)
    assert problem.path == "keys.alice.key_sha256"
    assert problem.line == line_of(text, "key_sha256:")
    assert f"'{digest}' is not in the expected form" == problem.message


@pytest.mark.parametrize("version", ["2", "0", "'1'", "1.5"])
def test_version_must_be_1(tmp_path: Path, version: str) -> None:
    text = BASE.replace("version: 1", f"version: {version}")
    problem = only_problem(tmp_path, text)
    assert problem.path == "version"
    assert problem.line == 1
    assert "1 was expected" in problem.message


def test_version_is_required(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, BASE.replace("version: 1\n", ""))
    assert (problem.path, problem.line) == ("", 1)
    assert "'version' is a required property" in problem.message


def test_models_section_is_required(tmp_path: Path) -> None:
    text = "version: 1\nproviders:\n  demo: {kind: mock}\n"
    problem = only_problem(tmp_path, text)
    assert problem.path == ""
    assert problem.line == 1
    assert "'models' is a required property" in problem.message


def test_routes_must_not_be_empty(tmp_path: Path) -> None:
    text = BASE.replace("    routes:\n      - {provider: demo, model: echo}\n", "    routes: []\n")
    problem = only_problem(tmp_path, text)
    assert problem.path == "models.demo/echo.routes"
    assert problem.line == line_of(text, "routes:")
    assert "should be non-empty" in problem.message


def test_negative_pricing(tmp_path: Path) -> None:
    text = BASE.replace("    routes:", "    pricing: {prompt: 1, completion: -0.5}\n    routes:")
    problem = only_problem(tmp_path, text)
    assert problem.path == "models.demo/echo.pricing.completion"
    assert problem.line == line_of(text, "pricing:")
    assert "-0.5 is less than the minimum of 0" in problem.message


# --- cross-checks ---------------------------------------------------------------------


def test_route_to_unknown_provider_lists_known_ones(tmp_path: Path) -> None:
    text = yml("""
        version: 1
        providers:
          zeta: {kind: mock}
          alpha: {kind: mock}
        models:
          m:
            routes:
              - {provider: alpha, model: m}
              - {provider: nope, model: m}
    """)
    problem = only_problem(tmp_path, text)
    assert problem.path == "models.m.routes[1].provider"
    assert problem.line == line_of(text, "provider: nope")
    assert problem.message == "unknown provider 'nope' (known: alpha, zeta)"


def test_key_allow_list_glob_matching_no_model(tmp_path: Path) -> None:
    text = BASE + yml(f"""
        keys:
          alice:
            key_sha256: {HASH_A}
            models:
              - "demo/*"
              - "openai/*"
    """)
    problem = only_problem(tmp_path, text)
    assert problem.path == "keys.alice.models[1]"
    assert problem.line == line_of(text, "openai/*")
    assert problem.message == "'openai/*' matches no model"


def test_model_limits_glob_matching_no_model(tmp_path: Path) -> None:
    text = BASE + yml(f"""
        keys:
          alice:
            key_sha256: {HASH_A}
            model_limits:
              "demo/*": {{requests_per_minute: 5}}
              "gpt-*": {{requests_per_minute: 5}}
    """)
    problem = only_problem(tmp_path, text)
    assert problem.path == "keys.alice.model_limits.gpt-*"
    assert problem.line == line_of(text, "gpt-*")
    assert "'gpt-*' matches no model" in problem.message


def test_deprecated_successor_must_be_a_model(tmp_path: Path) -> None:
    text = BASE.replace("    routes:", "    deprecated:\n      since: 2024-01-01\n"
                        "      successor: demo/echo-2\n    routes:")
    problem = only_problem(tmp_path, text)
    assert problem.path == "models.demo/echo.deprecated.successor"
    assert problem.line == line_of(text, "successor:")
    assert "'demo/echo-2' is not a model" in problem.message


def test_deprecated_sunset_before_since(tmp_path: Path) -> None:
    text = BASE.replace("    routes:", "    deprecated:\n      since: 2024-06-01\n"
                        "      sunset: 2024-05-31\n    routes:")
    problem = only_problem(tmp_path, text)
    assert problem.path == "models.demo/echo.deprecated.sunset"
    assert problem.line == line_of(text, "sunset:")
    assert "sunset is before since" in problem.message


def test_deprecated_sunset_on_since_is_allowed(tmp_path: Path) -> None:
    text = BASE.replace("    routes:", "    deprecated: {since: 2024-06-01, sunset: 2024-06-01}\n"
                        "    routes:")
    deprecated = parse(tmp_path, text).models["demo/echo"].deprecated
    assert deprecated is not None
    assert deprecated.since == deprecated.sunset == dt.date(2024, 6, 1)


def test_two_keys_with_the_same_digest(tmp_path: Path) -> None:
    text = BASE + f"keys:\n  alice:\n    key_sha256: {HASH_A}\n  bob:\n    key_sha256: {HASH_A}\n"
    problem = only_problem(tmp_path, text)
    assert problem.path == "keys.bob.key_sha256"
    assert problem.line == line_of(text, "key_sha256:", nth=2)
    assert "same key as 'alice'" in problem.message


def test_impossible_expires_at_date(tmp_path: Path) -> None:
    text = BASE + f"keys:\n  alice:\n    key_sha256: {HASH_A}\n    expires_at: 2025-02-30\n"
    problem = only_problem(tmp_path, text)
    assert problem.path == "keys.alice.expires_at"
    assert problem.line == line_of(text, "expires_at:")
    assert "not a valid date or date-time" in problem.message


def test_malformed_expires_at(tmp_path: Path) -> None:
    text = BASE + f"keys:\n  alice:\n    key_sha256: {HASH_A}\n    expires_at: next tuesday\n"
    found = problems(tmp_path, text)
    # Reported by the schema (form) and again by the cross-check (not a date): same place.
    assert {(p.path, p.line) for p in found} == {
        ("keys.alice.expires_at", line_of(text, "expires_at:"))}
    assert "'next tuesday' is not in the expected form" in [p.message for p in found]


@pytest.mark.parametrize(("written", "expected"), [
    ("2025-01-01", dt.datetime(2025, 1, 1, tzinfo=dt.UTC)),
    ('"2025-01-01"', dt.datetime(2025, 1, 1, tzinfo=dt.UTC)),
    ("2025-01-01T10:30:00Z", dt.datetime(2025, 1, 1, 10, 30, tzinfo=dt.UTC)),
    ("2025-01-01 12:30:00+02:00", dt.datetime(2025, 1, 1, 10, 30, tzinfo=dt.UTC)),
])
def test_expires_at_forms(tmp_path: Path, written: str, expected: dt.datetime) -> None:
    text = BASE + f"keys:\n  alice:\n    key_sha256: {HASH_A}\n    expires_at: {written}\n"
    expires = parse(tmp_path, text).keys["alice"].expires_at
    assert expires == expected
    assert expires is not None and expires.tzinfo is not None


# --- pricing of what metered keys reach -------------------------------------------------

TWO_ROUTES = """\
version: 1
providers:
  a: {kind: mock}
  b: {kind: mock}
models:
  demo/echo:
    routes:
      - {provider: a, model: echo}
      - {provider: b, model: echo}
  free/model:
    pricing: {prompt: 0, completion: 0}
    routes:
      - {provider: a, model: free}
"""


def credit_key(extra: str = "") -> str:
    return f"keys:\n  alice:\n    key_sha256: {HASH_A}\n    credits: 5\n{extra}"


def test_a_model_without_pricing_that_a_credit_key_may_use_is_an_error(
        tmp_path: Path) -> None:
    text = TWO_ROUTES + credit_key()
    problem = only_problem(tmp_path, text)
    assert problem.path == "models.demo/echo.pricing"
    assert problem.line == line_of(text, "demo/echo:")
    assert "key 'alice' has credits or a budget" in problem.message
    assert "routes via a, b have no pricing" in problem.message
    assert "pricing: {prompt: 0, completion: 0}" in problem.message


def test_explicit_zero_pricing_is_free_on_purpose(tmp_path: Path) -> None:
    config = parse(tmp_path, TWO_ROUTES.replace(
        "  demo/echo:\n", "  demo/echo:\n    pricing: {prompt: 0, completion: 0}\n")
        + credit_key())
    model = config.models["demo/echo"]
    assert model.priced and (model.pricing.prompt, model.pricing.completion) == (0, 0)
    assert not parse(tmp_path, TWO_ROUTES).models["demo/echo"].priced


def test_pricing_on_every_route_is_enough(tmp_path: Path) -> None:
    text = TWO_ROUTES.replace("{provider: a, model: echo}",
                              "{provider: a, model: echo, pricing: {prompt: 1}}")
    text = text.replace("{provider: b, model: echo}",
                        "{provider: b, model: echo, pricing: {prompt: 2, completion: 3}}")
    config = parse(tmp_path, text + credit_key())
    assert [r.pricing.prompt for r in config.models["demo/echo"].routes
            if r.pricing is not None] == [1, 2]


def test_one_unpriced_route_is_enough_for_the_error(tmp_path: Path) -> None:
    text = TWO_ROUTES.replace("{provider: a, model: echo}",
                              "{provider: a, model: echo, pricing: {prompt: 1}}")
    problem = only_problem(tmp_path, text + credit_key())
    assert problem.path == "models.demo/echo.pricing"
    assert "routes via b have no pricing" in problem.message


def test_an_unpriced_model_outside_the_allow_list_of_credit_keys_is_fine(
        tmp_path: Path) -> None:
    config = parse(tmp_path, TWO_ROUTES + credit_key('    models: ["free/*"]\n'))
    assert config.keys["alice"].credits == 5
    found = problems(tmp_path, TWO_ROUTES + credit_key('    models: ["free/*", "demo/*"]\n'))
    assert [p.path for p in found] == ["models.demo/echo.pricing"]


def test_an_unpriced_model_is_fine_when_no_key_has_credits(tmp_path: Path) -> None:
    text = TWO_ROUTES + f"keys:\n  bob: {{key_sha256: {HASH_B}}}\n"
    assert parse(tmp_path, text).models["demo/echo"].pricing.prompt == 0


def test_a_key_with_a_budget_is_metered_too(tmp_path: Path) -> None:
    text = TWO_ROUTES + f"keys:\n  team:\n    key_sha256: {HASH_B}\n" \
        "    budget: {usd: 5, period: day}\n"
    problem = only_problem(tmp_path, text)
    assert problem.path == "models.demo/echo.pricing"
    assert "key 'team' has credits or a budget" in problem.message


def test_every_metered_key_is_counted_in_the_message(tmp_path: Path) -> None:
    text = TWO_ROUTES + credit_key() + f"  bob: {{key_sha256: {HASH_B}, credits: 1}}\n"
    problem = only_problem(tmp_path, text)
    assert "key 'alice' (and 1 more) has credits or a budget" in problem.message


def test_billed_extras_are_priced_fields(tmp_path: Path) -> None:
    text = TWO_ROUTES.replace(
        "    pricing: {prompt: 0, completion: 0}\n",
        "    pricing: {prompt: 3, completion: 15, cache_write: 3.75, web_search: 0.01,"
        " request: 0.005}\n")
    pricing = parse(tmp_path, text).models["free/model"].pricing
    assert (pricing.cache_write, pricing.web_search, pricing.request) == (3.75, 0.01, 0.005)
    unpriced = parse(tmp_path, TWO_ROUTES).models["free/model"].pricing
    assert (unpriced.cache_write, unpriced.web_search, unpriced.request) == (None, None, None)
    problem = only_problem(tmp_path, text.replace("web_search: 0.01", "web_search: -1"))
    assert problem.path == "models.free/model.pricing.web_search"


# --- all problems at once -------------------------------------------------------------


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    text = yml(f"""
        version: 1
        providers:
          demo: {{kind: mock}}
          oa: {{kind: openai, base_url: "https://x.example/v1", api_key: "${{OA_KEY}}"}}
          demo: {{kind: mock}}
        server:
          port: "80"
        models:
          demo/echo:
            routes:
              - {{provider: ghost, model: echo}}
        keys:
          alice: {{key_sha256: {HASH_A}}}
    """)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    found = {(p.path, p.line): p.message for p in info.value.problems}
    assert len(info.value.problems) == 4
    assert "OA_KEY" in found[("providers.oa.api_key", 4)]
    assert "duplicate key 'demo'" in found[("providers.demo", 5)]
    assert "not of type 'integer'" in found[("server.port", 7)]
    assert "unknown provider 'ghost'" in found[("models.demo/echo.routes[0].provider", 11)]
    rendered = str(info.value).splitlines()
    assert len(rendered) == 4
    assert f"{path}:7: server.port: '80' is not of type 'integer'" in rendered


def test_problem_render_format() -> None:
    assert ConfigProblem("a.b", 3, "bad").render("x.yaml") == "x.yaml:3: a.b: bad"
    assert ConfigProblem("", None, "bad").render("x.yaml") == "x.yaml: <root>: bad"


# --- dates ----------------------------------------------------------------------------


@pytest.mark.parametrize(("since", "sunset"), [
    ("2024-05-01", "2024-09-30"),
    ('"2024-05-01"', '"2024-09-30"'),
    ("'2024-05-01'", "2024-09-30"),
])
def test_deprecation_dates_quoted_or_not(tmp_path: Path, since: str, sunset: str) -> None:
    text = BASE.replace(
        "    routes:",
        f"    deprecated:\n      since: {since}\n      sunset: {sunset}\n    routes:")
    deprecated = parse(tmp_path, text).models["demo/echo"].deprecated
    assert deprecated is not None
    assert type(deprecated.since) is dt.date
    assert type(deprecated.sunset) is dt.date
    assert (deprecated.since, deprecated.sunset) == (dt.date(2024, 5, 1), dt.date(2024, 9, 30))
    assert deprecated.successor is None


def test_impossible_deprecation_date(tmp_path: Path) -> None:
    text = BASE.replace("    routes:", "    deprecated:\n      since: 2024-02-30\n    routes:")
    problem = only_problem(tmp_path, text)
    assert problem.path == "models.demo/echo.deprecated.since"
    assert problem.line == line_of(text, "since:")
    assert "'2024-02-30' is not a 'date'" in problem.message


# --- paths ----------------------------------------------------------------------------


def test_relative_sqlite_path_resolved_against_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    write(tmp_path, BASE + "storage:\n  sqlite_path: ../var/usage.db\n", "conf/routes.yaml")
    config = load_config(Path("..") / "conf" / "routes.yaml", environ={})
    assert config.storage.sqlite_path == (tmp_path / "var" / "usage.db").resolve()
    assert config.storage.sqlite_path.is_absolute()


def test_relative_sqlite_path_with_parse_config_uses_base_dir(tmp_path: Path) -> None:
    config = parse(tmp_path, BASE + "storage:\n  sqlite_path: data/u.db\n")
    assert config.storage.sqlite_path == (tmp_path / "data" / "u.db").resolve()


def test_absolute_sqlite_path_kept(tmp_path: Path) -> None:
    target = tmp_path / "abs" / "usage.db"
    config = load(tmp_path / "conf", BASE + f"storage:\n  sqlite_path: {target}\n")
    assert config.storage.sqlite_path == target


# --- defaults -------------------------------------------------------------------------


def test_server_defaults(tmp_path: Path) -> None:
    server = parse(tmp_path, BASE).server
    assert (server.host, server.port) == ("127.0.0.1", 8080)


def test_server_section_overrides(tmp_path: Path) -> None:
    server = parse(tmp_path, BASE + "server: {host: 0.0.0.0, port: 9999}\n").server
    assert (server.host, server.port) == ("0.0.0.0", 9999)


def test_key_without_limits_gets_builtin_default_limits(tmp_path: Path) -> None:
    key = parse(tmp_path, BASE + f"keys:\n  alice: {{key_sha256: {HASH_A}}}\n").keys["alice"]
    assert key.limits == Limits(requests_per_minute=1000, tokens_per_minute=None,
                                concurrent_requests=None)


def test_key_without_limits_gets_configured_default_limits(tmp_path: Path) -> None:
    text = (BASE + "server:\n  default_limits: {requests_per_minute: 30, concurrent_requests: 2}\n"
            + f"keys:\n  alice: {{key_sha256: {HASH_A}}}\n")
    key = parse(tmp_path, text).keys["alice"]
    assert key.limits == Limits(requests_per_minute=30, concurrent_requests=2)


def test_key_with_only_token_limit_still_gets_request_limit(tmp_path: Path) -> None:
    text = (BASE + f"keys:\n  alice:\n    key_sha256: {HASH_A}\n"
            "    limits: {tokens_per_minute: 500}\n")
    key = parse(tmp_path, text).keys["alice"]
    assert key.limits.tokens_per_minute == 500
    assert key.limits.requests_per_minute == 1000


def test_key_own_limits_win(tmp_path: Path) -> None:
    text = (BASE + f"keys:\n  alice:\n    key_sha256: {HASH_A}\n"
            "    limits: {requests_per_minute: 7, concurrent_requests: 1}\n")
    limits = parse(tmp_path, text).keys["alice"].limits
    assert (limits.requests_per_minute, limits.concurrent_requests) == (7, 1)


def test_key_optional_fields_default(tmp_path: Path) -> None:
    key = parse(tmp_path, BASE + f"keys:\n  alice: {{key_sha256: {HASH_A}}}\n").keys["alice"]
    assert key.credits is None
    assert key.budget is None
    assert key.models is None
    assert key.disabled is False
    assert key.expires_at is None


@pytest.mark.parametrize("period", ["day", "week", "month"])
def test_key_budget_beside_or_instead_of_credits(tmp_path: Path, period: str) -> None:
    priced = BASE.replace("  demo/echo:\n", "  demo/echo:\n    pricing: {prompt: 1}\n")
    text = (priced + f"keys:\n  alice:\n    key_sha256: {HASH_A}\n"
            f"    budget: {{usd: 50, period: {period}}}\n"
            f"  bob:\n    key_sha256: {HASH_B}\n    credits: 10\n"
            f"    budget: {{usd: 0.5, period: {period}}}\n")
    keys = parse(tmp_path, text).keys
    assert keys["alice"].budget == Budget(usd=50.0, period=period)
    assert isinstance(keys["alice"].budget.usd, float) and keys["alice"].credits is None
    assert (keys["bob"].credits, keys["bob"].budget) == (10.0, Budget(0.5, period))


@pytest.mark.parametrize(("budget", "path", "message"), [
    ("{usd: -1, period: day}", "keys.alice.budget.usd", "less than the minimum of 0"),
    ("{usd: 5, period: year}", "keys.alice.budget.period", "'year' is not one of"),
    ("{usd: 5}", "keys.alice.budget", "'period' is a required property"),
    ("{period: day}", "keys.alice.budget", "'usd' is a required property"),
    ("{usd: '5', period: day}", "keys.alice.budget.usd", "is not of type 'number'"),
    ("{usd: 5, period: day, reset: daily}", "keys.alice.budget.reset", "unknown field"),
    ("50", "keys.alice.budget", "is not of type 'object'"),
])
def test_bad_key_budget(tmp_path: Path, budget: str, path: str, message: str) -> None:
    text = BASE + f"keys:\n  alice:\n    key_sha256: {HASH_A}\n    budget: {budget}\n"
    problem = only_problem(tmp_path, text)
    assert problem.path == path
    assert problem.line == line_of(text, "budget:")
    assert message in problem.message


def test_example_has_a_key_with_a_budget(example: Config) -> None:
    assert any(key.budget is not None for key in example.keys.values())


def test_route_priority_defaults_to_position_and_weight_to_1(tmp_path: Path) -> None:
    text = yml("""
        version: 1
        providers: {a: {kind: mock}, b: {kind: mock}, c: {kind: mock}}
        models:
          m:
            routes:
              - {provider: a, model: x}
              - {provider: b, model: x}
              - {provider: c, model: x}
    """)
    routes = parse(tmp_path, text).models["m"].routes
    assert [(r.provider, r.priority, r.weight) for r in routes] == [
        ("a", 0, 1.0), ("b", 1, 1.0), ("c", 2, 1.0)]


def test_route_explicit_priority_and_weight_kept(tmp_path: Path) -> None:
    text = yml("""
        version: 1
        providers: {a: {kind: mock}, b: {kind: mock}}
        models:
          m:
            routes:
              - {provider: a, model: x, priority: 5, weight: 3}
              - {provider: b, model: x}
    """)
    routes = parse(tmp_path, text).models["m"].routes
    assert [(r.provider, r.priority, r.weight) for r in routes] == [("a", 5, 3.0), ("b", 1, 1.0)]


def test_keys_section_is_optional(tmp_path: Path) -> None:
    config = parse(tmp_path, BASE)
    assert dict(config.keys) == {}
    assert dict(config.keys_by_hash) == {}


def test_keys_by_hash_maps_digest_to_key(tmp_path: Path) -> None:
    text = BASE + f"keys:\n  alice: {{key_sha256: {HASH_A}}}\n  bob: {{key_sha256: {HASH_B}}}\n"
    config = parse(tmp_path, text)
    assert set(config.keys_by_hash) == {HASH_A, HASH_B}
    alice = config.keys_by_hash[HASH_A]
    assert isinstance(alice, KeyConfig)
    assert alice.name == "alice"
    assert alice is config.keys["alice"]
    assert config.keys_by_hash[HASH_B].name == "bob"


# --- YAML tags -----------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "version: 1\nproviders:\n  demo: {kind: mock, api_key: !secret FOO}\n",
    "version: 1\nx: &d {kind: mock}\nproviders:\n  demo:\n    <<: *d\n",
    "version: !!int one\nproviders:\n  demo: {kind: mock}\n",
])
def test_yaml_tag_errors_are_config_problems(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        parse(tmp_path, text)


# --- the example config and the schema ------------------------------------------------


@pytest.fixture(scope="module")
def example() -> Config:
    return load_config(EXAMPLE, environ={})


def test_example_config_loads_with_empty_environment(example: Config) -> None:
    assert example.version == 1
    assert example.path == EXAMPLE


def test_example_has_the_demo_mock_provider(example: Config) -> None:
    demo = example.providers["demo"]
    assert demo.kind == "mock"
    assert demo.has_credentials is True


def test_example_upstreams_have_no_credentials_without_env(example: Config) -> None:
    assert example.providers["openai"].has_credentials is False
    assert example.providers["anthropic"].has_credentials is False


def test_example_has_the_demo_echo_model(example: Config) -> None:
    model = example.models["demo/echo"]
    assert [(r.provider, r.model) for r in model.routes] == [("demo", "echo")]


def test_example_demo_key_matches_the_plain_key_in_its_comment(example: Config) -> None:
    text = EXAMPLE.read_text("utf-8")
    block = text[text.index("\n  demo:\n", text.index("\nkeys:")):]
    match = re.search(r"#.*?\b(sk-ar-[A-Za-z0-9_-]+)", block)
    assert match is not None, "the demo key's comment names no plain key"
    digest = hashlib.sha256(match.group(1).encode()).hexdigest()
    assert example.keys["demo"].key_sha256 == digest
    assert example.keys_by_hash[digest].name == "demo"


def test_example_first_line_points_at_the_packaged_schema() -> None:
    first = EXAMPLE.read_text("utf-8").splitlines()[0]
    prefix = "# yaml-language-server: $schema="
    assert first.startswith(prefix)
    target = (EXAMPLE.parent / first[len(prefix):].strip()).resolve()
    assert target.is_file()
    assert target.samefile(schema_path())


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(schema())
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_function_returns_the_packaged_file() -> None:
    assert schema() == json.loads(schema_path().read_text("utf-8"))


def test_merge_keys_are_supported(tmp_path: Path) -> None:
    text = ("version: 1\nproviders:\n  a: &base {kind: openai, base_url: 'http://x/v1'}\n"
            "  b:\n    <<: *base\n    base_url: 'http://y/v1'\n"
            "models:\n  m: {routes: [{provider: b, model: z}]}\n")
    config = parse(tmp_path, text)
    assert config.providers["b"].kind == "openai"
    assert config.providers["b"].base_url == "http://y/v1"
