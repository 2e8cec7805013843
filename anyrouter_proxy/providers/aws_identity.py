"""One bedrock provider's credentials, resolved and refreshed by botocore off the event loop,
and SigV4 or bearer auth for one request (see aws_auth.py for where they come from)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping

from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from botocore.exceptions import BotoCoreError
from botocore.session import Session

from ..config.model import ProviderConfig
from ..errors import UpstreamError
from .aws_auth import credential_source
from .aws_sigv4 import SigV4Signer

log = logging.getLogger(__name__)

SIGNING_NAME = "bedrock"
BEARER_ENV = "AWS_BEARER_TOKEN_BEDROCK"  # AWS's variable for a Bedrock API key

Resolved = tuple[str | None, Credentials | None]  # (bearer token, SigV4 credentials)


def _resolve_chain(profile: str | None) -> Resolved:
    """The standard AWS chain (blocking: run in a thread)."""
    bearer = os.environ.get(BEARER_ENV)
    if bearer:
        return bearer, None
    credentials = Session(profile=profile).get_credentials()
    if credentials is not None:
        credentials.get_frozen_credentials()  # a deferred source fetches now, off the loop
    return None, credentials


class AwsIdentity:
    """One bedrock provider's credentials: resolved once, refreshed when they must be."""

    __slots__ = ("_bearer", "_credentials", "_frozen", "_provider", "_refreshing",
                 "_resolved", "_resolving", "_signer", "source")

    def __init__(self, provider: ProviderConfig) -> None:
        self._provider = provider
        self.source = credential_source(provider)
        self._bearer: str | None = None
        self._credentials: Credentials | None = None
        self._frozen: ReadOnlyCredentials | None = None
        self._resolved = False
        self._resolving: asyncio.Future[None] | None = None
        self._refreshing: asyncio.Future[ReadOnlyCredentials] | None = None
        self._signer: SigV4Signer | None = None  # for the current frozen credentials
        mode = provider.aws_credentials
        if mode == "bearer":
            self._bearer = provider.api_key
        elif mode == "keys":
            self._credentials = Credentials(provider.aws_access_key_id or "",
                                            provider.aws_secret_access_key or "",
                                            provider.aws_session_token or None, method="config")
        if mode != "chain":
            self._resolved = True

    @property
    def available(self) -> bool:
        """False once resolution found nothing (while it runs: True, requests wait)."""
        return not self._resolved or self._bearer is not None or self._credentials is not None

    def start(self) -> asyncio.Future[None] | None:
        """Begin resolving in a thread (once); None when there is nothing to resolve."""
        if self._resolved:
            return None
        if self._resolving is None:
            self._resolving = asyncio.ensure_future(self._resolve())
        return self._resolving

    async def _resolve(self) -> None:
        pid = self._provider.id
        try:
            self._bearer, self._credentials = await asyncio.to_thread(
                _resolve_chain, self._provider.aws_profile)
        except (BotoCoreError, OSError, ValueError) as exc:
            log.warning("provider %s: the AWS credential chain failed: %s: %s", pid,
                        type(exc).__name__, exc)
        finally:
            self._resolved = True
        if self._bearer is not None:
            log.info("provider %s: Bedrock API key from %s", pid, BEARER_ENV)
        elif self._credentials is not None:
            log.info("provider %s: AWS credentials from %s", pid, self._credentials.method)
        else:
            log.warning("provider %s: no AWS credentials found (environment, shared files, "
                        "instance role): unavailable until a reload finds some", pid)

    async def sign(self, url: str, body: bytes, headers: Mapping[str, str]) -> dict[str, str]:
        if not self._resolved:
            started = self.start()
            if started is not None:
                await asyncio.shield(started)
        if self._bearer is not None:
            return {**headers, "Authorization": f"Bearer {self._bearer}"}
        frozen = await self._current()
        signer = self._signer
        if signer is None or signer.credentials is not frozen:
            signer = self._signer = SigV4Signer(frozen, self._provider.region or "",
                                                SIGNING_NAME)
        return signer.sign(url, body, headers)

    async def _current(self) -> ReadOnlyCredentials:
        credentials = self._credentials
        if credentials is None:
            raise UpstreamError(f"Provider {self._provider.id} has no AWS credentials",
                                metadata={"provider_name": self._provider.id})
        if self._frozen is not None and not (isinstance(credentials, RefreshableCredentials)
                                             and credentials.refresh_needed()):
            return self._frozen
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._refresh(credentials))
        return await asyncio.shield(self._refreshing)

    async def _refresh(self, credentials: Credentials) -> ReadOnlyCredentials:
        """botocore refreshes (STS, the instance role, ...) in a thread, never on the loop."""
        try:
            self._frozen = await asyncio.to_thread(credentials.get_frozen_credentials)
        except (BotoCoreError, OSError, ValueError) as exc:
            log.warning("provider %s: refreshing AWS credentials failed: %s: %s",
                        self._provider.id, type(exc).__name__, exc)
            raise UpstreamError(f"Provider {self._provider.id} could not refresh its AWS "
                                "credentials", metadata={"provider_name": self._provider.id}
                                ) from None
        finally:
            self._refreshing = None
        return self._frozen

    def cancel(self) -> None:
        for task in (self._resolving, self._refreshing):
            if task is not None and not task.done():
                task.cancel()
