"""routes.yaml -> JSON Schema -> cross-checks -> frozen `Config` (docs/configuration.md).

Every problem is collected and reported at once, each with its YAML path and line.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import ipaddress
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jsonschema
import yaml

from .google_credentials import vertex_credentials
from .model import (
    DEFAULT_MAX_CONNECTIONS,
    GEMINI_BASE_URL,
    VERTEX_BASE_URL,
    VERTEX_GLOBAL_BASE_URL,
    BatchConfig,
    Budget,
    Config,
    CorsConfig,
    Deprecation,
    KeyConfig,
    Limits,
    ModelConfig,
    Pricing,
    ProviderConfig,
    ReloadConfig,
    Route,
    ServerConfig,
    StateConfig,
    StorageConfig,
    Timeouts,
    is_metered,
)
from .provider_checks import model_problems, provider_problems
from .structured_checks import structured_output_problems
from .wildcards import glob_may_match, resolves, wildcard_entries

PathItems = tuple[str | int, ...]
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
# Sections whose keys are names, and how a bad name is explained (not with a regex).
_NAME_RULES = {
    "providers": "is not a valid provider id: use letters, digits and _ . - (at most 64 "
                 "characters, starting with a letter or digit)",
    "keys": "is not a valid key name: use letters, digits and _ . - (at most 64 "
            "characters, starting with a letter or digit)",
    "models": "is not a valid model id: use letters, digits and _ . : / @ + - (at most 200 "
              "characters, starting with a letter or digit), or end it in /* to serve every "
              "id under a prefix (such as groq/*)",
}
_MERGE_TAG = "tag:yaml.org,2002:merge"
BEDROCK_RUNTIME_URL = "https://bedrock-runtime.{region}.amazonaws.com"
AWS_FIELDS = ("region", "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
              "aws_profile")


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    path: str
    line: int | None
    message: str

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        return f"{where}: {self.path or '<root>'}: {self.message}"


class ConfigError(Exception):
    """An invalid config; `problems` lists every one found."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(p.render(source) for p in problems))


class _Loader(yaml.SafeLoader):
    """Safe loader that keeps dates as strings, so quoted and bare dates read alike."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _TIMESTAMP_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@cache
def schema() -> dict[str, Any]:
    text = resources.files("anyrouter_proxy.config").joinpath("schema.json").read_text("utf-8")
    result: dict[str, Any] = json.loads(text)
    return result


def schema_path() -> Path:
    return Path(str(resources.files("anyrouter_proxy.config").joinpath("schema.json")))


def render_path(items: PathItems) -> str:
    out = ""
    for item in items:
        out += f"[{item}]" if isinstance(item, int) else (f".{item}" if out else item)
    return out


class _Builder:
    """Turns a composed YAML node tree into plain data, noting lines and problems."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.lines: dict[PathItems, int] = {}
        self.problems: list[ConfigProblem] = []
        self._scalars = _Loader("")

    def build(self, node: yaml.Node, path: PathItems = ()) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child, (*path, i)) for i, child in enumerate(node.value)]
        value = self._scalar(node, path)
        if isinstance(value, str) and "${" in value:
            value = self._substitute(value, path)
        return value

    def _scalar(self, node: yaml.Node, path: PathItems) -> Any:
        try:
            return self._scalars.construct_object(node)
        except (yaml.YAMLError, ValueError) as exc:
            reason = getattr(exc, "problem", None) or str(exc)
            self._problem(path, node.start_mark.line + 1, f"invalid value: {reason}")
            return None

    def _mapping(self, node: yaml.MappingNode, path: PathItems) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        merged: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:  # `<<: *defaults`: explicit keys win
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) \
                    else [value_node]
                for source in sources:
                    value = self.build(source, path)
                    if isinstance(value, dict):
                        merged = {**value, **merged}
                    else:
                        self._problem(path, key_node.start_mark.line + 1,
                                      "a merge key (<<) must refer to a mapping")
                continue
            key = self._scalar(key_node, path)
            if not isinstance(key, str | int | float | bool) and key is not None:
                self._problem(path, key_node.start_mark.line + 1, "mapping keys must be scalars")
                continue
            key = str(key)
            child = (*path, key)
            if key in result:
                self._problem(child, key_node.start_mark.line + 1,
                              f"duplicate key {key!r} (first at line {self.lines[child]})")
                continue
            self.lines[child] = key_node.start_mark.line + 1  # problems point at the key
            result[key] = self.build(value_node, child)
        return {**merged, **result}

    def _substitute(self, text: str, path: PathItems) -> str:
        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in self.environ:
                return self.environ[name]
            if default is not None:
                return default
            self._problem(path, self.lines.get(path), f"environment variable {name} is not set "
                          f"(write ${{{name}:-}} to make it optional)")
            return ""

        return _ENV_REF.sub(replace, text)

    def _problem(self, path: PathItems, line: int | None, message: str) -> None:
        self.problems.append(ConfigProblem(render_path(path), line, message))


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Load, validate and freeze a routes.yaml; raises ConfigError listing every problem."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [ConfigProblem("", None, f"cannot read config: {exc}")]) from exc
    return parse_config(text, source=source, base_dir=path.resolve().parent, environ=environ)


def parse_config(
    text: str,
    *,
    source: str = "<config>",
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    builder = _Builder(os.environ if environ is None else environ)
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(source, [ConfigProblem("", line, f"invalid YAML: {exc}")]) from exc
    if node is None:
        raise ConfigError(source, [ConfigProblem("", None, "the file is empty: expected a "
                                                 "mapping with version, providers and models")])
    data: Any = builder.build(node)
    problems = list(builder.problems)
    for error in _validator().iter_errors(data):
        problems.extend(_schema_problems(error, builder.lines))
    if isinstance(data, dict):
        problems.extend(_cross_check(data, builder.lines))
    if problems:
        raise ConfigError(source, _first_per_path(problems))
    config = _freeze(data, base_dir or Path.cwd(), Path(source) if base_dir else None,
                     builder.environ)
    problems = list(_unpriced(config, builder.lines))  # needs the keys as frozen
    if problems:
        raise ConfigError(source, problems)
    return config


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def _line_of(lines: Mapping[PathItems, int], items: PathItems) -> int | None:
    while items not in lines and items:
        items = items[:-1]
    return lines.get(items)


def _schema_problems(error: jsonschema.ValidationError,
                     lines: Mapping[PathItems, int]) -> Iterator[ConfigProblem]:
    items = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        for name in error.instance:
            if name not in known:  # one problem per unknown field, at its own line
                field_path = (*items, name)
                yield ConfigProblem(render_path(field_path), _line_of(lines, field_path),
                                    f"unknown field {name!r}")
        return
    if error.validator == "pattern" and "propertyNames" in error.schema_path:
        section = str(items[-1]) if items else ""
        if section in _NAME_RULES and isinstance(error.instance, str):
            name_path = (*items, error.instance)  # the offending key, at its own line
            yield ConfigProblem(render_path(name_path), _line_of(lines, name_path),
                                f"{error.instance!r} {_NAME_RULES[section]}")
            return
        message = str(error.message)
    elif error.validator == "pattern":
        message = f"{error.instance!r} is not in the expected form"
    else:
        message = str(error.message)
    yield ConfigProblem(render_path(items), _line_of(lines, items), message)


def _first_per_path(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    """One problem per path (the first found: its cause), in line order."""
    seen: dict[str, ConfigProblem] = {}
    for problem in problems:
        if problem.path not in seen or problem.message.startswith("duplicate key"):
            seen.setdefault(problem.path + ("#dup" if problem.path in seen else ""), problem)
    return sorted(seen.values(), key=lambda p: (p.line or 0))


def _dicts(value: Any) -> dict[str, dict[str, Any]]:
    """The entries of a section that are mappings; schema errors report the others."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(v, dict)}


def _cross_check(data: dict[str, Any], lines: Mapping[PathItems, int]) -> Iterator[ConfigProblem]:
    """What JSON Schema cannot express: references between sections. Runs on a
    possibly schema-invalid document, so every access is guarded."""

    def problem(items: PathItems, message: str) -> ConfigProblem:
        return ConfigProblem(render_path(items), _line_of(lines, items), message)

    providers = _dicts(data.get("providers"))
    models = _dicts(data.get("models"))
    for items, message in (*provider_problems(providers), *model_problems(models, providers),
                           *structured_output_problems(providers, models)):
        yield problem(items, message)
    for pid, provider in providers.items():
        if provider.get("kind") != "bedrock":
            for aws_field in AWS_FIELDS:
                if aws_field in provider:
                    yield problem(("providers", pid, aws_field), "only kind bedrock reads it")
        per_key = provider.get("per_key_connections")
        pool = provider.get("max_connections", DEFAULT_MAX_CONNECTIONS)
        if isinstance(per_key, int) and isinstance(pool, int) and per_key > pool:
            yield problem(("providers", pid, "per_key_connections"),
                          f"{per_key} is more than the pool's max_connections ({pool})")
    for model_id, model in models.items():
        routes = model.get("routes")
        for i, route in enumerate(routes if isinstance(routes, list) else []):
            name = route.get("provider") if isinstance(route, dict) else None
            if isinstance(name, str) and name not in providers:
                yield problem(("models", model_id, "routes", i, "provider"),
                              f"unknown provider {name!r} (known: {', '.join(sorted(providers))})")
        deprecated = model.get("deprecated")
        deprecated = deprecated if isinstance(deprecated, dict) else {}
        successor = deprecated.get("successor")
        if isinstance(successor, str) and not resolves(models, successor):
            yield problem(("models", model_id, "deprecated", "successor"),
                          f"successor {successor!r} is not a model of this config")
        since, sunset = str(deprecated.get("since", "")), str(deprecated.get("sunset", "~"))
        if since and sunset < since:
            yield problem(("models", model_id, "deprecated", "sunset"), "sunset is before since")
    server = data.get("server")
    proxies = server.get("trusted_proxies") if isinstance(server, dict) else None
    for i, entry in enumerate(proxies if isinstance(proxies, list) else []):
        try:
            ipaddress.ip_network(str(entry), strict=False)
        except ValueError:
            yield problem(("server", "trusted_proxies", i),
                          f"{entry!r} is not an IP address or CIDR network")
    storage = data.get("storage")
    dsn = storage.get("dsn") if isinstance(storage, dict) else None
    if isinstance(dsn, str) and dsn and not dsn.startswith(("postgresql://", "postgres://")):
        # The value is not echoed: it may hold a password.
        yield problem(("storage", "dsn"), "must be a postgresql:// URL, such as "
                      "postgresql://anyrouter@127.0.0.1:5432/anyrouter")
    seen_hashes: dict[str, str] = {}
    for name, key in _dicts(data.get("keys")).items():
        patterns = key.get("models")
        for i, pattern in enumerate(patterns if isinstance(patterns, list) else []):
            if isinstance(pattern, str) and not glob_may_match(pattern, models):
                yield problem(("keys", name, "models", i), f"{pattern!r} matches no model")
        for pattern in _dicts(key.get("model_limits")):
            if not glob_may_match(pattern, models):
                yield problem(("keys", name, "model_limits", pattern),
                              f"{pattern!r} matches no model")
        digest = key.get("key_sha256")
        if isinstance(digest, str) and digest in seen_hashes:
            yield problem(("keys", name, "key_sha256"),
                          f"same key as {seen_hashes[digest]!r}: each key must be distinct")
        if isinstance(digest, str):
            seen_hashes[digest] = name
        expires = key.get("expires_at")
        if isinstance(expires, str) and _parse_datetime(expires) is None:
            yield problem(("keys", name, "expires_at"), "not a valid date or date-time")


def _unpriced(config: Config, lines: Mapping[PathItems, int]) -> Iterator[ConfigProblem]:
    """Every model a metered key may reach needs pricing, on the model or on each route:
    without it the model would be free for a key whose spending is capped."""
    metered = [key for key in config.keys.values() if is_metered(key)]
    for model_id, model in config.models.items():
        if model.priced:
            continue
        unpriced = [r.provider for r in model.routes if r.pricing is None]
        users = [key.name for key in metered if key.models is None
                 or any(fnmatch.fnmatchcase(model_id, p) for p in key.models)]
        if not unpriced or not users:
            continue
        items: PathItems = ("models", model_id, "pricing")
        more = f" (and {len(users) - 1} more)" if len(users) > 1 else ""
        yield ConfigProblem(
            render_path(items), _line_of(lines, items),
            f"missing, so the model would cost nothing, yet key {users[0]!r}{more} has "
            f"credits or a budget and may use it (routes via {', '.join(unpriced)} have no "
            "pricing of their own either): write its prices, or pricing: {prompt: 0, "
            "completion: 0} to make it free on purpose")


def _parse_datetime(text: str) -> dt.datetime | None:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _limits(raw: Mapping[str, Any] | None, fallback: Limits | None = None) -> Limits:
    raw = raw or {}
    fallback = fallback or Limits()
    return Limits(
        requests_per_minute=raw.get("requests_per_minute", fallback.requests_per_minute),
        tokens_per_minute=raw.get("tokens_per_minute", fallback.tokens_per_minute),
        concurrent_requests=raw.get("concurrent_requests", fallback.concurrent_requests),
    )


def _freeze(data: dict[str, Any], base_dir: Path, path: Path | None,
            environ: Mapping[str, str]) -> Config:
    raw_server = dict(data.get("server") or {})
    default_limits = _limits(raw_server.pop("default_limits", None),
                             ServerConfig().default_limits)
    cors = raw_server.pop("cors", {})
    server = ServerConfig(
        default_limits=default_limits,
        trusted_proxies=tuple(raw_server.pop("trusted_proxies", ())),
        cors=CorsConfig(
            allow_origins=tuple(cors.get("allow_origins", ())),
            allow_headers=tuple(cors.get("allow_headers", CorsConfig().allow_headers)),
            max_age_s=cors.get("max_age_s", CorsConfig().max_age_s)),
        **raw_server)
    raw_storage = dict(data.get("storage") or {})
    sqlite_path = Path(raw_storage.pop("sqlite_path", StorageConfig().sqlite_path))
    if not sqlite_path.is_absolute():
        sqlite_path = (base_dir / sqlite_path).resolve()
    storage = StorageConfig(sqlite_path=sqlite_path, **raw_storage)
    providers = {pid: _provider(pid, raw, base_dir, environ)
                 for pid, raw in data["providers"].items()}
    models = {mid: _model(mid, raw) for mid, raw in data["models"].items()}
    keys = {name: _key(name, raw, default_limits) for name, raw in (data.get("keys") or {}).items()}
    return Config(
        path=path,
        server=server,
        storage=storage,
        providers=MappingProxyType(providers),
        models=MappingProxyType(models),
        keys=MappingProxyType(keys),
        keys_by_hash=MappingProxyType({k.key_sha256: k for k in keys.values()}),
        reload=ReloadConfig(**data.get("reload", {})),
        batch=BatchConfig(**data.get("batch", {})),
        state=_state(data.get("state") or {}),
        deprecations=MappingProxyType({path: _deprecation(raw) for path, raw
                                       in (data.get("deprecations") or {}).items()}),
        version=data["version"],
        wildcards=wildcard_entries(models.values()),
    )


def _provider(pid: str, raw: Mapping[str, Any], base_dir: Path,
              environ: Mapping[str, str]) -> ProviderConfig:
    google: dict[str, Any] = {}
    if raw["kind"] == "vertex":
        google = {"project": raw["project"], "location": raw["location"],
                  "credentials_file": vertex_credentials(raw.get("credentials_file"), base_dir,
                                                         environ)}
    return ProviderConfig(
        id=pid,
        kind=raw["kind"],
        base_url=(raw.get("base_url") or _default_base_url(raw)).rstrip("/"),
        api_key=raw.get("api_key"),
        timeouts=Timeouts(**raw.get("timeouts", {})),
        headers=MappingProxyType(dict(raw.get("headers", {}))),
        limits=_limits(raw["limits"]) if "limits" in raw else None,
        **_given(raw, anthropic_version="anthropic_version", max_connections="max_connections",
                 per_key_connections="per_key_connections", api_version="api_version",
                 stream_options="stream_options",
                 forward_routing_fields="forward_routing_fields",
                 native_responses="native_responses",
                 structured_output="structured_output"),
        **_given(raw, region="region", aws_access_key_id="aws_access_key_id",
                 aws_secret_access_key="aws_secret_access_key",
                 aws_session_token="aws_session_token", aws_profile="aws_profile"),
        **_given(raw.get("circuit", {}), circuit_failures="failures",
                 circuit_cooldown_s="cooldown_s"),
        **google,
    )


def _default_base_url(raw: Mapping[str, Any]) -> str:
    """The endpoint of a kind that has a well-known one (the others require base_url)."""
    if raw["kind"] == "bedrock":
        return BEDROCK_RUNTIME_URL.format(region=raw["region"])
    if raw["kind"] == "gemini":
        return GEMINI_BASE_URL
    if raw["kind"] == "vertex":
        location = raw["location"]
        return VERTEX_GLOBAL_BASE_URL if location == "global" \
            else VERTEX_BASE_URL.format(location=location)
    return ""


def _given(raw: Mapping[str, Any], **fields: str) -> dict[str, Any]:
    """The dataclass fields (field=key in `raw`) the file sets; the others keep the
    dataclass's default, the one place it is written."""
    return {name: raw[key] for name, key in fields.items() if key in raw}


def _model(mid: str, raw: Mapping[str, Any]) -> ModelConfig:
    routes = tuple(
        Route(provider=r["provider"], model=r["model"], priority=r.get("priority", i),
              weight=float(r.get("weight", 1)),
              pricing=Pricing(**r["pricing"]) if "pricing" in r else None,
              structured_output=r.get("structured_output"))
        for i, r in enumerate(raw["routes"])
    )
    deprecated = raw.get("deprecated")
    return ModelConfig(
        id=mid,
        routes=routes,
        name=raw.get("name"),
        description=raw.get("description"),
        context_length=raw.get("context_length"),
        max_output_tokens=raw.get("max_output_tokens"),
        pricing=Pricing(**raw.get("pricing", {})),
        priced="pricing" in raw,
        deprecated=_deprecation(deprecated) if deprecated else None,
    )


def _state(raw: Mapping[str, Any]) -> StateConfig:
    return StateConfig(**_given(raw, backend="backend", url="url", key_prefix="key_prefix",
                                timeout_s="timeout_s"),
                       **_given(raw.get("on_error", {}), limits_on_error="limits",
                                credits_on_error="credits"))


def _deprecation(raw: Mapping[str, Any]) -> Deprecation:
    return Deprecation(
        since=dt.date.fromisoformat(raw["since"]),
        sunset=dt.date.fromisoformat(raw["sunset"]) if "sunset" in raw else None,
        successor=raw.get("successor"),
    )


def _key(name: str, raw: Mapping[str, Any], default_limits: Limits) -> KeyConfig:
    return KeyConfig(
        name=name,
        key_sha256=raw["key_sha256"],
        limits=_limits(raw.get("limits"), default_limits),
        credits=float(raw["credits"]) if "credits" in raw else None,
        budget=Budget(float(raw["budget"]["usd"]), raw["budget"]["period"])
        if "budget" in raw else None,
        models=tuple(raw["models"]) if "models" in raw else None,
        model_limits=MappingProxyType(
            {glob: _limits(lim) for glob, lim in (raw.get("model_limits") or {}).items()}
        ),
        disabled=bool(raw.get("disabled", False)),
        expires_at=_parse_datetime(raw["expires_at"]) if "expires_at" in raw else None,
        **_given(raw, admin="admin"),
    )
