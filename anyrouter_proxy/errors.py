"""The one error tree of the proxy; `server/middlewares.py` renders it (the table in docs/api.md).

    ProxyError
      ├── InvalidRequest            400 invalid_request_error
      ├── AuthenticationFailed      401 authentication_error
      ├── InsufficientCredits       402 insufficient_credits
      ├── PermissionDenied          403 permission_error
      ├── NotFound                  404 not_found_error
      ├── MethodNotAllowed          405 invalid_request_error
      ├── RequestTimeout            408 invalid_request_error
      ├── Gone                      410 invalid_request_error
      ├── RequestTooLarge           413 invalid_request_error
      ├── UnsupportedMediaType      415 invalid_request_error
      ├── RateLimited               429 rate_limit_error
      ├── InternalError             500 server_error
      ├── UpstreamError             502 upstream_error
      ├── ServiceUnavailable        503 service_unavailable
      └── UpstreamTimeout           504 timeout_error
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Literal

TimeoutStage = Literal["upstream", "pool", "answer"]


class ProxyError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.param = param
        self.metadata = dict(metadata) if metadata else None
        self.headers = dict(headers) if headers else {}

    def envelope(self, anthropic: bool = False) -> dict[str, Any]:
        """The OpenAI error envelope; `metadata` only when there is some. `anthropic`: with
        the top-level `"type": "error"` the Anthropic SDK expects."""
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "code": self.code,
            "param": self.param,
        }
        if self.metadata:
            error["metadata"] = self.metadata
        return {"type": "error", "error": error} if anthropic else {"error": error}


class InvalidRequest(ProxyError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class AuthenticationFailed(ProxyError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class InsufficientCredits(ProxyError):
    status, type, code = 402, "insufficient_credits", "insufficient_credits"


class PermissionDenied(ProxyError):
    status, type, code = 403, "permission_error", "model_not_allowed"


class NotFound(ProxyError):
    status, type, code = 404, "not_found_error", "route_not_found"


class MethodNotAllowed(ProxyError):
    status, type, code = 405, "invalid_request_error", "method_not_allowed"


class RequestTimeout(ProxyError):
    status, type, code = 408, "invalid_request_error", "request_timeout"


class Gone(ProxyError):
    status, type, code = 410, "invalid_request_error", "model_sunset"


class RequestTooLarge(ProxyError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class UnsupportedMediaType(ProxyError):
    status, type, code = 415, "invalid_request_error", "unsupported_media_type"


class RateLimited(ProxyError):
    status, type, code = 429, "rate_limit_error", "rate_limited"


class InternalError(ProxyError):
    status, type, code = 500, "server_error", "internal_error"


def internal_failure(log: logging.Logger, what: str) -> InternalError:
    """Inside an `except` for a bug of ours: logged with its traceback and a request id,
    answered with only that id (the client can quote it; no internals leak)."""
    request_id = os.urandom(6).hex()
    log.exception("%s failed (request id %s)", what, request_id)
    return InternalError(f"Internal error (request id {request_id})",
                         metadata={"request_id": request_id})


class UpstreamError(ProxyError):
    status, type, code = 502, "upstream_error", "upstream_error"


class ServiceUnavailable(ProxyError):
    status, type, code = 503, "service_unavailable", "no_provider_available"


class UpstreamTimeout(ProxyError):
    """`stage` says where the time went: `upstream` (connecting, a stream's first event,
    a stalled body: the provider's doing), `pool` (waiting for a free connection of the
    proxy's own pool) or `answer` (the request was sent; its answer is not back yet)."""

    status, type, code = 504, "timeout_error", "upstream_timeout"
    stage: TimeoutStage = "upstream"

    def __init__(self, message: str, *, stage: TimeoutStage = "upstream",
                 **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.stage = stage


_BY_STATUS: dict[int, type[ProxyError]] = {
    cls.status: cls
    for cls in (
        InvalidRequest, AuthenticationFailed, InsufficientCredits, PermissionDenied,
        NotFound, MethodNotAllowed, RequestTimeout, Gone, RequestTooLarge, UnsupportedMediaType,
        RateLimited, InternalError, UpstreamError, ServiceUnavailable, UpstreamTimeout,
    )
}


def error_for_status(status: int, message: str, **kwargs: Any) -> ProxyError:
    """An error of the class docs/api.md gives `status`; unknown 4xx map to 400's type."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = InvalidRequest if 400 <= status < 500 else UpstreamError
        kwargs.setdefault("status", status)
    return cls(message, **kwargs)
