"""anyrouter_proxy.exposure: which listen addresses count as this machine only, and when the
published demo key keeps `serve` from starting (the CLI itself: tests/unit/test_cli.py)."""

from __future__ import annotations

import pytest

from anyrouter_proxy.config.model import Config, KeyConfig, Limits, ServerConfig, StorageConfig
from anyrouter_proxy.exposure import DEMO_KEY_SHA256, exposure_problem, is_loopback


@pytest.mark.parametrize("host", [
    "127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "[::1]", "0:0:0:0:0:0:0:1",
    "::ffff:127.0.0.1", "localhost", "LOCALHOST", "localhost.",
])
def test_loopback(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", [
    "0.0.0.0", "::", "[::]", "::ffff:0.0.0.0", "192.168.1.10", "10.0.0.7", "172.16.0.3",
    "203.0.113.7", "2001:db8::1", "fe80::1%eth0", "my-host", "localhost.example.com",
    "128.0.0.1", "",
])
def test_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def config_with(*digests: str) -> Config:
    keys = {f"k{i}": KeyConfig(name=f"k{i}", key_sha256=d, limits=Limits())
            for i, d in enumerate(digests)}
    return Config(path=None, server=ServerConfig(), storage=StorageConfig(), providers={},
                  models={}, keys=keys)


def test_the_demo_key_under_any_name_is_refused_off_loopback() -> None:
    config = config_with("a" * 64, DEMO_KEY_SHA256, DEMO_KEY_SHA256)
    problem = exposure_problem(config, "0.0.0.0")
    assert problem is not None
    assert "keys.k1, keys.k2" in problem
    assert "anyrouter-proxy keys new NAME" in problem
    assert exposure_problem(config, "127.0.0.1") is None


def test_other_keys_may_listen_anywhere() -> None:
    assert exposure_problem(config_with("a" * 64), "0.0.0.0") is None
    assert exposure_problem(config_with(), "::") is None
