"""The user docs keep up with the product: every routes.yaml field, error code, metric,
alert and command is documented; every link between the docs resolves; and nothing in
the repository points outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from anyrouter_proxy.cli import build_parser
from anyrouter_proxy.config.loader import schema
from anyrouter_proxy.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
# A map's keys are written as these placeholders: providers.ID.kind, keys.NAME.credits.
PLACEHOLDERS = {"providers": "ID", "models": "ID", "keys": "NAME", "deprecations": "ENDPOINT",
                "model_limits": "GLOB"}
README_MAX_LINES = 300


def read(path: Path) -> str:
    return path.read_text("utf-8")


def _resolve(node: Any, root: dict[str, Any]) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def schema_paths(node: Any, root: dict[str, Any], prefix: str = "") -> list[str]:
    """Every property path of the schema: `server.cors.allow_origins`,
    `models.ID.routes[].weight`, `keys.NAME.model_limits.GLOB.tokens_per_minute`."""
    node = _resolve(node, root)
    paths: list[str] = []
    if not isinstance(node, dict):
        return paths
    for name, sub in node.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        paths += [path, *schema_paths(sub, root, path)]
    extra = _resolve(node.get("additionalProperties"), root)
    if prefix and isinstance(extra, dict) and "properties" in extra:
        placeholder = PLACEHOLDERS.get(prefix.rsplit(".", 1)[-1], "NAME")
        paths += schema_paths(extra, root, f"{prefix}.{placeholder}")
    items = _resolve(node.get("items"), root)
    if isinstance(items, dict) and "properties" in items:
        paths += schema_paths(items, root, f"{prefix}[]")
    return paths


def test_the_schema_walk_finds_nested_and_mapped_fields() -> None:
    paths = schema_paths(schema(), schema())
    for expected in ("version", "server.cors.allow_origins", "providers.ID.timeouts.idle_s",
                     "models.ID.routes[].pricing.prompt", "keys.NAME.budget.period",
                     "keys.NAME.model_limits.GLOB.concurrent_requests",
                     "deprecations.ENDPOINT.successor", "state.on_error.credits"):
        assert expected in paths
    assert len(paths) == len(set(paths)) > 100


def test_every_routes_yaml_field_is_in_configuration_md() -> None:
    doc = read(DOCS / "configuration.md")
    missing = [path for path in schema_paths(schema(), schema()) if f"`{path}`" not in doc]
    assert not missing, f"fields of schema.json not documented in docs/configuration.md: {missing}"


def test_every_error_code_is_in_the_errors_table() -> None:
    doc = read(DOCS / "api.md")
    table = doc[doc.index("## Errors"):]
    source = "\n".join(read(p) for p in (REPO / "anyrouter_proxy").rglob("*.py"))
    codes = set(re.findall(r'\bcode="([a-z_]+)"', source))
    codes |= set(re.findall(r'code = "([a-z_]+)"', source))  # the classes' defaults
    codes |= {"method_not_allowed", "request_too_large", "unsupported_media_type"}
    assert len(codes) > 20
    missing = sorted(code for code in codes if f"`{code}`" not in table)
    assert not missing, f"error codes missing from docs/api.md's errors table: {missing}"


def test_every_metric_and_alert_is_in_operations_md() -> None:
    doc = read(DOCS / "operations.md")
    metrics = {family.name for family in Metrics().registry.collect()}
    missing = sorted(name for name in metrics
                     if name not in doc and f"{name}_total" not in doc)
    assert not missing, f"metrics not documented in docs/operations.md: {missing}"
    alerts = yaml.safe_load(read(REPO / "deploy" / "prometheus" / "alerts.yml"))
    names = [rule["alert"] for group in alerts["groups"] for rule in group["rules"]]
    assert len(names) > 10
    missing = [name for name in names if f"`{name}`" not in doc]
    assert not missing, f"alerts not documented in docs/operations.md: {missing}"


def test_every_command_is_documented() -> None:
    text = read(REPO / "README.md") + "".join(read(p) for p in DOCS.glob("*.md"))
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert commands
    for name in commands:
        assert f"anyrouter-proxy {name}" in text, name


def test_the_readme_is_a_front_door() -> None:
    readme = read(REPO / "README.md")
    assert len(readme.splitlines()) <= README_MAX_LINES
    assert "Python 3.11" in readme and "make run" in readme and "make test" in readme
    for page in ("configuration", "api", "deployment", "operations", "performance",
                 "architecture"):
        assert f"docs/{page}.md" in readme, page


LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", markdown, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_links_between_the_docs_resolve() -> None:
    pages = [REPO / "README.md", *DOCS.glob("*.md")]
    broken = []
    for page in pages:
        for target in LINK.findall(read(page)):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file_part, _, anchor = target.partition("#")
            file = (page.parent / file_part).resolve() if file_part else page
            if not file.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(read(file)):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


# Written in pieces so that this file does not match itself.
OUTSIDE = re.compile("|".join([r"\bS" + r"PEC\b", "\u00a7", r"\b[Ii]ssue[ -]?[0-9]",
                               r"\.\./" + "shared", "seed-" + "api", "HOUSE-" + "STYLE"]))


def test_nothing_in_the_repository_points_outside_it() -> None:
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout
    offenders = []
    for name in tracked.splitlines():
        path = REPO / name
        if not path.is_file() or path.suffix in {".png", ".db"}:
            continue
        for number, line in enumerate(read(path).splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{name}:{number}: {line.strip()[:80]}")
    assert not offenders, offenders


TEST_REF = re.compile(r"`(?:tests/(?:e2e|unit)/(?:\w+/)?)?(test_\w+\.py)?(?:::(test_[\w*]+))?`")


def test_the_tests_named_in_the_guarantees_table_exist() -> None:
    doc = read(DOCS / "architecture.md")
    table = doc[doc.index("## Guarantees"):]
    files = {p.name: read(p) for p in (REPO / "tests").rglob("test_*.py")}
    checked, missing = 0, []
    for row in table.splitlines():
        current = None
        for file, test in TEST_REF.findall(row):
            current = file or current
            if current is None or current not in files:
                missing.append(f"{current}::{test}")
                continue
            name = test.replace("*", r"\w*")
            if test and not re.search(rf"^(async )?def {name}\(", files[current], re.MULTILINE):
                missing.append(f"{current}::{test}")
            checked += 1
    assert checked > 30
    assert not missing, f"tests named in docs/architecture.md that do not exist: {missing}"
