"""Stored responses and conversations behind one async interface (see base.py)."""
from __future__ import annotations

from .base import Store, StoreUnavailable

__all__ = ["Store", "StoreUnavailable", "open_store_url", "check_store_url", "display_url"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_SCHEMES = "memory:, sqlite:PATH, redis://HOST:PORT/DB or postgresql://USER@HOST:PORT/DB"


def check_store_url(url: str) -> str | None:
    """What is wrong with a store URL, or None."""
    if url == "memory:" or url.startswith(_REDIS_SCHEMES):
        return None
    if url.startswith(POSTGRES_SCHEMES):
        return None
    if url.startswith("sqlite:") and url.removeprefix("sqlite:").removeprefix("//"):
        return None
    return f"must be {_SCHEMES}, got {url!r}"


def check_events_url(url: str, events_url: str) -> str | None:
    """What is wrong with `store.events_url` beside `store.url`, or None."""
    if not events_url:
        return None
    if not events_url.startswith(_REDIS_SCHEMES):
        return f"must be redis://HOST:PORT/DB[?prefix=P] (or empty), got {events_url!r}"
    if not url.startswith(POSTGRES_SCHEMES):
        return "only beside a PostgreSQL store.url (event logs and cancel signals in Redis, the rest in PostgreSQL)"
    return None


def open_store_url(url: str, events_url: str = "") -> Store:
    """The backend for `url`, with `events_url` the hybrid (not yet opened: call `await store.open()`)."""
    if events_url:
        from .hybrid import HybridStore
        from .redis import RedisStore
        return HybridStore(open_store_url(url), RedisStore(events_url))
    if url == "memory:":
        from .memory import MemoryStore
        return MemoryStore(url)
    if url.startswith("sqlite:"):
        from .sqlite import SQLiteStore
        return SQLiteStore(url)
    if url.startswith(POSTGRES_SCHEMES):
        from .postgres import PostgresStore
        return PostgresStore(url)
    from .redis import RedisStore
    return RedisStore(url)


def display_url(url: str) -> str:
    """The URL for logs: no password, no query."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/")[0]:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}".split("?")[0]
