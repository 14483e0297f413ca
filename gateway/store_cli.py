"""`gateway migrate [--config FILE] [--store URL]`: apply the PostgreSQL store's schema migrations on their
own (a deploy step before starting new instances); `gateway serve` also applies them at start."""
from __future__ import annotations

import argparse
import asyncio
from typing import Any

from .cli_io import CliError
from .config import load_config
from .errors import ConfigError
from .store import POSTGRES_SCHEMES, StoreUnavailable, display_url


def register(commands: Any) -> None:
    parser = commands.add_parser("migrate", help="apply the PostgreSQL store's schema migrations and exit",
                                 description="Apply the missing schema migrations of store.url (PostgreSQL) "
                                 "under an advisory lock, print the versions applied, and exit.")
    parser.add_argument("--config", help="YAML config file whose store.url to migrate")
    parser.add_argument("--store", help="store URL (overrides store.url)")
    parser.set_defaults(run=run_migrate)


def run_migrate(args: argparse.Namespace) -> int:
    try:
        url = load_config(args.config, {"store": {"url": args.store}}).store.url
    except ConfigError as exc:
        raise CliError(f"bad config: {exc}") from None
    if not url.startswith(POSTGRES_SCHEMES):
        print(f"{display_url(url)}: nothing to migrate (only a PostgreSQL store has versioned migrations)")
        return 0
    from .store.postgres import MIGRATIONS, migrate_url
    try:
        applied = asyncio.run(migrate_url(url))
    except StoreUnavailable as exc:
        raise CliError(exc.detail) from None
    latest = MIGRATIONS[-1][0]
    done = f"applied {', '.join(map(str, applied))}" if applied else "nothing to apply"
    print(f"{display_url(url)}: {done}; schema at version {latest}")
    return 0
