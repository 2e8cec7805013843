"""The example config's demo key, whose secret the README prints: with a real provider key
exported, it still reaches only the in-process demo models. Served over real HTTP with
the example's own `keys:` entry, the openai provider pointed at the fake upstream."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import openai
import pytest
import yaml

from anyrouter_proxy.config.loader import load_config
from anyrouter_proxy.config.model import Config
from anyrouter_proxy.exposure import DEMO_KEY_SHA256
from tests.conftest import PROVIDER_KEY, Proxy, sha256
from tests.fakes import FakeOpenAI

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "routes.yaml"
DEMO_KEY = "sk-ar-demo-0000000000000000000000000000"  # as printed in the README
MESSAGES = [{"role": "user", "content": "Hello!"}]


def example_with_openai_at(fake: FakeOpenAI, tmp_path: Path) -> Config:
    """config/routes.yaml as shipped, OPENAI_API_KEY exported, api.openai.com -> the fake."""
    data = yaml.safe_load(EXAMPLE.read_text("utf-8"))
    data["providers"]["openai"]["base_url"] = fake.base_url  # type: ignore[attr-defined]
    data["storage"]["sqlite_path"] = str(tmp_path / "usage.db")
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), "utf-8")
    return load_config(path, environ={"OPENAI_API_KEY": PROVIDER_KEY})


def test_the_readme_key_is_the_one_recognised() -> None:
    assert sha256(DEMO_KEY) == DEMO_KEY_SHA256
    assert load_config(EXAMPLE, environ={}).keys["demo"].key_sha256 == DEMO_KEY_SHA256


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "openai/gpt-4o"])
async def test_demo_key_gets_403_for_a_real_model(
    model: str, fake_openai: FakeOpenAI, tmp_path: Path,
    start_proxy: Callable[[Config], Awaitable[Proxy]],
) -> None:
    proxy = await start_proxy(example_with_openai_at(fake_openai, tmp_path))
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=DEMO_KEY, max_retries=0)
    try:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await client.chat.completions.create(model=model, messages=MESSAGES)
        assert caught.value.status_code == 403
        assert caught.value.code == "model_not_allowed"
        assert fake_openai.requests == []  # nothing went upstream, nothing was spent
        demo = await client.chat.completions.create(model="demo/echo", messages=MESSAGES)
        assert demo.choices[0].message.content
    finally:
        await client.close()
