"""Cross-checks of providers and wildcard models that JSON Schema cannot express.

They run on a possibly schema-invalid document (plain data), so every access is guarded;
each yields (YAML path, message) and the loader adds the line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from .wildcards import REST_MARK, wildcard_prefix

PathItems = tuple[str | int, ...]
Found = Iterator[tuple[PathItems, str]]

# An Azure deployment name as it goes into the URL path (no slashes, no dot segments).
AZURE_DEPLOYMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
AZURE_CREDENTIAL_HEADERS = frozenset({"api-key", "authorization"})
VERTEX_FIELDS = ("project", "location", "credentials_file")
# Paths Azure's kind adds itself: a base_url ending so would double them.
_AZURE_OWN_PATH = re.compile(r"/openai(/v1|/deployments(/.*)?)?/?$", re.IGNORECASE)


def provider_problems(providers: Mapping[str, dict[str, Any]]) -> Found:
    for pid, provider in providers.items():
        base_url = provider.get("base_url")
        if isinstance(base_url, str):
            yield from _base_url_problems(pid, provider, base_url)
        if provider.get("kind") == "azure":
            yield from _azure_credentials(pid, provider)
        elif "api_version" in provider:
            yield ("providers", pid, "api_version"), "is for kind azure only"
        yield from _vertex_fields(pid, provider)


def _base_url_problems(pid: str, provider: dict[str, Any], base_url: str) -> Found:
    where = ("providers", pid, "base_url")
    if "?" in base_url or "#" in base_url:
        yield where, ("must not carry a query string or fragment: paths are appended to it"
                      + (" (Azure's api-version goes in api_version)"
                         if provider.get("kind") == "azure" else ""))
        return
    if provider.get("kind") == "azure" and _AZURE_OWN_PATH.search(urlsplit(base_url).path):
        yield where, ("is the resource URL, such as https://RESOURCE.openai.azure.com: the "
                      "proxy adds /openai/v1 (or /openai/deployments/NAME with api_version) "
                      "itself, and each route's model is the deployment")


def _azure_credentials(pid: str, provider: dict[str, Any]) -> Found:
    headers = provider.get("headers")
    names = {str(k).lower() for k in headers} if isinstance(headers, dict) else set()
    if "api_key" not in provider and not names & AZURE_CREDENTIAL_HEADERS:
        yield ("providers", pid), ("kind azure needs api_key (sent as the api-key header), "
                                   "or an api-key or Authorization header in headers")


def _vertex_fields(pid: str, provider: dict[str, Any]) -> Found:
    """Vertex AI authenticates with Google OAuth, and only it reads the Google fields."""
    if provider.get("kind") == "vertex":
        if "api_key" in provider:
            yield ("providers", pid, "api_key"), (
                "kind vertex authenticates with Google OAuth: use credentials_file or "
                "application default credentials, not api_key")
        return
    for name in VERTEX_FIELDS:
        if name in provider:
            yield ("providers", pid, name), "only kind vertex reads it"


def model_problems(models: Mapping[str, dict[str, Any]],
                   providers: Mapping[str, dict[str, Any]]) -> Found:
    for model_id, model in models.items():
        routes = model.get("routes")
        routes = [r for r in routes if isinstance(r, dict)] if isinstance(routes, list) else []
        wildcard = wildcard_prefix(model_id) is not None
        if wildcard and "pricing" not in model and not all("pricing" in r for r in routes):
            yield ("models", model_id), (
                "a wildcard model needs pricing: it serves models this file does not list "
                "(write pricing: {prompt: 0, completion: 0} if they are free)")
        for i, route in enumerate(routes):
            upstream = route.get("model")
            if not isinstance(upstream, str):
                continue
            where: PathItems = ("models", model_id, "routes", i, "model")
            if REST_MARK in upstream and not wildcard:
                yield where, ("'*' stands for the rest of a wildcard model's id, and this "
                              "model is not a wildcard (its id does not end in /*)")
            provider = providers.get(str(route.get("provider")))
            if (provider is not None and provider.get("kind") == "azure"
                    and "api_version" in provider and REST_MARK not in upstream
                    and not AZURE_DEPLOYMENT.fullmatch(upstream)):
                yield where, (f"{upstream!r} is not an Azure deployment name (letters, "
                              "digits, _ . - and at most 64 characters)")
