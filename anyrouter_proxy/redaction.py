"""Keeping the gateway's own secrets out of what clients see."""

from __future__ import annotations

from .config.model import ProviderConfig
from .errors import ProxyError

MIN_SECRET_LENGTH = 6  # shorter values are not secrets worth masking (and mask too much)


def redact_error(exc: ProxyError, provider: ProviderConfig) -> ProxyError:
    """The same error, its message masked (for errors built from upstream text)."""
    exc.message = redact(exc.message, provider)
    exc.args = (exc.message,)
    return exc


def redact(text: str, provider: ProviderConfig) -> str:
    """An upstream's message with the provider's own secrets (its key or AWS secrets, its
    configured header values) masked: upstreams sometimes echo them back."""
    for secret in (provider.api_key, provider.aws_secret_access_key, provider.aws_session_token,
                   *provider.headers.values()):
        if secret and len(secret) >= MIN_SECRET_LENGTH and secret in text:
            text = text.replace(secret, "***")
    return text
