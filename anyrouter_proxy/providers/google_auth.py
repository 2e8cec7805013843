"""OAuth access tokens for `vertex` providers, through Google's own `google-auth` library.

The gateway adds `Authorization: Bearer <token>` to every request to a vertex provider
(`GoogleTokens.bearer`). Credentials come from the provider's `credentials_file` (a
service account key, or gcloud's user credentials; its `token_uri` is the token endpoint,
as Google's libraries do) or from application default credentials. They are loaded on
first use and the token is refreshed whenever it is not fresh (google-auth counts a token
expiring within 3 min 45 s as stale), one refresh per provider at a time; loading and
refreshing are blocking library calls, so they run in a worker thread, never on the event
loop. A 401 from Vertex AI drops the token (`forget`), so the next request gets a new one.

A credentials failure (no application default credentials, an unreadable file, a token
endpoint that refuses or cannot be reached) is a 502 `upstream_error` naming the provider,
marked as a credentials problem (`provider_status` 401): the request fails over to the
next route and is not retried on this one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from ..config.model import ProviderConfig
from ..errors import UpstreamError

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

log = logging.getLogger(__name__)

VERTEX = "vertex"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
TOKEN_TIMEOUT_S = 30.0  # one token request (google-auth's own default is 120 s)
MAX_DETAIL_CHARS = 300

CredentialsKey = tuple[str, str | None]  # (provider id, credentials file)


def load_credentials(path: str | None) -> Credentials:
    """The provider's credentials (blocking: reads files, may probe the metadata server).
    A file is read by its type's own class, for the two kinds Google hands out (a service
    account key, gcloud's user credentials); other kinds (workload identity federation,
    impersonation) are refused here and work through application default credentials."""
    import google.auth

    if not path:
        credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
        return credentials
    with open(path, encoding="utf-8") as file:
        info = json.load(file)
    kind = info.get("type") if isinstance(info, dict) else None
    if kind == "service_account":
        from google.oauth2 import service_account

        loaded: Any = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=[CLOUD_PLATFORM_SCOPE])
        return cast("Credentials", loaded)
    if kind == "authorized_user":
        from google.oauth2 import credentials as user

        loaded = user.Credentials.from_authorized_user_info(  # type: ignore[no-untyped-call]
            info, scopes=[CLOUD_PLATFORM_SCOPE])
        return cast("Credentials", loaded)
    raise ValueError(f"credentials_file of type {kind!r}: only service_account and "
                     "authorized_user files are read; point GOOGLE_APPLICATION_CREDENTIALS "
                     "at other kinds and leave credentials_file out")


def refresh_credentials(credentials: Credentials) -> None:
    """A new access token from the token endpoint (blocking)."""
    from google.auth.transport.requests import Request

    class _Bounded(Request):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            kwargs["timeout"] = TOKEN_TIMEOUT_S
            return super().__call__(*args, **kwargs)  # type: ignore[no-untyped-call]

    request = _Bounded()
    try:
        credentials.refresh(request)  # type: ignore[no-untyped-call]
    finally:
        request.session.close()


def token_is_fresh(credentials: Credentials) -> bool:
    """A token that is not expiring soon (google-auth's TokenState.FRESH)."""
    return bool(credentials.token) and credentials.token_state.name == "FRESH"


@dataclass(slots=True)
class _Entry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    credentials: Credentials | None = None


class GoogleTokens:
    """Each vertex provider's credentials and current token."""

    def __init__(self) -> None:
        self._entries: dict[CredentialsKey, _Entry] = {}

    async def bearer(self, provider: ProviderConfig) -> str:
        key = (provider.id, provider.credentials_file)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        credentials = entry.credentials
        if credentials is not None and token_is_fresh(credentials):
            return str(credentials.token)
        async with entry.lock:  # one refresh per provider; the others wait for it
            try:
                if entry.credentials is None:
                    entry.credentials = await asyncio.to_thread(
                        load_credentials, provider.credentials_file)
                credentials = entry.credentials
                if not token_is_fresh(credentials):
                    await asyncio.to_thread(refresh_credentials, credentials)
            except Exception as exc:  # google-auth's errors, OSError, ValueError
                raise _credentials_failure(provider, exc) from None
            return str(credentials.token)

    def forget(self, provider: ProviderConfig) -> None:
        """The upstream refused the token: the next request gets a new one."""
        entry = self._entries.get((provider.id, provider.credentials_file))
        if entry is not None and entry.credentials is not None:
            entry.credentials.token = None

    def reconfigure(self, providers: Iterable[ProviderConfig]) -> None:
        """After a reload: credentials of providers gone or changed are dropped."""
        current = {(p.id, p.credentials_file) for p in providers if p.kind == VERTEX}
        for key in [k for k in self._entries if k not in current]:
            del self._entries[key]


def _credentials_failure(provider: ProviderConfig, exc: Exception) -> UpstreamError:
    detail = " ".join(str(exc).split())[:MAX_DETAIL_CHARS] or type(exc).__name__
    log.warning("provider %s: no Google access token: %s", provider.id, detail)
    return UpstreamError(f"Provider {provider.id} could not get a Google access token "
                         f"({type(exc).__name__}: {detail})",
                         metadata={"provider_name": provider.id, "provider_status": 401})
