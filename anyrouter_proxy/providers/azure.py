"""Azure OpenAI: the OpenAI wire at Azure's addresses, the key in the `api-key` header.

`base_url` is the resource, https://RESOURCE.openai.azure.com, and a route's model is a
deployment name. Two ways to call it:

- no `api_version`: the v1 API, POST /openai/v1/chat/completions, the deployment in the
  body's `model`;
- `api_version: "2024-10-21"`: the classic deployment URL, POST
  /openai/deployments/DEPLOYMENT/chat/completions?api-version=2024-10-21.

Completions and embeddings follow the same pattern. Answers are OpenAI's, with Azure's
additions (`prompt_filter_results`, `content_filter_results`) passed through; errors,
including the content filter's 400 `content_filter`, are read by error_bodies.py.
"""

from __future__ import annotations

from urllib.parse import quote

from ..config.provider_checks import AZURE_DEPLOYMENT
from ..errors import NotFound
from .base import CallContext

V1_PREFIX = "/openai/v1"
DEPLOYMENTS_PREFIX = "/openai/deployments/"
# Azure took max_completion_tokens from this API version on (and in the v1 API).
MAX_COMPLETION_TOKENS_SINCE = "2024-09-01"


class AzureAddress:
    def path(self, endpoint_path: str, ctx: CallContext) -> str:
        version = ctx.provider.api_version
        if version is None:
            return V1_PREFIX + endpoint_path
        deployment = ctx.route.model
        if not AZURE_DEPLOYMENT.fullmatch(deployment):  # a wildcard's rest, as asked for
            raise NotFound(f"Model {ctx.model} does not exist: {deployment!r} is not an "
                           "Azure deployment name", code="model_not_found", param="model")
        return (f"{DEPLOYMENTS_PREFIX}{deployment}{endpoint_path}"
                f"?api-version={quote(version, safe='')}")

    def headers(self, ctx: CallContext) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if ctx.provider.api_key:
            headers["api-key"] = ctx.provider.api_key
        headers.update(ctx.provider.headers)
        return headers

    def chat_cap_field(self, ctx: CallContext) -> str | None:
        """max_completion_tokens where Azure knows it: its reasoning deployments (o1, o3,
        ...) refuse max_tokens."""
        version = ctx.provider.api_version
        if version is None or version >= MAX_COMPLETION_TOKENS_SINCE:
            return "max_completion_tokens"
        return None


AZURE_ADDRESS = AzureAddress()
