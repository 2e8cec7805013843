"""The dashboard's signed cookies (server/dashboard/session.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt

from anyrouter_proxy.config.model import KeyConfig, Limits
from anyrouter_proxy.server.dashboard.session import (
    SESSION_TTL_S,
    csrf_ok,
    login_token_ok,
    new_login_token,
    new_session,
    open_session,
    sign,
)

SECRET = "x" * 48
ALICE = KeyConfig(name="alice", key_sha256="a" * 64, limits=Limits())
NOW = 1_800_000_000.0


def keys(*found: KeyConfig) -> dict[str, KeyConfig]:
    return {k.name: k for k in found}


def test_a_session_opens_until_it_expires() -> None:
    cookie, session = new_session(SECRET, ALICE, NOW)
    assert session.expires == NOW + SESSION_TTL_S
    assert "alice" not in cookie and ALICE.key_sha256 not in cookie  # base64 + HMAC only
    assert open_session(SECRET, cookie, keys(ALICE), NOW + 60) == (ALICE, session)
    assert open_session(SECRET, cookie, keys(ALICE), NOW + SESSION_TTL_S) is None


def test_another_secret_or_a_changed_byte_is_refused() -> None:
    cookie, _ = new_session(SECRET, ALICE, NOW)
    assert open_session("y" * 48, cookie, keys(ALICE), NOW) is None
    body, mac = cookie.split(".")
    assert open_session(SECRET, f"{body}x.{mac}", keys(ALICE), NOW) is None
    other = "B" if mac[0] == "A" else "A"
    assert open_session(SECRET, f"{body}.{other}{mac[1:]}", keys(ALICE), NOW) is None
    for junk in ("", ".", "a.b.c", "no-dot", None):
        assert open_session(SECRET, junk, keys(ALICE), NOW) is None


def test_the_session_follows_the_key() -> None:
    cookie, _ = new_session(SECRET, ALICE, NOW)
    assert open_session(SECRET, cookie, {}, NOW) is None
    disabled = dataclasses.replace(ALICE, disabled=True)
    assert open_session(SECRET, cookie, keys(disabled), NOW) is None
    expired = dataclasses.replace(ALICE, expires_at=dt.datetime.fromtimestamp(NOW - 1, dt.UTC))
    assert open_session(SECRET, cookie, keys(expired), NOW) is None
    rekeyed = dataclasses.replace(ALICE, key_sha256="b" * 64)
    assert open_session(SECRET, cookie, keys(rekeyed), NOW) is None


def test_a_login_cookie_is_no_session_and_the_reverse() -> None:
    token, login_cookie = new_login_token(SECRET, NOW)
    assert open_session(SECRET, login_cookie, keys(ALICE), NOW) is None
    assert login_token_ok(SECRET, login_cookie, token, NOW + 60)
    assert not login_token_ok(SECRET, login_cookie, token + "x", NOW)
    assert not login_token_ok(SECRET, login_cookie, token, NOW + 3601)
    session_cookie, session = new_session(SECRET, ALICE, NOW)
    assert not login_token_ok(SECRET, session_cookie, session.csrf, NOW)
    forged = sign(SECRET, "login", {"k": "alice", "b": "x", "x": NOW + 99, "c": "t"})
    assert open_session(SECRET, forged, keys(ALICE), NOW) is None


def test_csrf_token_of_the_session() -> None:
    _, session = new_session(SECRET, ALICE, NOW)
    assert csrf_ok(session, session.csrf)
    assert not csrf_ok(session, None) and not csrf_ok(session, "") \
        and not csrf_ok(session, session.csrf[:-1])
