"""Stored responses and conversations behind one async interface (see base.py)."""
from __future__ import annotations

from .base import Store, StoreUnavailable

__all__ = ["Store", "StoreUnavailable", "open_store_url", "check_store_url", "display_url"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_SCHEMES = "memory:, sqlite:PATH, redis://HOST:PORT/DB or postgresql://USER@HOST:PORT/DB"


def check_store_url(url: str) -> str | None:
    """What is wrong with a store URL, or None."""
    if url == "memory:" or url.startswith(("redis://", "rediss://", "unix://")):
        return None
    if url.startswith(POSTGRES_SCHEMES):
        return None
    if url.startswith("sqlite:") and url.removeprefix("sqlite:").removeprefix("//"):
        return None
    return f"must be {_SCHEMES}, got {url!r}"


def open_store_url(url: str) -> Store:
    """The backend for `url` (not yet opened: call `await store.open()`)."""
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
