"""The one async interface every state backend implements (memory, SQLite, Redis).

Backends keep opaque JSON bytes under ids and know nothing of Responses semantics; ownership,
chains and item shapes live in `gateway.store.service`. Everything expires: `ttl` seconds after
the last write (responses) or the last use (conversations), and expired data is really removed.

Issue 11 (background responses) adds, on the same keys and without changing these methods:
- an append-only event log per response: `append_events(id, first_seq, [bytes])`,
  `read_events(id, after)` and `follow_events(id, after)` (Redis Streams XADD/XREAD BLOCK; SQLite
  a table polled, woken early by an in-process notifier; memory a list plus an asyncio.Condition);
- a run lease: `claim_run(id, instance, ttl)`, `renew_run`, `lapsed_runs()` (Redis keys with PX and
  a sorted set of deadlines; SQLite a `runs` table);
- a cancel signal: `request_cancel(id)` / `cancel_requested(id)` (a key polled by the running
  instance every few hundred ms, which also covers SQLite and memory).
The record written by `put_response` already carries the response's status, so polling a
background response is `get_response`.
"""
from __future__ import annotations

from typing import Literal, Protocol

from ..errors import GatewayError

Order = Literal["asc", "desc"]


class StoreUnavailable(GatewayError):
    """The backend cannot be reached or failed: requests that need it answer 503 in OpenAI's envelope."""

    status = 503
    code = "store_unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__("The gateway's response store is unavailable; retry shortly.",
                         headers={"Retry-After": "1"})
        self.detail = detail


def page(ids: list[str], after: str | None, limit: int | None, order: Order) -> tuple[list[str], bool]:
    """The ids after `after` in `order`, at most `limit` of them, and whether more follow."""
    if order == "desc":
        ids = ids[::-1]
    if after is not None:
        try:
            ids = ids[ids.index(after) + 1:]
        except ValueError:
            ids = []
    if limit is None or len(ids) <= limit:
        return ids, False
    return ids[:limit], True


class Store(Protocol):
    """Opaque records by id. All methods raise `StoreUnavailable` on backend failure."""

    url: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    # ------------------------------------------------------------------ responses
    async def put_response(self, response_id: str, record: bytes, ttl: float,
                           conversation: tuple[str, list[tuple[str, bytes]]] | None = None) -> None:
        """Write a response record; with `conversation`, append (id, item) pairs to it atomically."""

    async def get_responses(self, response_ids: list[str]) -> dict[str, bytes]:
        """The records that exist (missing and expired ids are left out)."""

    async def touch_responses(self, response_ids: list[str], ttl: float) -> None:
        """Extend the expiry of records still in use (a chain being continued)."""

    async def delete_response(self, response_id: str) -> bool: ...

    # ------------------------------------------------------------------ conversations
    async def put_conversation(self, conversation_id: str, record: bytes, ttl: float,
                               items: list[tuple[str, bytes]] | None = None) -> None:
        """Create or replace the conversation record; `items` are appended after existing ones."""

    async def get_conversation(self, conversation_id: str) -> bytes | None: ...

    async def delete_conversation(self, conversation_id: str) -> bool:
        """Removes the conversation and its items."""

    async def list_items(self, conversation_id: str, *, after: str | None, limit: int | None,
                         order: Order) -> tuple[list[bytes], bool]:
        """A page of items (all when `limit` is None) and whether more follow; `after` is an item id."""

    async def get_item(self, conversation_id: str, item_id: str) -> bytes | None: ...

    async def delete_item(self, conversation_id: str, item_id: str) -> bool: ...
