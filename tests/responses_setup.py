"""The proxy for Responses API tests: one model per way of serving POST /responses (an
openai-kind chat provider, a native Responses provider, an anthropic-kind provider and the
mock), plus a model that fails over from chat to Anthropic; keys alice, bob and an admin."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from anyrouter_proxy.config.model import Config
from tests.conftest import (
    ALICE_KEY,
    BOB_KEY,
    ConfigFactory,
    Proxy,
    anthropic_provider,
    openai_provider,
    sha256,
)
from tests.fakes import FakeAnthropic, FakeOpenAI

ADMIN_KEY = "sk-ar-test-admin-0123456789abcdef0123456789"
CHAT_MODEL, NATIVE_MODEL, CLAUDE_MODEL, MOCK_MODEL = (
    "chat/gpt", "native/gpt", "anthropic/claude", "demo/echo")
FAILOVER_MODEL = "fallback/gpt-then-claude"
KINDS = {"chat": CHAT_MODEL, "native": NATIVE_MODEL, "anthropic": CLAUDE_MODEL,
         "mock": MOCK_MODEL}
# The same routes under ids without a slash: the Agents SDK reads "a/b" as provider/model.
AGENT_MODELS = {kind: f"agent-{kind}" for kind in KINDS}
PRICING = {"prompt": 1.0, "completion": 2.0}

StartProxy = Callable[[Config], Awaitable[Proxy]]


def responses_config(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                     fake_backup: FakeOpenAI, fake_anthropic: FakeAnthropic,
                     **sections: Any) -> Config:
    """`fake_openai` serves chat, `fake_backup` the native Responses API."""
    def model(provider: str, upstream: str) -> dict[str, Any]:
        return {"pricing": PRICING, "routes": [{"provider": provider, "model": upstream}]}

    return config_factory(
        providers={"openai": openai_provider(fake_openai),
                   "native": openai_provider(fake_backup, native_responses=True),
                   "anthropic": anthropic_provider(fake_anthropic),
                   "demo": {"kind": "mock"}},
        models={CHAT_MODEL: model("openai", "gpt-chat"),
                NATIVE_MODEL: model("native", "gpt-native"),
                CLAUDE_MODEL: model("anthropic", "claude-x"),
                MOCK_MODEL: model("demo", "echo"),
                **{AGENT_MODELS["chat"]: model("openai", "gpt-chat"),
                   AGENT_MODELS["native"]: model("native", "gpt-native"),
                   AGENT_MODELS["anthropic"]: model("anthropic", "claude-x"),
                   AGENT_MODELS["mock"]: model("demo", "echo")},
                FAILOVER_MODEL: {"pricing": PRICING, "routes": [
                    {"provider": "openai", "model": "gpt-chat"},
                    {"provider": "anthropic", "model": "claude-x"}]}},
        keys={"alice": {"key_sha256": sha256(ALICE_KEY)},
              "bob": {"key_sha256": sha256(BOB_KEY)},
              "root": {"key_sha256": sha256(ADMIN_KEY), "admin": True}},
        **sections)
