"""How upstream failures are classified and told to the client (docs/api.md, "Errors")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config.model import ModelConfig, ProviderConfig
from .error_bodies import GOOGLE_KEY_REASON_PREFIX, google_details, read_error_body
from .errors import (
    ProxyError,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
    error_for_status,
)
from .redaction import redact

PASSTHROUGH_STATUSES = frozenset({400, 404, 413, 422})  # the request's fault: returned as is
CREDENTIAL_STATUSES = frozenset({401, 403})  # the gateway's own misconfiguration
PASSTHROUGH_CODES = {400: "invalid_request", 404: "not_found", 413: "request_too_large",
                     422: "invalid_request"}  # when the upstream gave no code of its own


def should_fail_over(exc: ProxyError) -> bool:
    """Another route may succeed where this one failed."""
    return exc.status not in PASSTHROUGH_STATUSES


def worth_retrying(exc: ProxyError) -> bool:
    """The same route may succeed later: connection errors, timeouts, 429, 5xx."""
    if (exc.metadata or {}).get("provider_status") in CREDENTIAL_STATUSES:
        return False
    return exc.status == 429 or exc.status >= 500


def counts_against_health(exc: ProxyError, *, streamed: bool = True) -> bool:
    """Failures that say the provider is unwell. Rate limiting does not, nor time spent
    waiting for a free connection of our own pool, nor a non-stream answer that is slow
    to come back once the upstream has the request (the client chose its length)."""
    if isinstance(exc, UpstreamTimeout) and (exc.stage == "pool" or slow_answer(exc, streamed)):
        return False
    return exc.status >= 500 and exc.code != "internal_error"


def slow_answer(exc: ProxyError, streamed: bool) -> bool:
    """A non-stream request that timed out after the upstream accepted it: it may still be
    generating (and billing) there, so it is not sent again unless the config says so."""
    return not streamed and isinstance(exc, UpstreamTimeout) and exc.stage == "answer"


def retry_after_s(exc: ProxyError) -> float | None:
    value = exc.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def upstream_failure(config: ProviderConfig, status: int, raw: bytes,
                     headers: Mapping[str, str] | None) -> ProxyError:
    """An upstream error answer, as the error the client (or failover) sees."""
    provider = config.id
    said = read_error_body(raw)
    message, code, param = said.message, said.code, said.param
    message = redact(message, config) if message else message
    meta = {"provider_name": provider, "provider_status": status, **said.metadata}
    reason, retry_delay = google_details(raw) if status in (400, 429) else (None, None)
    if status == 400 and reason is not None and reason.startswith(GOOGLE_KEY_REASON_PREFIX):
        status = meta["provider_status"] = 401  # Google's answer to a bad key: ours to fix
    if status in PASSTHROUGH_STATUSES:
        return error_for_status(status, message or f"Provider {provider} rejected the request",
                                code=code or PASSTHROUGH_CODES[status], param=param,
                                metadata=meta)
    if status in CREDENTIAL_STATUSES:
        what = "Google credentials" if config.kind == "vertex" else "api_key"
        return UpstreamError(f"Provider {provider} rejected the gateway's credentials "
                             f"({status}); check its {what}", metadata=meta)
    if status == 429:
        retry_after = (headers.get("Retry-After") if headers is not None else None) \
            or retry_delay
        # A 429 always says when to come back; 1 s when the upstream did not.
        extra = {"Retry-After": retry_after if retry_after and retry_after.isdigit() else "1"}
        return RateLimited(f"Provider {provider} is rate limiting the gateway",
                           code="upstream_rate_limited", metadata=meta, headers=extra)
    detail = f": {message}" if message else ""
    return UpstreamError(f"Provider {provider} failed with status {status}{detail}",
                         metadata=meta)


def final_error(model: ModelConfig, failures: list[ProxyError],
                skipped: list[str]) -> ProxyError:
    """One error that says what was tried: 429 if all were rate limited, 504 if all timed
    out, else 502; 503 when nothing could be tried."""
    if not failures:
        why = f" (skipped: {', '.join(dict.fromkeys(skipped))})" if skipped else ""
        return ServiceUnavailable(f"No provider is available for model {model.id} right "
                                  f"now{why}", metadata={"skipped": list(dict.fromkeys(skipped))})
    names = [str((f.metadata or {}).get("provider_name", "?")) for f in failures]
    if len(set(names)) == 1:  # one provider (retried or not): its own last failure
        failure = failures[-1]
        failure.metadata = {**(failure.metadata or {}), "attempts": names}
        return failure
    tried = ", ".join(f"{name} ({f.status} {f.code})" for name, f in zip(names, failures,
                                                                          strict=True))
    meta: dict[str, Any] = {"attempts": names}
    if all(isinstance(f, RateLimited) for f in failures):
        return RateLimited(f"Every provider of {model.id} is rate limiting: {tried}",
                           code="upstream_rate_limited", metadata=meta,
                           headers=failures[-1].headers)
    if all(isinstance(f, UpstreamTimeout) for f in failures):
        return UpstreamTimeout(f"Every provider of {model.id} timed out: {tried}", metadata=meta)
    return UpstreamError(f"Every provider of {model.id} failed: {tried}", metadata=meta)
