"""Where a Gemini-wire request goes and how it is authenticated, for the two kinds that
speak it: `gemini` (Google AI Studio, `x-goog-api-key`) and `vertex` (Vertex AI, an OAuth
bearer token the gateway adds on the way out, `google_auth.GoogleTokens`).

| kind | path under base_url |
|---|---|
| gemini | /models/MODEL:METHOD |
| vertex | /projects/P/locations/L/publishers/google/models/MODEL:METHOD |

A route model with a `/` is a resource name of its own: `tunedModels/...` on gemini,
`endpoints/123` on vertex (under /projects/P/locations/L/).
"""

from __future__ import annotations

import re

from ..errors import InvalidRequest
from .base import CallContext

VERTEX = "vertex"
GENERATE, STREAM = "generateContent", "streamGenerateContent?alt=sse"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]*(?:/[A-Za-z0-9][A-Za-z0-9._@-]*)*$")


def model_resource(ctx: CallContext) -> str:
    """The route's model as a resource name (no leading slash); a name that could leave
    its place in the URL is refused."""
    model = ctx.route.model
    if not _MODEL_NAME.match(model) or ".." in model:
        raise InvalidRequest(f"'{model[:100]}' is not a model name this provider accepts",
                             param="model")
    provider = ctx.provider
    if provider.kind == VERTEX:
        model = model if "/" in model else f"publishers/google/models/{model}"
        return f"projects/{provider.project}/locations/{provider.location}/{model}"
    return model if "/" in model else f"models/{model}"


def method_path(ctx: CallContext, method: str) -> str:
    return f"/{model_resource(ctx)}:{method}"


def google_headers(ctx: CallContext) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if ctx.provider.kind != VERTEX and ctx.provider.api_key:
        headers["x-goog-api-key"] = ctx.provider.api_key
    headers.update(ctx.provider.headers)
    return headers
