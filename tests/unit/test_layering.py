"""Imports point one way: errors/types -> config -> pure modules -> providers, limits,
storage, upstream -> the request path (gateway) -> server -> cli. Read from the source
with ast, so a new module that imports against the direction fails here."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "anyrouter_proxy"
TESTS = Path(__file__).resolve().parents[1]
BENCH = PACKAGE.parent / "bench"

LEAVES, CONFIG, PURE, SERVICES, REQUEST_PATH, SERVER, CLI = range(7)
# Top-level modules by layer; a subpackage's layer is that of its first name.
LAYERS = {
    "errors": LEAVES, "types": LEAVES, "ids": LEAVES,
    "config": CONFIG,
    "redaction": PURE, "routing": PURE, "health": PURE, "failures": PURE, "sse": PURE,
    "deprecation": PURE, "exposure": PURE, "output_cap": PURE, "pricing": PURE,
    "output_estimate": PURE, "billed_extras": PURE, "metrics": PURE, "logs": PURE,
    "error_bodies": PURE, "fan_out": PURE,
    "providers": SERVICES, "limits": SERVICES, "storage": SERVICES, "upstream": SERVICES,
    "gateway": REQUEST_PATH, "accounting": REQUEST_PATH, "stream_session": REQUEST_PATH,
    "batch": REQUEST_PATH, "responses_turn": REQUEST_PATH,
    "server": SERVER,
    "cli": CLI, "__main__": CLI, "starter": CLI, "banner": CLI,
}
PROVIDER_DISPATCH = {"registry"}  # the one providers module that names every adapter


def provider_kinds() -> set[str]:
    """The `kind`s of routes.yaml: each is one wire format, one providers module."""
    schema = json.loads((PACKAGE / "config" / "schema.json").read_text())
    return set(schema["$defs"]["provider"]["properties"]["kind"]["enum"])


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> tuple[str, ...]:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported(path: Path, source: str | None = None) -> list[tuple[tuple[str, ...], int]]:
    """Absolute names (tuples) of the anyrouter_proxy modules `path` imports, with lines;
    `from X import name` counts as importing X.name too (it may be a module)."""
    own = module_name(path)
    package = own if path.name == "__init__.py" else own[:-1]
    found: list[tuple[tuple[str, ...], int]] = []
    text = path.read_text() if source is None else source
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            found += [(tuple(a.name.split(".")), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = tuple((node.module or "").split(".")) if node.module else ()
            if node.level:
                base = package[:len(package) - node.level + 1] + base
            found.append((base, node.lineno))
            found += [((*base, a.name), node.lineno) for a in node.names]
    return [(name, line) for name, line in found if name[:1] == ("anyrouter_proxy",)]


def layer(name: tuple[str, ...]) -> int | None:
    return LAYERS.get(name[1]) if len(name) > 1 else None


def is_adapter(name: tuple[str, ...]) -> bool:
    """The providers module of one kind (openai, anthropic, azure, bedrock, mock, ...);
    everything else in providers/ is a shared helper (translation, streams, shapes)."""
    return name[1:2] == ("providers",) and name[2:3] != () and name[2] in provider_kinds()


def test_every_module_has_a_layer() -> None:
    unknown = sorted({module_name(p)[1] for p in modules()
                      if len(module_name(p)) > 1 and layer(module_name(p)) is None})
    assert unknown == []


def against_the_direction(path: Path, source: str | None = None) -> list[str]:
    own = module_name(path)
    mine = layer(own)
    if mine is None:
        return []
    return [f"{'.'.join(own)}:{line} imports {'.'.join(name)}"
            for name, line in imported(path, source)
            if (theirs := layer(name)) is not None and theirs > mine]


def test_imports_point_one_way() -> None:
    assert [wrong for path in modules() for wrong in against_the_direction(path)] == []


def test_services_do_not_import_each_other() -> None:
    """providers, limits, storage and upstream are peers: none imports another."""
    wrong = []
    for path in modules():
        own = module_name(path)
        if layer(own) != SERVICES:
            continue
        for name, line in imported(path):
            if layer(name) == SERVICES and name[1] != own[1]:
                wrong.append(f"{'.'.join(own)}:{line} imports {'.'.join(name)}")
    assert wrong == []


def test_providers_do_not_import_each_other() -> None:
    """One module per wire format; they share translation helpers, not each other."""
    wrong = []
    for path in modules():
        own = module_name(path)
        if own[1:2] != ("providers",) or own[2:3] == tuple(PROVIDER_DISPATCH):
            continue
        for name, line in imported(path):
            if is_adapter(name) and name[:3] != own[:3]:
                wrong.append(f"{'.'.join(own)}:{line} imports {'.'.join(name)}")
    assert wrong == []


def test_only_server_uses_aiohttp_web() -> None:
    wrong = []
    for path in modules():
        if module_name(path)[1:2] == ("server",):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) and node.module else [])
            if any(n == "aiohttp.web" or n.startswith("aiohttp.web.") for n in names):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert wrong == []


@pytest.mark.parametrize("folder", [TESTS, BENCH], ids=["tests", "bench"])
def test_no_test_file_is_imported(folder: Path) -> None:
    """Shared test helpers live in tests/*.py, never in a test file; bench/ imports
    nothing from tests/."""
    wrong = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom | ast.Import):
                continue
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""])
            for name in names:
                parts = name.split(".")
                bad = (parts[0] == "tests" if folder == BENCH
                       else parts[0] == "tests" and parts[-1].startswith("test_"))
                if bad:
                    wrong.append(f"{path.relative_to(folder.parent)}:{node.lineno} {name}")
    assert wrong == []


def test_the_checker_sees_a_wrong_import() -> None:
    """The check above can fail: limits importing the gateway or the server is seen,
    relative or absolute; storage importing config is fine."""
    source = ("from ..gateway import Gateway\nimport anyrouter_proxy.server.app\n"
              "from ..config.model import Config\n")
    assert against_the_direction(PACKAGE / "limits" / "quota.py", source) == [
        "anyrouter_proxy.limits.quota:1 imports anyrouter_proxy.gateway",
        "anyrouter_proxy.limits.quota:1 imports anyrouter_proxy.gateway.Gateway",
        "anyrouter_proxy.limits.quota:2 imports anyrouter_proxy.server.app",
    ]
    assert against_the_direction(PACKAGE / "storage" / "store.py", source)[-1].endswith(
        "server.app")


def test_adapters_are_the_kinds() -> None:
    assert is_adapter(("anyrouter_proxy", "providers", "openai"))
    assert is_adapter(("anyrouter_proxy", "providers", "bedrock", "ChatViaBedrock"))
    assert not is_adapter(("anyrouter_proxy", "providers", "anthropic_translate"))
    assert not is_adapter(("anyrouter_proxy", "providers", "base"))
