"""The store's own commands:
- `gateway migrate [--config FILE] [--store URL]`: apply the PostgreSQL or SQLite store's schema migrations on
  their own (a deploy step before starting new instances); `gateway serve` also applies them at start;
- `gateway store export|import [--config FILE] [--store URL] [FILE]`: every live response and conversation
  as JSON lines, from any backend into any other (e.g. SQLite to PostgreSQL), keeping each one's time left.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import nullcontext
from typing import IO, Any

import orjson

from .cli_io import CliError
from .config import load_config
from .errors import ConfigError
from .store import POSTGRES_SCHEMES, Store, StoreUnavailable, display_url, open_store_url


def register(commands: Any) -> None:
    migrate = commands.add_parser("migrate", help="apply the store's schema migrations and exit",
                                  description="Apply the missing schema migrations of store.url (PostgreSQL "
                                  "under an advisory lock, SQLite in one transaction), print the versions "
                                  "applied, and exit.")
    _store_arguments(migrate)
    migrate.set_defaults(run=run_migrate)
    store = commands.add_parser("store", help="export or import stored responses and conversations (JSON lines)")
    actions = store.add_subparsers(dest="action", required=True)
    for name, helped, run in (("export", "write every live response and conversation to FILE (default stdout)",
                               run_export),
                              ("import", "read what `export` wrote from FILE (default stdin) into the store",
                               run_import)):
        action = actions.add_parser(name, help=helped)
        _store_arguments(action)
        action.add_argument("file", nargs="?", default="-", help="JSON lines file (- or none: stdin/stdout)")
        action.set_defaults(run=run)


def _store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file whose store.url to use")
    parser.add_argument("--store", help="store URL (overrides store.url)")


def _store_url(args: argparse.Namespace) -> str:
    try:
        return load_config(args.config, {"store": {"url": args.store}}).store.url
    except ConfigError as exc:
        raise CliError(f"bad config: {exc}") from None


def run_migrate(args: argparse.Namespace) -> int:
    url = _store_url(args)
    if url.startswith(POSTGRES_SCHEMES):
        from .store.postgres import MIGRATIONS, migrate_url
        latest = MIGRATIONS[-1][0]
    elif url.startswith("sqlite:"):
        from .store.sqlite import SCHEMA_VERSION as latest
        from .store.sqlite import migrate_url
    else:
        print(f"{display_url(url)}: nothing to migrate (only PostgreSQL and SQLite stores have versioned schemas)")
        return 0
    try:
        applied = asyncio.run(migrate_url(url))
    except StoreUnavailable as exc:
        raise CliError(exc.detail) from None
    done = f"applied {', '.join(map(str, applied))}" if applied else "nothing to apply"
    print(f"{display_url(url)}: {done}; schema at version {latest}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    url = _store_url(args)
    with _open(args.file, "wb") as out:
        count = asyncio.run(_with_store(url, lambda store: export(store, out)))
    print(f"exported {count} responses and conversations from {display_url(url)}", file=sys.stderr)
    return 0


def run_import(args: argparse.Namespace) -> int:
    url = _store_url(args)
    with _open(args.file, "rb") as source:
        count = asyncio.run(_with_store(url, lambda store: import_lines(store, source)))
    print(f"imported {count} responses and conversations into {display_url(url)}", file=sys.stderr)
    return 0


def _open(path: str, mode: str) -> Any:
    if path == "-":
        return nullcontext(sys.stdout.buffer if "w" in mode else sys.stdin.buffer)
    try:
        return open(path, mode)  # noqa: SIM115 - closed by the caller's with
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror}") from None


async def _with_store(url: str, work: Any) -> int:
    store = open_store_url(url)
    try:
        await store.open()
        return await work(store)
    except StoreUnavailable as exc:
        raise CliError(exc.detail) from None
    finally:
        await store.close()


async def export(store: Store, out: IO[bytes]) -> int:
    """Write every live object as one JSON line: kind, id, ttl (seconds left), record, items."""
    count = 0
    async for dumped in store.dump():
        line = {"kind": dumped.kind, "id": dumped.id, "ttl": round(dumped.ttl, 3),
                "record": orjson.Fragment(dumped.record)}
        if dumped.kind == "conversation":
            line["items"] = [[item_id, orjson.Fragment(item)] for item_id, item in dumped.items]
        out.write(orjson.dumps(line) + b"\n")
        count += 1
    return count


async def import_lines(store: Store, source: IO[bytes]) -> int:
    """Write each exported line into `store` (an object already there is replaced; items keep their first place)."""
    count = 0
    for number, raw in enumerate(source, 1):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
            kind, object_id, ttl, record = line["kind"], line["id"], float(line["ttl"]), orjson.dumps(line["record"])
            items = [(item_id, orjson.dumps(item)) for item_id, item in line.get("items", [])]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CliError(f"line {number}: not an exported object ({exc})") from None
        if ttl <= 0:
            continue
        if kind == "response":
            await store.put_response(object_id, record, ttl)
        elif kind == "conversation":
            await store.put_conversation(object_id, record, ttl, items=items)
        else:
            raise CliError(f"line {number}: unknown kind {kind!r}")
        count += 1
    return count
