"""The one async interface every state backend implements (memory, SQLite, Redis).

Backends keep opaque JSON bytes under ids and know nothing of Responses semantics; ownership,
chains and item shapes live in `gateway.store.service`. Everything expires: `ttl` seconds after
the last write (responses) or the last use (conversations), and expired data is really removed.

Background responses (gateway/background.py) add three small families on the same ids:
- an append-only event log per response: encoded SSE frames under their sequence numbers, read
  from a position and followed live (Redis Streams XADD/XREAD BLOCK; SQLite a table polled and
  woken early by an in-process `Notifier`; memory a list). It expires and is deleted with the
  response;
- a run lease: the instance running a response claims it with a deadline and renews it; any
  instance takes the runs whose deadline passed (exactly one taker each) and ends them;
- a cancel signal: a flag the running instance polls every few hundred ms.
The record written by `put_response` carries the response's status, so polling is `get_response`.
`write_run` writes a background response's record with its next log entries (and at the create its
lease) in one round trip, so a create answers after one; concurrent calls share it (`Batcher`).
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, Literal, NamedTuple, Protocol, TypeVar

import orjson

from ..errors import GatewayError

Order = Literal["asc", "desc"]
T = TypeVar("T")


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


class Notifier:
    """Wakes the coroutines waiting on a key in this process (followers of an event log)."""

    __slots__ = ("_events",)

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def notify(self, key: str) -> None:
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    def arm(self, key: str) -> asyncio.Event:
        """The event the next `notify(key)` sets: armed before a read, it keeps a notify during the read."""
        return self._events.setdefault(key, asyncio.Event())

    async def wait(self, key: str, timeout: float) -> None:
        """Until `notify(key)` or `timeout` seconds, whichever comes first."""
        event = self.arm(key)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass


Entries = list[tuple[int, bytes]]          # an event log's (sequence number, frame) pairs
DUMP_PAGE = 500                            # rows per read while dumping a store


class Dumped(NamedTuple):
    """One stored object for `gateway store export`: a response, or a conversation with its items."""

    kind: Literal["response", "conversation"]
    id: str
    record: bytes
    ttl: float                              # seconds it has left
    items: list[tuple[str, bytes]]          # a conversation's (item id, item), in order
Appends = list[tuple[str, Entries]]        # (response id, entries) of several runs


class RunWrite(NamedTuple):
    """One `write_run` call: a background response's record, its next log entries, maybe its lease."""

    response_id: str
    record: bytes
    ttl: float
    events: Entries
    claim: tuple[str, float] | None   # (instance, lease seconds)


class Batcher(Generic[T]):
    """Coalesces writes of all requests and runs into one backend write per round trip.

    Every `add` waits for the write that carries it; writes added while one is under way go
    together in the next, so hundreds of streams (event-log appends) or a burst of background
    creates cost a few backend writes per tick, not one each.
    """

    __slots__ = ("_write", "_pending", "_flushing")

    def __init__(self, write: Callable[[list[T]], Awaitable[None]]) -> None:
        self._write = write
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._flushing = False

    async def add(self, item: T) -> None:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._write([item for item, _ in batch])
                except Exception as exc:  # noqa: BLE001 - handed to every waiting writer
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for _, future in batch:
                        if not future.done():
                            future.set_result(None)
        finally:
            self._flushing = False


CHAIN_KEY = b',"chain":['   # a record's `chain`, its last key (gateway/store/service.py encode_response)


def trailing_chain(record: bytes) -> list[str] | None:
    """The ids of a record's `chain` when it is the record's last key, found without parsing the
    rest of the record; None for a record of another layout."""
    cut = record.rfind(CHAIN_KEY)
    if cut < 0 or not record.endswith(b"]}"):
        return None
    try:
        chain = orjson.loads(record[cut + len(CHAIN_KEY) - 1:-1])
    except orjson.JSONDecodeError:
        return None
    return chain if isinstance(chain, list) and all(isinstance(rid, str) for rid in chain) else None


def chain_suffix_lengths(chain: list[str]) -> list[int]:
    """For each ancestor of `chain` (oldest first), the bytes its record's trailing `,"chain":[…]`
    takes before the record's closing brace. Ancestor k's chain is `chain[:k]` (a chain never
    changes once stored), so a backend can hand it out without that part: each record of a
    D-turn chain lists up to D ids, and reading them all made loading the chain cost D² bytes.
    A backend checks that `,"chain":[` sits where expected and returns the record whole if not. That
    check alone proves the chain is last, without reading the record's end (which PostgreSQL can only do
    by decompressing the record whole): JSON escapes a quote inside a string, so those bytes are only
    ever the key, and an ancestor's chain is exactly `chain[:k]`, so the key sits that far from the end
    only when nothing follows the chain."""
    lengths, ids = [], 0
    for k, rid in enumerate(chain):
        lengths.append(len(CHAIN_KEY) + ids + max(k - 1, 0) + 1)   # key, quoted ids, commas, "]"
        ids += len(rid.encode()) + 2
    return lengths


def without_chain(record: bytes, suffix: int) -> bytes:
    """`record` without its trailing chain of `suffix` bytes (chain_suffix_lengths), or whole when its
    layout differs (a record written before `chain` came last)."""
    start = len(record) - 1 - suffix
    if start > 0 and record.startswith(CHAIN_KEY, start) and record.endswith(b"]}"):
        return record[:start] + b"}"
    return record


async def chain_in_two_reads(store: "Store", response_id: str) -> dict[str, bytes]:
    """`get_chain` for key-value backends: the record, then its ancestors in one multi-get."""
    found = await store.get_responses([response_id])
    if response_id in found:
        chain = chain_of(found[response_id])
        if chain:
            ancestors = await store.get_responses(chain)
            found.update((rid, without_chain(ancestors[rid], suffix))
                         for rid, suffix in zip(chain, chain_suffix_lengths(chain)) if rid in ancestors)
    return found


def chain_of(record: bytes) -> list[str]:
    """A record's `chain`, read from its end when it comes last, else from the whole record."""
    chain = trailing_chain(record)
    return chain if chain is not None else orjson.loads(record).get("chain") or []


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

    async def get_chain(self, response_id: str) -> dict[str, bytes]:
        """The record of `response_id` and those of the ids it lists under `chain` (its ancestors): a whole
        `previous_response_id` chain. The one place a backend looks into a record. An ancestor's record
        may come without its own `chain` when that is its last key (`chain_suffix_lengths`)."""

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

    # ------------------------------------------------------------------ background responses
    async def append_events(self, response_id: str, events: list[tuple[int, bytes]], ttl: float) -> None:
        """Append (sequence number, frame) pairs, numbers rising; the log expires `ttl` from now."""

    async def read_events(self, response_id: str, after: int) -> list[tuple[int, bytes]]:
        """The logged (sequence number, frame) pairs after `after`, in order."""

    async def follow_events(self, response_id: str, after: int, timeout: float) -> list[tuple[int, bytes]]:
        """Like `read_events`, waiting up to `timeout` seconds for at least one; [] when none came."""

    async def write_run(self, response_id: str, record: bytes, ttl: float, events: Entries,
                        claim: tuple[str, float] | None = None) -> None:
        """A background response's record and next log entries in one round trip, all or nothing:
        `put_response` and (when `events`) `append_events` together, and with `claim` (instance,
        lease) `claim_run` too. Concurrent calls share round trips."""

    async def claim_run(self, response_id: str, instance: str, lease: float) -> None:
        """Record that `instance` runs the response, until `lease` seconds from now."""

    async def renew_runs(self, response_ids: list[str], instance: str, lease: float) -> None: ...

    async def release_run(self, response_id: str) -> None:
        """The run ended: drop its lease and any cancel request."""

    async def take_lapsed_runs(self) -> list[str]:
        """Runs whose lease deadline passed, each handed to exactly one caller (across instances)."""

    async def run_owner(self, response_id: str) -> str | None:
        """The instance holding a live lease on the run, or None."""

    async def request_cancel(self, response_id: str, ttl: float) -> None: ...

    # ------------------------------------------------------------------ export
    def dump(self) -> AsyncIterator[Dumped]:
        """Every live response and conversation (with its items), read a page at a time. Event logs, leases
        and cancel signals are not dumped: they belong to runs of the instances using the store."""

    async def cancel_requested(self, response_ids: list[str]) -> set[str]:
        """The ids among `response_ids` whose cancel was requested."""
