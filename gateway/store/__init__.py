"""Stored responses and conversations behind one async interface (see base.py)."""
from __future__ import annotations

from .base import Store, StoreUnavailable

__all__ = ["Store", "StoreUnavailable", "open_store_url", "check_store_url", "display_url"]

_SCHEMES = "memory:, sqlite:PATH or redis://HOST:PORT/DB"


def check_store_url(url: str) -> str | None:
    """What is wrong with a store URL, or None."""
    if url == "memory:" or url.startswith(("redis://", "rediss://", "unix://")):
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
    from .redis import RedisStore
    return RedisStore(url)


def display_url(url: str) -> str:
    """The URL for logs: no password, no query."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/")[0]:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}".split("?")[0]
