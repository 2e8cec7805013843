"""`anyrouter-proxy init DIR`: a starter routes.yaml, the schema beside it, a fresh key.

The schema is copied next to the config and referenced relatively
(`$schema=schema.json`), so the editor line keeps working wherever the folder is moved.
Only the key's sha256 goes into the file; the key itself is returned to be printed once.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from .config.loader import schema

KEY_PREFIX = "sk-ar-"
CONFIG_NAME = "routes.yaml"
SCHEMA_NAME = "schema.json"

STARTER = """\
# yaml-language-server: $schema={schema_name}
#
# AnyRouter proxy routing table, written by `anyrouter-proxy init`. Every field is
# described in docs/configuration.md; `anyrouter-proxy check --config {config_name}`
# validates it. {schema_name} beside it is the JSON Schema of this format, for editors
# (`anyrouter-proxy schema` prints the installed version's).
version: 1

server:
  host: 127.0.0.1                 # behind nginx on this host, keep loopback
  port: 8080
  # trusted_proxies: ["127.0.0.1", "::1"]   # behind nginx: log the real client address

storage:
  # The usage log. Relative paths are relative to this file; a service sets an absolute
  # one through the environment (systemd: /var/lib/anyrouter/anyrouter.db, the container
  # image: /app/data/anyrouter.db), so this file works unchanged in both.
  sqlite_path: ${{ANYROUTER_SQLITE_PATH:-data/anyrouter.db}}

providers:
  demo:                           # in process, deterministic, no network: try it first
    kind: mock
  openai:
    kind: openai
    base_url: https://api.openai.com/v1
    api_key: ${{OPENAI_API_KEY:-}}  # unset: listed as no_credentials and skipped
  # anthropic:
  #   kind: anthropic
  #   base_url: https://api.anthropic.com/v1
  #   api_key: ${{ANTHROPIC_API_KEY:-}}

models:
  demo/echo:
    name: Demo model (answers text, tool calls and JSON deterministically)
    pricing: {{prompt: 0, completion: 0}}   # free
    routes:
      - {{provider: demo, model: echo}}
  openai/gpt-4o-mini:
    name: GPT-4o mini
    context_length: 128000
    max_output_tokens: 16384
    pricing: {{prompt: 0.15, completion: 0.60, cached_prompt: 0.075}}   # USD per 1M tokens
    routes:
      - {{provider: openai, model: gpt-4o-mini}}

keys:
  {key_name}:
    key_sha256: {digest}   # made by `init`; the key was printed once
{admin_line}\
    # credits: 10.00              # USD; absent = unlimited
    # models: ["demo/*"]          # allow-list of model globs; absent = every model
"""


class StarterExists(Exception):
    """init never overwrites: some of its files are already there (`paths`)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        verb = "exists" if len(paths) == 1 else "exist"
        super().__init__(f"{' and '.join(map(str, paths))} already {verb}")


@dataclass(frozen=True, slots=True)
class Starter:
    config: Path
    schema: Path
    key: str  # the plain key: print it once, store it nowhere


def new_api_key() -> tuple[str, str]:
    """A fresh key (`sk-ar-` + 256 random bits) and its sha256, as routes.yaml holds it."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hashlib.sha256(key.encode()).hexdigest()


def starter_config(key_name: str, digest: str) -> str:
    key_fields = schema()["$defs"]["key"]["properties"]
    admin_line = "    admin: true                   # may read every key's records\n" \
        if "admin" in key_fields else ""
    return STARTER.format(schema_name=SCHEMA_NAME, config_name=CONFIG_NAME,
                          key_name=key_name, digest=digest, admin_line=admin_line)


def write_starter(directory: Path, key_name: str = "admin") -> Starter:
    """Write DIR/routes.yaml and DIR/schema.json (DIR is created if need be); raises
    StarterExists, writing nothing, when either is there already."""
    config, schema_file = directory / CONFIG_NAME, directory / SCHEMA_NAME
    present = [path for path in (config, schema_file) if path.exists()]
    if present:
        raise StarterExists(present)
    directory.mkdir(parents=True, exist_ok=True)
    key, digest = new_api_key()
    with schema_file.open("x", encoding="utf-8") as out:
        out.write(json.dumps(schema(), indent=2) + "\n")
    with config.open("x", encoding="utf-8") as out:
        out.write(starter_config(key_name, digest))
    return Starter(config, schema_file, key)
