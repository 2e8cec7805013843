"""GoogleTokens: vertex providers' access tokens, loaded and refreshed in worker threads
(never on the event loop), one refresh per provider at a time, dropped after a 401 or a
reload; a failure is a 502 marked as a credentials problem."""

from __future__ import annotations

import asyncio
import enum
import threading
from pathlib import Path

import pytest

from anyrouter_proxy.config.model import ProviderConfig
from anyrouter_proxy.errors import UpstreamError
from anyrouter_proxy.providers import google_auth
from anyrouter_proxy.providers.google_auth import GoogleTokens

VERTEX = ProviderConfig(id="vertex", kind="vertex", project="p", location="us-central1",
                        credentials_file="/etc/anyrouter/sa.json")


class State(enum.Enum):
    FRESH = 1
    STALE = 2


class FakeCredentials:
    def __init__(self) -> None:
        self.token: str | None = None
        self.token_state = State.FRESH


class Library:
    """Stands in for google-auth's blocking calls, noting the thread they ran on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loads: list[str | None] = []
        self.refreshes = 0
        self.threads: set[int] = set()
        self.fail: Exception | None = None
        monkeypatch.setattr(google_auth, "load_credentials", self.load)
        monkeypatch.setattr(google_auth, "refresh_credentials", self.refresh)

    def load(self, path: str | None) -> FakeCredentials:
        self.threads.add(threading.get_ident())
        self.loads.append(path)
        return FakeCredentials()

    def refresh(self, credentials: FakeCredentials) -> None:
        self.threads.add(threading.get_ident())
        if self.fail is not None:
            raise self.fail
        self.refreshes += 1
        credentials.token = f"ya29.token-{self.refreshes}"
        credentials.token_state = State.FRESH


async def test_loaded_and_refreshed_off_the_loop_once_for_concurrent_requests(
        monkeypatch: pytest.MonkeyPatch) -> None:
    library = Library(monkeypatch)
    tokens = GoogleTokens()
    got = await asyncio.gather(*(tokens.bearer(VERTEX) for _ in range(5)))
    assert got == ["ya29.token-1"] * 5
    assert library.loads == ["/etc/anyrouter/sa.json"] and library.refreshes == 1
    assert threading.get_ident() not in library.threads  # worker threads only


async def test_a_stale_token_is_refreshed_and_a_forgotten_one_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    library = Library(monkeypatch)
    tokens = GoogleTokens()
    assert await tokens.bearer(VERTEX) == "ya29.token-1"
    assert await tokens.bearer(VERTEX) == "ya29.token-1"  # fresh: reused
    entry = tokens._entries[("vertex", "/etc/anyrouter/sa.json")]
    assert isinstance(entry.credentials, FakeCredentials)
    entry.credentials.token_state = State.STALE  # expiring soon
    assert await tokens.bearer(VERTEX) == "ya29.token-2"
    tokens.forget(VERTEX)  # Vertex AI answered 401
    assert await tokens.bearer(VERTEX) == "ya29.token-3"
    assert len(library.loads) == 1


async def test_a_reload_drops_changed_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    library = Library(monkeypatch)
    tokens = GoogleTokens()
    await tokens.bearer(VERTEX)
    tokens.reconfigure([VERTEX])
    await tokens.bearer(VERTEX)
    assert len(library.loads) == 1  # unchanged: kept
    moved = ProviderConfig(id="vertex", kind="vertex", project="p", location="us-central1",
                           credentials_file="/etc/anyrouter/other.json")
    tokens.reconfigure([moved])
    await tokens.bearer(moved)
    assert library.loads == ["/etc/anyrouter/sa.json", "/etc/anyrouter/other.json"]


async def test_a_failure_is_a_credentials_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    library = Library(monkeypatch)
    library.fail = ValueError("('invalid_grant: Invalid JWT Signature.', {...})")
    with pytest.raises(UpstreamError) as caught:
        await GoogleTokens().bearer(VERTEX)
    assert caught.value.status == 502
    assert caught.value.metadata == {"provider_name": "vertex", "provider_status": 401}
    assert "vertex could not get a Google access token (ValueError: " in caught.value.message
    assert "invalid_grant" in caught.value.message


def test_a_key_file_of_another_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "external.json"
    path.write_text('{"type": "external_account", "audience": "x"}')
    with pytest.raises(ValueError, match="only service_account and authorized_user"):
        google_auth.load_credentials(str(path))
