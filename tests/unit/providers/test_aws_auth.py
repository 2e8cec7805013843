"""Credentials of kind bedrock (aws_auth.py): temporary credentials refreshed in a thread,
once for every request waiting; the signature covers exactly the bytes and URL given."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from typing import Any

import pytest
from botocore.credentials import Credentials, RefreshableCredentials

from anyrouter_proxy.config.model import ProviderConfig
from anyrouter_proxy.errors import UpstreamError
from anyrouter_proxy.providers import aws_identity, aws_sigv4
from anyrouter_proxy.providers.aws_auth import AwsAuth

URL = "https://bedrock-runtime.us-east-1.amazonaws.com/model/m%3A0/converse"
CHAIN = ProviderConfig(id="aws", kind="bedrock", region="us-east-1",
                       base_url="https://bedrock-runtime.us-east-1.amazonaws.com")


def expiring(seconds: int, key: str) -> dict[str, str]:
    expiry = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    return {"access_key": key, "secret_key": "secret-" + key, "token": "token-" + key,
            "expiry_time": expiry.isoformat()}


async def test_refresh_runs_off_the_loop_once_for_all_waiting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []

    def refresh() -> dict[str, str]:
        threads.append(threading.get_ident())
        return expiring(3600, "ASIAFRESH")

    credentials = RefreshableCredentials.create_from_metadata(
        expiring(60, "ASIASTALE"), refresh_using=refresh, method="test")  # inside the window
    monkeypatch.setattr(aws_identity, "_resolve_chain", lambda profile: (None, credentials))
    auth = AwsAuth([CHAIN])
    await auth.open()
    signed = await asyncio.gather(*(auth.sign(CHAIN, URL, b"{}", {"Content-Type": "x"})
                                    for _ in range(5)))
    assert len(threads) == 1 and threads[0] != threading.get_ident()
    assert all("Credential=ASIAFRESH/" in h["Authorization"] for h in signed)
    assert all(h["X-Amz-Security-Token"] == "token-ASIAFRESH" for h in signed)
    await auth.sign(CHAIN, URL, b"{}", {})
    assert len(threads) == 1  # fresh now: no more refreshes


async def test_a_failed_refresh_is_an_upstream_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refresh() -> dict[str, str]:
        raise aws_identity.BotoCoreError()

    credentials = RefreshableCredentials.create_from_metadata(
        expiring(60, "ASIASTALE"), refresh_using=refresh, method="test")
    monkeypatch.setattr(aws_identity, "_resolve_chain", lambda profile: (None, credentials))
    auth = AwsAuth([CHAIN])
    await auth.open()
    with pytest.raises(UpstreamError) as caught:
        await auth.sign(CHAIN, URL, b"{}", {})
    assert "could not refresh" in caught.value.message


async def test_the_chain_resolves_in_a_thread_and_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    def resolve(profile: str | None) -> tuple[None, Credentials]:
        calls.append((profile, threading.get_ident()))
        return None, Credentials("AKIACHAIN", "secret")

    monkeypatch.setattr(aws_identity, "_resolve_chain", resolve)
    auth = AwsAuth()
    auth.reconfigure([CHAIN])  # a reload: resolution starts in the background
    assert auth.available(CHAIN)
    headers = await auth.sign(CHAIN, URL, b'{"a":1}', {"Content-Type": "application/json"})
    await auth.sign(CHAIN, URL, b'{"a":1}', {})
    assert len(calls) == 1 and calls[0][1] != threading.get_ident()
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIACHAIN/")
    assert "SignedHeaders=content-type;host;x-amz-date," in headers["Authorization"]


async def test_nothing_found_is_unavailable_until_a_reload_finds_some(
        monkeypatch: pytest.MonkeyPatch) -> None:
    found: list[Credentials | None] = [None]
    monkeypatch.setattr(aws_identity, "_resolve_chain", lambda profile: (None, found[0]))
    auth = AwsAuth([CHAIN])
    await auth.open()
    assert not auth.available(CHAIN)
    with pytest.raises(UpstreamError):
        await auth.sign(CHAIN, URL, b"{}", {})
    found[0] = Credentials("AKIALATER", "secret")
    auth.reconfigure([CHAIN])
    assert "AKIALATER" in (await auth.sign(CHAIN, URL, b"{}", {}))["Authorization"]


async def test_the_signature_covers_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aws_sigv4, "current_time", lambda: ("20250102T030405Z", "20250102"))
    keys = ProviderConfig(id="aws", kind="bedrock", region="us-east-1", base_url="https://x",
                          aws_access_key_id="AKIAKEYS", aws_secret_access_key="secret")
    auth = AwsAuth([keys])

    async def signature(body: bytes) -> str:
        headers = await auth.sign(keys, URL, body, {})
        assert headers["X-Amz-Date"] == "20250102T030405Z"
        assert "X-Amz-Security-Token" not in headers
        return headers["Authorization"].split("Signature=")[1]

    assert await signature(b'{"a":1}') == await signature(b'{"a":1}')
    assert await signature(b'{"a":1}') != await signature(b'{"a":2}')
