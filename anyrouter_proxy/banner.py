"""What `serve` prints on a terminal once it listens: where the API and the docs are, and
a warning while the published demo key is configured. Only on a terminal (stderr is a
tty): services and containers get the log lines alone."""

from __future__ import annotations

from pathlib import Path

from . import __version__
from .config.model import Config
from .exposure import demo_key_names

# The demo key of config/routes.yaml, printed in the README: not a secret.
DEMO_KEY = "sk-ar-demo-0000000000000000000000000000"
DOCS = Path(__file__).resolve().parent.parent / "docs"  # a checkout's docs/ folder


def base_url(host: str, port: int) -> str:
    """The URL a client on this machine uses (a wildcard listener answers on loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def docs_location() -> str:
    if (DOCS / "api.md").is_file():
        return f"{DOCS}/  (configuration.md, api.md, deployment.md, operations.md)"
    return "docs/ in the AnyRouter proxy source repository"


def banner(config: Config, host: str, port: int) -> str:
    url = base_url(host, port)
    where = f" ({config.path})" if config.path is not None else ""
    lines = [
        f"AnyRouter proxy {__version__} listening on {url}{where}",
        f"  API        {url}/api/v1   (the SDKs' base_url; Anthropic's: {url}/api)",
        f"  health     {url}/health   metrics: {url}/metrics",
        f"  reference  {url}/api/v1/openapi.json",
        f"  docs       {docs_location()}",
    ]
    names = demo_key_names(config)
    if names:
        lines += ["", *_demo_warning(config, url, ", ".join(f"keys.{n}" for n in names))]
    return "\n".join(lines) + "\n"


def _demo_warning(config: Config, url: str, listed: str) -> list[str]:
    model = "demo/echo" if "demo/echo" in config.models else next(iter(config.models))
    body = f'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}]}}'
    return [
        f"  ! The demo key is configured ({listed}): {DEMO_KEY}",
        "    It is printed in the README, so anyone can use it. Try it now:",
        f"      curl {url}/api/v1/chat/completions \\",
        f"        -H 'Authorization: Bearer {DEMO_KEY}' \\",
        f"        -H 'Content-Type: application/json' -d '{body}'",
        "    Before others can reach this proxy: make a key (`anyrouter-proxy keys new NAME`),",
        f"    paste it under keys:, and delete {listed}.",
    ]
