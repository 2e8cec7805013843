"""The dashboard's signed session cookie (stdlib HMAC-SHA256, no server-side state).

A cookie carries the key's name, a binding to the key's current sha256 (an HMAC of it,
so the digest itself never reaches the browser), its expiry and a CSRF token. It is good
only while that key still exists with that digest, enabled and unexpired: removing,
disabling or re-keying a key in routes.yaml ends its sessions at the next request.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from ...config.model import KeyConfig

SESSION_TTL_S = 12 * 3600
LOGIN_TTL_S = 3600  # the sign-in form's CSRF cookie


@dataclass(frozen=True, slots=True)
class Session:
    key_name: str
    binding: str
    expires: int
    csrf: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, purpose: str, data: str) -> str:
    digest = hmac.new(secret.encode(), f"{purpose}\n{data}".encode(), hashlib.sha256)
    return _b64(digest.digest())


def binding(secret: str, key: KeyConfig) -> str:
    return _mac(secret, "key", key.key_sha256)[:22]


def sign(secret: str, purpose: str, payload: Mapping[str, object]) -> str:
    body = _b64(orjson.dumps(dict(payload)))
    return f"{body}.{_mac(secret, purpose, body)}"


def unsign(secret: str, purpose: str, value: str | None) -> dict[str, object] | None:
    """The payload of a value `sign` made with this secret and purpose, else None."""
    if not value or value.count(".") != 1:
        return None
    body, mac = value.split(".")
    if not hmac.compare_digest(mac.encode(), _mac(secret, purpose, body).encode()):
        return None
    try:
        data = orjson.loads(_unb64(body))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def new_session(secret: str, key: KeyConfig, now: float | None = None) -> tuple[str, Session]:
    session = Session(key.name, binding(secret, key),
                      int((now or time.time()) + SESSION_TTL_S), secrets.token_urlsafe(24))
    cookie = sign(secret, "session", {"k": session.key_name, "b": session.binding,
                                      "x": session.expires, "c": session.csrf})
    return cookie, session


def open_session(secret: str, value: str | None, keys: Mapping[str, KeyConfig],
                 now: float | None = None) -> tuple[KeyConfig, Session] | None:
    """The key and session of a cookie, if it is still good."""
    data = unsign(secret, "session", value)
    if data is None:
        return None
    name, bound, expires, csrf = data.get("k"), data.get("b"), data.get("x"), data.get("c")
    if not (isinstance(name, str) and isinstance(bound, str) and isinstance(expires, int)
            and isinstance(csrf, str)):
        return None
    current = now or time.time()
    key = keys.get(name)
    if key is None or expires <= current or key.disabled or (
            key.expires_at is not None and key.expires_at.timestamp() <= current):
        return None
    if not hmac.compare_digest(bound.encode(), binding(secret, key).encode()):
        return None
    return key, Session(name, bound, expires, csrf)


def new_login_token(secret: str, now: float | None = None) -> tuple[str, str]:
    """The sign-in form's CSRF token and the cookie that vouches for it."""
    token = secrets.token_urlsafe(24)
    expires = int((now or time.time()) + LOGIN_TTL_S)
    return token, sign(secret, "login", {"c": token, "x": expires})


def login_token_ok(secret: str, cookie: str | None, token: str | None,
                   now: float | None = None) -> bool:
    data = unsign(secret, "login", cookie)
    if data is None or not token:
        return False
    expires, expected = data.get("x"), data.get("c")
    return (isinstance(expires, int) and expires > (now or time.time())
            and isinstance(expected, str)
            and hmac.compare_digest(expected.encode(), token.encode()))


def csrf_ok(session: Session, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(session.csrf.encode(), str(token).encode())


def expiry_text(expires: int) -> str:
    return dt.datetime.fromtimestamp(expires, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
