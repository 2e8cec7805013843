"""The `anyrouter-proxy` command line (docs/configuration.md, docs/operations.md)."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .config.loader import ConfigError, load_config, schema
from .config.model import Config
from .exposure import exposure_problem
from .starter import StarterExists, new_api_key, write_starter

DEFAULT_CONFIG = "config/routes.yaml"
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # the schema's identifier
log = logging.getLogger("anyrouter_proxy")


def _load_or_report(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(problem.render(exc.source), file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return 1
    print(f"{args.config}: OK ({len(config.providers)} providers, {len(config.models)} models, "
          f"{len(config.keys)} keys)")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(schema(), indent=2))
    return 0


def cmd_keys_new(args: argparse.Namespace) -> int:
    if not KEY_NAME.fullmatch(args.name):
        print(f"error: key name {args.name!r} must be 1-64 letters, digits, '_', '.' or '-', "
              "starting with a letter or digit", file=sys.stderr)
        return 2
    key, digest = new_api_key()
    print(f"API key for {args.name} (shown once; store it now):\n\n  {key}\n")
    print("Paste under `keys:` in routes.yaml:\n")
    print(f"  {args.name}:\n    key_sha256: {digest}")
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from .storage.activity import Filters
    from .storage.report import build_report, format_report, parse_time

    dsn: str | None = None
    if args.db:  # --db is always a SQLite file
        db = Path(args.db)
    else:
        config = _load_or_report(args.config)
        if config is None:
            return 1
        db = config.storage.sqlite_path
        if config.storage.backend == "postgres":
            dsn = config.storage.dsn
    filters = Filters(key=args.key, model=args.model, provider=args.provider)
    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until, end=True) if args.until else None
        if dsn is not None:
            from .storage.report_pg import build_report_pg

            rows = build_report_pg(dsn, by=args.by, since=since, until=until,
                                   filters=filters)
        else:
            rows = build_report(db, by=args.by, since=since, until=until, filters=filters)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_report(rows, by=args.by, fmt=args.format), end="")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .server.runner import serve

    config = _load_or_report(args.config)
    if config is None:
        return 1
    problem = exposure_problem(config, args.host or config.server.host)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    return serve(config, host=args.host, port=args.port, log_level=args.log_level,
                 log_format=args.log_format, on_listening=_banner_printer(config))


def _banner_printer(config: Config) -> Callable[[str, int], None] | None:
    """On a terminal: where things are, and the demo key warning (banner.py)."""
    if not sys.stderr.isatty():
        return None

    def print_banner(host: str, port: int) -> None:
        from .banner import banner

        print(banner(config, host, port), file=sys.stderr, flush=True)

    return print_banner


def cmd_init(args: argparse.Namespace) -> int:
    if not KEY_NAME.fullmatch(args.key_name):
        print(f"error: key name {args.key_name!r} must be 1-64 letters, digits, '_', '.' or "
              "'-', starting with a letter or digit", file=sys.stderr)
        return 2
    try:
        made = write_starter(Path(args.directory), args.key_name)
    except StarterExists as exc:
        print(f"error: {exc}; init never overwrites (move them away, or pick another "
              "folder)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Wrote {made.config}, and beside it {made.schema} for editors to check it.\n")
    print(f"API key {args.key_name} (shown once; routes.yaml holds only its sha256):\n")
    print(f"  {made.key}\n")
    print("Next:")
    print(f"  anyrouter-proxy check --config {made.config}")
    print(f"  anyrouter-proxy serve --config {made.config}")
    print("  curl http://127.0.0.1:8080/api/v1/chat/completions "
          f"-H 'Authorization: Bearer {made.key}' \\")
    print("    -H 'Content-Type: application/json' -d '{\"model\": \"demo/echo\", "
          "\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anyrouter-proxy",
                                     description="Self-hosted OpenAI-compatible LLM gateway.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the API")
    serve.add_argument("--config", default=DEFAULT_CONFIG)
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    serve.add_argument("--log-format", choices=("json", "text"),
                       help="json lines or readable text (default: server.log_format, else "
                       "text on a terminal and json otherwise)")
    serve.set_defaults(func=cmd_serve)

    init = commands.add_parser(
        "init", help="write a starter routes.yaml, its schema and a new key into a folder")
    init.add_argument("directory", help="where to write routes.yaml and schema.json "
                      "(created if missing; existing files are never overwritten)")
    init.add_argument("--key-name", default="admin", help="name of the key (default: admin)")
    init.set_defaults(func=cmd_init)

    check = commands.add_parser("check", help="validate the config")
    check.add_argument("--config", default=DEFAULT_CONFIG)
    check.set_defaults(func=cmd_check)

    commands.add_parser("schema", help="print the JSON Schema of routes.yaml").set_defaults(
        func=cmd_schema)

    keys = commands.add_parser("keys", help="manage API keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_commands.add_parser("new", help="make a new random API key")
    new.add_argument("name")
    new.set_defaults(func=cmd_keys_new)

    usage = commands.add_parser("usage", help="usage report from the log")
    usage.add_argument("--config", default=DEFAULT_CONFIG)
    usage.add_argument("--db", help="a SQLite usage database (default: the config's "
                       "storage: sqlite_path, or its PostgreSQL dsn with backend postgres)")
    usage.add_argument("--by", default="model", metavar="GROUP[,GROUP]",
                       help="key, model, provider, day or month, or two of them such as "
                       "key,model (default: model)")
    usage.add_argument("--since", help="ISO date or date-time, UTC (included)")
    usage.add_argument("--until", help="ISO date or date-time, UTC (a date: its whole day)")
    usage.add_argument("--key", help="only this key's usage")
    usage.add_argument("--model", help="only this public model id")
    usage.add_argument("--provider", help="only this provider id")
    usage.add_argument("--format", choices=("table", "csv", "json"), default="table")
    usage.set_defaults(func=cmd_usage)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
