"""deploy/docker/compose.yaml agrees with the image and the config `init` writes: the
config is mounted as a directory where the image reads it, the usage log lands in the
data volume, and the container gets longer than the drain to stop. (No Docker engine
runs in CI: these are checks of the files, not of a running container.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from anyrouter_proxy.config.loader import load_config
from anyrouter_proxy.config.model import ServerConfig
from anyrouter_proxy.starter import write_starter

DOCKER = Path(__file__).resolve().parents[2] / "deploy" / "docker"


def compose_service() -> dict[str, Any]:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text("utf-8"))
    service: dict[str, Any] = compose["services"]["proxy"]
    return service


def image_config_path() -> Path:
    """The --config of the Dockerfile's CMD."""
    cmd = re.search(r"^CMD (\[.*\])$", (DOCKER / "Dockerfile").read_text("utf-8"), re.M)
    assert cmd is not None
    args = yaml.safe_load(cmd.group(1))
    return Path(args[args.index("--config") + 1])


def test_the_config_is_a_directory_mount_where_the_image_reads_it() -> None:
    binds = [v for v in compose_service()["volumes"] if v["type"] == "bind"]
    assert len(binds) == 1
    [config] = binds
    assert config["target"] == str(image_config_path().parent)
    assert not Path(config["source"]).suffix  # a folder, not routes.yaml itself
    assert config["read_only"] is True


def test_the_usage_log_lands_in_the_data_volume(tmp_path: Path) -> None:
    service = compose_service()
    [data] = [v for v in service["volumes"] if v["type"] == "volume"]
    environment = {k: str(v) for k, v in service["environment"].items()}
    write_starter(tmp_path)
    config = load_config(tmp_path / "routes.yaml", environ=environment)
    assert config.storage.sqlite_path.parent == Path(data["target"])


def test_the_container_outlasts_the_drain_and_is_published_on_loopback() -> None:
    service = compose_service()
    grace = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
    assert grace is not None and int(grace.group(1)) > ServerConfig().shutdown_grace_s
    assert all(str(port).startswith("127.0.0.1:") for port in service["ports"])
    build = service["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"


def test_the_documented_commands_use_the_compose_file() -> None:
    text = (DOCKER / "compose.yaml").read_text("utf-8")
    commands = [shlex.split(line.lstrip("# ").rstrip("\\ "))
                for line in text.splitlines() if line.startswith("#   docker compose")]
    assert commands and all(c[:4] == ["docker", "compose", "-f", "deploy/docker/compose.yaml"]
                            for c in commands)
