"""SigV4 for one set of AWS credentials, with what repeats from request to request kept.

botocore's SigV4Auth signs a request by building it as a general AWS request (its header
map, URL parsing, the whole canonical request) and deriving the signing key anew, every
time. A provider's requests differ only in their time, body and model path, so this asks
botocore once per (URL, headers) for the canonical request with a placeholder time, and
per request fills in the time and the body's hash, then hashes and signs with the key
derived once per day (AWS's algorithm: key = HMAC chain over date, region, service,
"aws4_request"; signature = HMAC(key, string to sign)). The unit tests hold it to
botocore's signatures. Headers that make botocore change the request before signing
(Authorization, Date, X-Amz-Date, X-Amz-Security-Token, X-Amz-Content-SHA256) are left to
botocore itself.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import sha256

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

ALGORITHM = "AWS4-HMAC-SHA256"
TIME_FORMAT = "%Y%m%dT%H%M%SZ"
PLACEHOLDER = "99991231T235959Z-sigv4-time"  # never a real time; replaced per request
REWRITTEN = frozenset({"authorization", "date", "x-amz-date", "x-amz-security-token",
                       "x-amz-content-sha256"})
MAX_TEMPLATES = 256  # (URL, headers) pairs kept: one per model and stream flag, in practice

Now = tuple[str, str]  # (timestamp, its day)


@dataclass(frozen=True, slots=True)
class _Template:
    """A canonical request around its time: `head + time + tail + body hash`."""

    head: str
    tail: str
    signed_headers: str


class SigV4Signer:
    """Signs POSTs with one set of credentials for one region and service."""

    __slots__ = ("_botocore", "_credentials", "_key", "_scope", "_service", "_templates")

    def __init__(self, credentials: ReadOnlyCredentials, region: str, service: str) -> None:
        self._credentials = credentials
        self._botocore = SigV4Auth(credentials, service, region)
        self._scope = f"{region}/{service}/aws4_request"
        self._service = service
        self._key: tuple[str, bytes] = ("", b"")  # (day, signing key)
        self._templates: dict[tuple[str, tuple[tuple[str, str], ...]], _Template | None] = {}

    @property
    def credentials(self) -> ReadOnlyCredentials:
        return self._credentials

    def sign(self, url: str, body: bytes, headers: Mapping[str, str],
             now: Now | None = None) -> dict[str, str]:
        """`headers` plus X-Amz-Date, X-Amz-Security-Token (temporary credentials) and
        Authorization, for a POST of exactly `body` to exactly `url`."""
        stamp, day = now or current_time()
        template = self._template(url, headers)
        if template is None:
            return self._botocore_sign(url, body, headers)
        canonical = template.head + stamp + template.tail + sha256(body).hexdigest()
        scope = f"{day}/{self._scope}"
        to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(day), to_sign.encode(), sha256).hexdigest()
        signed = {**headers, "X-Amz-Date": stamp}
        if self._credentials.token:
            signed["X-Amz-Security-Token"] = self._credentials.token
        signed["Authorization"] = (
            f"{ALGORITHM} Credential={self._credentials.access_key}/{scope}, "
            f"SignedHeaders={template.signed_headers}, Signature={signature}")
        return signed

    def _signing_key(self, day: str) -> bytes:
        if self._key[0] != day:
            key = f"AWS4{self._credentials.secret_key}".encode()
            for part in (day, *self._scope.split("/")):
                key = hmac.new(key, part.encode(), sha256).digest()
            self._key = (day, key)
        return self._key[1]

    def _template(self, url: str, headers: Mapping[str, str]) -> _Template | None:
        """botocore's canonical request for this URL and these headers, split at its time
        (None: the headers are ones botocore rewrites; it signs those requests itself)."""
        cache_key = (url, tuple(headers.items()))
        try:
            return self._templates[cache_key]
        except KeyError:
            pass
        template = None
        if not any(name.lower() in REWRITTEN for name in headers):
            request = self._request(url, b"", headers, PLACEHOLDER)
            canonical = self._botocore.canonical_request(request)
            before, found, after = canonical.rpartition("\n")[0].partition(PLACEHOLDER)
            if found and PLACEHOLDER not in after:
                template = _Template(before, after + "\n", self._botocore.signed_headers(
                    self._botocore.headers_to_sign(request)))
        if len(self._templates) >= MAX_TEMPLATES:
            self._templates.clear()
        self._templates[cache_key] = template
        return template

    def _request(self, url: str, body: bytes, headers: Mapping[str, str],
                 stamp: str) -> AWSRequest:
        """The request as botocore's signer sees it once it has set the time and token
        (what its add_auth does to headers none of which it rewrites)."""
        request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
        request.context["timestamp"] = stamp
        request.headers["X-Amz-Date"] = stamp
        if self._credentials.token:
            request.headers["X-Amz-Security-Token"] = self._credentials.token
        return request

    def _botocore_sign(self, url: str, body: bytes,
                       headers: Mapping[str, str]) -> dict[str, str]:
        request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
        self._botocore.add_auth(request)
        return dict(request.headers.items())


def current_time() -> Now:
    stamp = time.strftime(TIME_FORMAT, time.gmtime())
    return stamp, stamp[:8]
