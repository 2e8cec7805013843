"""AWS credentials and request signing for kind bedrock, done by AWS's own botocore (in
`aws_identity.py`, imported only once a bedrock provider exists).

Where a provider's credentials come from (`ProviderConfig.aws_credentials`):

| config | credentials | request auth |
|---|---|---|
| `api_key` | a Bedrock API key | `Authorization: Bearer` |
| `aws_access_key_id`, `aws_secret_access_key` (`aws_session_token`) | those | SigV4 |
| none of them | botocore's standard chain (for `aws_profile`) | SigV4 |

The chain is a botocore session's: environment, shared files, SSO, container and instance
roles; a Bedrock API key in `AWS_BEARER_TOKEN_BEDROCK` wins, as in AWS's SDKs.

Nothing here blocks the event loop: the chain is resolved in a thread at start (`open`)
and, after a reload, in the background for providers whose credentials changed (a request
that reaches one before it is resolved waits for it). Temporary credentials are refreshed
in a thread when botocore says they need it, one refresh shared by every request waiting.
A provider whose chain found nothing is unavailable (`no_credentials`) until a reload
looks again. `sign` runs after the gateway's last change to the body: SigV4 signs exactly
the bytes that are sent (service `bedrock`, the provider's region).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from ..config.model import ProviderConfig

if TYPE_CHECKING:
    from .aws_identity import AwsIdentity

Source = tuple[str | None, ...]


def credential_source(provider: ProviderConfig) -> Source:
    """What a provider's credentials depend on: an identity is kept while this holds."""
    return (provider.region, provider.api_key, provider.aws_access_key_id,
            provider.aws_secret_access_key, provider.aws_session_token, provider.aws_profile)


def _identity(provider: ProviderConfig) -> AwsIdentity:
    from .aws_identity import AwsIdentity  # botocore: imported once a bedrock provider exists

    return AwsIdentity(provider)


class AwsAuth:
    """The identities of the config's bedrock providers, by provider id."""

    def __init__(self, providers: Iterable[ProviderConfig] = ()) -> None:
        self._identities: dict[str, AwsIdentity] = {}
        self._adopt(providers)

    def _adopt(self, providers: Iterable[ProviderConfig]) -> list[AwsIdentity]:
        """Keep the identities whose source is unchanged and that have credentials (a
        chain that found none looks again); returns the new ones."""
        kept, fresh = {}, []
        for provider in providers:
            if provider.kind != "bedrock":
                continue
            identity = self._identities.get(provider.id)
            if identity is None or identity.source != credential_source(provider) \
                    or not identity.available:
                identity = _identity(provider)
                fresh.append(identity)
            kept[provider.id] = identity
        for pid, identity in self._identities.items():
            if kept.get(pid) is not identity:
                identity.cancel()
        self._identities = kept
        return fresh

    async def open(self) -> None:
        """Resolve every identity (at start, before serving)."""
        pending = [task for identity in self._identities.values()
                   if (task := identity.start()) is not None]
        if pending:
            await asyncio.gather(*pending)

    def reconfigure(self, providers: Iterable[ProviderConfig]) -> None:
        """After a reload: new or changed providers resolve in the background."""
        fresh = self._adopt(providers)
        with contextlib.suppress(RuntimeError):  # no running loop: they resolve on first use
            asyncio.get_running_loop()
            for identity in fresh:
                identity.start()

    def available(self, provider: ProviderConfig) -> bool:
        identity = self._identities.get(provider.id)
        return identity is None or identity.available

    async def sign(self, provider: ProviderConfig, url: str, body: bytes,
                   headers: Mapping[str, str]) -> dict[str, str]:
        """`headers` plus the request's auth headers, for exactly `url` and `body`."""
        identity = self._identities.get(provider.id)
        if identity is None or identity.source != credential_source(provider):
            identity = _identity(provider)  # a config this process has not adopted
        return await identity.sign(url, body, headers)

    async def close(self) -> None:
        for identity in self._identities.values():
            identity.cancel()
