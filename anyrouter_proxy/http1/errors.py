"""What can go wrong with one exchange.

    HttpError
      ├── ConnectFailed      the TCP or TLS connect failed (refused, DNS, certificate)
      ├── Disconnected       the upstream closed before the answer was whole
      ├── InvalidResponse    not an HTTP/1.1 answer, a head too large, a bad gzip body
      ├── InvalidHeader      a request header with a line break (never sent)
      ├── RequestTimeout     no head in time; `phase` says where the time went
      ├── IdleTimeout        a read of the body waited longer than idle_s
      ├── TotalTimeout       the exchange's total deadline passed during the body
      └── BodyTooLarge       `Response.read(limit)` met more than `limit` bytes
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

# pool: queued for a free connection; connect: connecting (or connect_s passed);
# answer: the request went out, its head did not come back.
TimeoutPhase = Literal["pool", "connect", "answer"]


class HttpError(Exception):
    """Anything that went wrong with an exchange."""


class ConnectFailed(HttpError):
    pass


class Disconnected(HttpError):
    pass


class InvalidResponse(HttpError):
    pass


class InvalidHeader(HttpError):
    pass


class RequestTimeout(HttpError):
    def __init__(self, phase: TimeoutPhase) -> None:
        super().__init__(phase)
        self.phase: TimeoutPhase = phase


class IdleTimeout(HttpError):
    pass


class TotalTimeout(HttpError):
    pass


class BodyTooLarge(HttpError):
    pass


# Turns an HttpError into the caller's own error, as a response's body readers raise it
# (the flag: raised while reading a stream, not a whole answer).
ErrorMap = Callable[[HttpError, bool], Exception]
