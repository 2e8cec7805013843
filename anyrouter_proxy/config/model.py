"""Frozen dataclasses: the validated routes.yaml that the rest of the proxy reads."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_REQUESTS_PER_MINUTE = 1000
DEFAULT_MAX_TOKENS = 4096
DEFAULT_MAX_CONNECTIONS = 256  # per provider and process
GEMINI_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
VERTEX_BASE_URL = "https://{location}-aiplatform.googleapis.com/v1"  # location "global":
VERTEX_GLOBAL_BASE_URL = "https://aiplatform.googleapis.com/v1"
WILDCARD_SUFFIX = "/*"  # a model id ending so serves every id under its prefix


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float = 5.0
    first_byte_s: float = 120.0
    idle_s: float = 60.0
    total_s: float = 600.0


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-minute buckets and a concurrency cap; None means unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None


@dataclass(frozen=True, slots=True)
class Pricing:
    """USD per 1M tokens, as written in routes.yaml; the billed extras (None: not priced,
    so refused for metered keys) per 1M cache-write tokens, per web search, per request."""

    prompt: float = 0.0
    completion: float = 0.0
    cached_prompt: float | None = None
    reasoning: float | None = None
    cache_write: float | None = None
    web_search: float | None = None
    request: float | None = None


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    id: str
    kind: str  # openai | anthropic | azure | mock | bedrock | gemini | vertex
    base_url: str = ""
    # None: the upstream needs no key (a local server); "": credentials missing, so the
    # provider stays configured but unavailable (`no_credentials`, docs/configuration.md).
    api_key: str | None = None
    timeouts: Timeouts = Timeouts()
    headers: Mapping[str, str] = field(default_factory=dict)
    limits: Limits | None = None  # protects an upstream quota
    anthropic_version: str = "2023-06-01"
    circuit_failures: int = 5
    circuit_cooldown_s: float = 30.0
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # this process's pool to the provider
    per_key_connections: int | None = None  # None: half of max_connections, rounded up
    project: str | None = None  # vertex: the Google Cloud project
    location: str | None = None  # vertex: the region (or "global")
    # vertex: an absolute path, None for application default credentials, "" when the
    # configured file (or the default credentials) could not be found: no_credentials.
    credentials_file: str | None = None
    # How an OpenAI response_format is served on an anthropic-kind provider: "tool" (a
    # forced tool, any model) or "native" (output_config.format, newer models).
    structured_output: str = "tool"
    # kind bedrock: the AWS region, and credentials other than a bearer api_key (absent:
    # the standard AWS chain, for the named profile when aws_profile is set).
    region: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_session_token: str | None = field(default=None, repr=False)
    aws_profile: str | None = None
    api_version: str | None = None  # azure: classic deployments; None: the v1 API
    stream_options: bool = True  # False: never send stream_options upstream
    forward_routing_fields: bool = False  # pass provider/models/route/transforms upstream
    # openai kind: the upstream serves the Responses API itself (POST /responses is passed
    # through rather than translated to chat/completions).
    native_responses: bool = False

    @property
    def has_credentials(self) -> bool:
        """Its credentials are set (or none needed), and no header is left empty by
        `${VAR:-}`: an empty header is never sent, so the provider waits for its value."""
        if self.kind == "mock":
            return True
        if not all(self.headers.values()):
            return False
        if self.kind == "bedrock":
            return self.aws_credentials != "none"
        return self.api_key != "" and self.credentials_file != ""

    @property
    def aws_credentials(self) -> str:
        """Kind bedrock: where its credentials come from. `bearer`: api_key (a Bedrock API
        key); `keys`: the aws_* fields; `chain`: none of them written (environment, shared
        files, instance role); `none`: written but empty, like an empty api_key."""
        if self.api_key:
            return "bearer"
        if self.aws_access_key_id and self.aws_secret_access_key:
            return "keys"
        written = (self.api_key, self.aws_access_key_id, self.aws_secret_access_key)
        return "chain" if all(value is None for value in written) else "none"

    @property
    def connections_per_key(self) -> int:
        """How many requests one key may have in flight to this provider at once."""
        if self.per_key_connections is not None:
            return self.per_key_connections
        return max(1, -(-self.max_connections // 2))


@dataclass(frozen=True, slots=True)
class Route:
    provider: str
    model: str
    priority: int
    weight: float = 1.0
    pricing: Pricing | None = None  # overrides the model's pricing for this route
    structured_output: str | None = None  # overrides the provider's for this route


@dataclass(frozen=True, slots=True)
class Deprecation:
    since: dt.date
    sunset: dt.date | None = None
    successor: str | None = None


@dataclass(frozen=True, slots=True)
class ModelConfig:
    id: str
    routes: tuple[Route, ...]
    name: str | None = None
    description: str | None = None
    context_length: int | None = None
    max_output_tokens: int | None = None
    pricing: Pricing = Pricing()
    deprecated: Deprecation | None = None
    created: int = 0
    priced: bool = True  # False: routes.yaml wrote no `pricing` for the model itself
    # A concrete model served by a wildcard entry (`groq/*`): that entry's id.
    wildcard: str | None = None

    @property
    def is_wildcard(self) -> bool:
        """The wildcard entry itself, as written in the config (`groq/*`)."""
        return self.id.endswith(WILDCARD_SUFFIX)


@dataclass(frozen=True, slots=True)
class Budget:
    """USD a key may spend per UTC period: day, week (from Monday) or month."""

    usd: float
    period: str  # day | week | month


@dataclass(frozen=True, slots=True)
class KeyConfig:
    name: str
    key_sha256: str
    limits: Limits
    credits: float | None = None  # USD; None = unlimited
    budget: Budget | None = None  # per period, beside or instead of credits
    models: tuple[str, ...] | None = None  # allow-list globs; None = all
    model_limits: Mapping[str, Limits] = field(default_factory=dict)
    disabled: bool = False
    expires_at: dt.datetime | None = None
    admin: bool = False  # may read every key's generations, batches, activity and responses


def is_metered(key: KeyConfig) -> bool:
    """Is the key's spending capped (credits or a budget)? Then every model it may reach
    must be priced, and billed extras must be priced or are refused."""
    return key.credits is not None or key.budget is not None


@dataclass(frozen=True, slots=True)
class CorsConfig:
    allow_origins: tuple[str, ...] = ()  # empty: CORS off
    allow_headers: tuple[str, ...] = ("Authorization", "Content-Type", "x-api-key",
                                      "anthropic-version", "anthropic-beta",
                                      "X-AnyRouter-Provider", "X-AnyRouter-Trace-Id")
    max_age_s: int = 600


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 10 * 1024 * 1024
    body_timeout_s: float = 30.0
    default_limits: Limits = Limits(requests_per_minute=DEFAULT_REQUESTS_PER_MINUTE)
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    metrics_token: str | None = None
    shutdown_grace_s: float = 30.0
    sse_keepalive: bool = True
    sse_keepalive_interval_s: float = 5.0
    log_level: str = "info"
    log_format: str | None = None  # json | text; None: text on a terminal, else json
    trusted_proxies: tuple[str, ...] = ()
    cors: CorsConfig = CorsConfig()
    retries: int = 1
    retry_backoff_s: float = 0.25
    retry_backoff_max_s: float = 4.0
    retry_after_max_s: float = 10.0
    retry_slow_answers: bool = False  # retry a non-stream request the upstream accepted
    write_timeout_s: float = 30.0  # a client that reads nothing for this long is dropped
    keepalive_timeout_s: float = 75.0  # idle keep-alive, and the whole request head
    # Signs the dashboard's session cookies; None: a secret generated at first start and
    # kept in the usage database (shared by replicas).
    dashboard_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class StorageConfig:
    sqlite_path: Path = Path("data/anyrouter.db")
    backend: str = "sqlite"  # sqlite | postgres
    dsn: str | None = field(default=None, repr=False)  # postgres; may hold a password
    retention_days: int | None = None
    queue_max: int = 10000
    flush_interval_s: float = 0.2
    audit_queue_max: int = 1000


@dataclass(frozen=True, slots=True)
class StateConfig:
    backend: str = "memory"  # memory | redis
    url: str | None = None
    key_prefix: str = "anyrouter:"
    timeout_s: float = 0.5
    limits_on_error: str = "open"  # open: this process's buckets; closed: 503
    credits_on_error: str = "closed"


@dataclass(frozen=True, slots=True)
class BatchConfig:
    max_items: int = 1000
    max_concurrency: int = 8


@dataclass(frozen=True, slots=True)
class ReloadConfig:
    watch: bool = False
    interval_s: float = 1.0


@dataclass(frozen=True, slots=True)
class Config:
    path: Path | None
    server: ServerConfig
    storage: StorageConfig
    providers: Mapping[str, ProviderConfig]
    models: Mapping[str, ModelConfig]
    keys: Mapping[str, KeyConfig]
    keys_by_hash: Mapping[str, KeyConfig] = field(default_factory=dict)
    reload: ReloadConfig = ReloadConfig()
    batch: BatchConfig = BatchConfig()
    state: StateConfig = StateConfig()
    deprecations: Mapping[str, Deprecation] = field(default_factory=dict)  # by endpoint path
    version: int = 1
    # The wildcard entries of `models` (`groq/*`), longest prefix first: see wildcards.py.
    wildcards: tuple[ModelConfig, ...] = ()
