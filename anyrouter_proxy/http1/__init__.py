"""A lean pooled HTTP/1.1 client for the upstream calls (see `pool` for how it works)."""

from .errors import (
    BodyTooLarge,
    ConnectFailed,
    Disconnected,
    ErrorMap,
    HttpError,
    IdleTimeout,
    InvalidHeader,
    InvalidResponse,
    RequestTimeout,
    TimeoutPhase,
    TotalTimeout,
)
from .pool import KEEPALIVE_S, Pool, default_ssl_context, request_target
from .response import Response

__all__ = ["KEEPALIVE_S", "BodyTooLarge", "ConnectFailed", "Disconnected", "ErrorMap",
           "HttpError", "IdleTimeout", "InvalidHeader", "InvalidResponse", "Pool",
           "RequestTimeout", "Response", "TimeoutPhase", "TotalTimeout", "default_ssl_context",
           "request_target"]
