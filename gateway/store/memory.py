"""`memory:` — dicts in this process, for tests and throwaway runs; gone on restart."""
from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import AsyncIterator

from .base import Dumped, Entries, Notifier, Order, chain_in_two_reads, page

SWEEP_INTERVAL = 60.0


class MemoryStore:
    def __init__(self, url: str = "memory:") -> None:
        self.url = url
        self._responses: dict[str, tuple[bytes, float]] = {}
        self._conversations: dict[str, tuple[bytes, float]] = {}
        self._items: dict[str, dict[str, bytes]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._events: dict[str, list[tuple[int, bytes]]] = {}
        self._leases: dict[str, tuple[str, float]] = {}   # response id → (instance, deadline)
        self._cancels: dict[str, float] = {}
        self._notifier = Notifier()

    async def open(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def ping(self) -> None:
        pass

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            self.sweep()

    def sweep(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, at) in self._responses.items() if at <= now]:
            del self._responses[key]
        for key in [k for k in self._events if k not in self._responses]:
            del self._events[key]
        for key in [k for k, at in self._cancels.items() if at <= now]:
            del self._cancels[key]
        for key in [k for k, (_, at) in self._conversations.items() if at <= now]:
            del self._conversations[key]
            self._items.pop(key, None)

    @staticmethod
    def _live(table: dict[str, tuple[bytes, float]], key: str) -> bytes | None:
        entry = table.get(key)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del table[key]
            return None
        return entry[0]

    async def dump(self) -> AsyncIterator[Dumped]:
        now = time.monotonic()
        for rid, (record, at) in list(self._responses.items()):
            if at > now:
                yield Dumped("response", rid, record, at - now, [])
        for cid, (record, at) in list(self._conversations.items()):
            if at > now:
                yield Dumped("conversation", cid, record, at - now, list(self._items.get(cid, {}).items()))

    # ------------------------------------------------------------------ responses
    async def put_response(self, response_id: str, record: bytes, ttl: float,
                           conversation: tuple[str, list[tuple[str, bytes]]] | None = None) -> None:
        self._responses[response_id] = (record, time.monotonic() + ttl)
        if conversation is not None:
            self._append(*conversation, ttl)

    async def get_responses(self, response_ids: list[str]) -> dict[str, bytes]:
        found = {rid: self._live(self._responses, rid) for rid in response_ids}
        return {rid: record for rid, record in found.items() if record is not None}

    async def get_chain(self, response_id: str) -> dict[str, bytes]:
        return await chain_in_two_reads(self, response_id)

    async def touch_responses(self, response_ids: list[str], ttl: float) -> None:
        deadline = time.monotonic() + ttl
        for rid in response_ids:
            record = self._live(self._responses, rid)
            if record is not None:
                self._responses[rid] = (record, deadline)

    async def delete_response(self, response_id: str) -> bool:
        self._events.pop(response_id, None)
        return self._responses.pop(response_id, None) is not None

    # ------------------------------------------------------------------ conversations
    async def put_conversation(self, conversation_id: str, record: bytes, ttl: float,
                               items: list[tuple[str, bytes]] | None = None) -> None:
        self._conversations[conversation_id] = (record, time.monotonic() + ttl)
        self._append(conversation_id, items or [], ttl)

    def _append(self, conversation_id: str, items: list[tuple[str, bytes]], ttl: float) -> None:
        """Items keep their first position: an id appended again is ignored."""
        stored = self._items.setdefault(conversation_id, {})
        for item_id, item in items:
            stored.setdefault(item_id, item)
        record = self._live(self._conversations, conversation_id)
        if record is not None:
            self._conversations[conversation_id] = (record, time.monotonic() + ttl)

    async def get_conversation(self, conversation_id: str) -> bytes | None:
        return self._live(self._conversations, conversation_id)

    async def delete_conversation(self, conversation_id: str) -> bool:
        self._items.pop(conversation_id, None)
        return self._conversations.pop(conversation_id, None) is not None

    def _live_items(self, conversation_id: str) -> dict[str, bytes]:
        if self._live(self._conversations, conversation_id) is None:
            self._items.pop(conversation_id, None)
            return {}
        return self._items.get(conversation_id, {})

    async def list_items(self, conversation_id: str, *, after: str | None, limit: int | None,
                         order: Order) -> tuple[list[bytes], bool]:
        items = self._live_items(conversation_id)
        ids, more = page(list(items), after, limit, order)
        return [items[i] for i in ids], more

    async def get_item(self, conversation_id: str, item_id: str) -> bytes | None:
        return self._live_items(conversation_id).get(item_id)

    async def delete_item(self, conversation_id: str, item_id: str) -> bool:
        return self._live_items(conversation_id).pop(item_id, None) is not None

    # ------------------------------------------------------------------ background responses
    async def append_events(self, response_id: str, events: list[tuple[int, bytes]], ttl: float) -> None:
        self._events.setdefault(response_id, []).extend(events)
        self._notifier.notify(response_id)

    async def read_events(self, response_id: str, after: int) -> list[tuple[int, bytes]]:
        log = self._events.get(response_id, [])
        return log[bisect.bisect_right(log, after, key=_seq):]

    async def follow_events(self, response_id: str, after: int, timeout: float) -> list[tuple[int, bytes]]:
        found = await self.read_events(response_id, after)
        if not found:
            await self._notifier.wait(response_id, timeout)
            found = await self.read_events(response_id, after)
        return found

    async def write_run(self, response_id: str, record: bytes, ttl: float, events: Entries,
                        claim: tuple[str, float] | None = None) -> None:
        await self.put_response(response_id, record, ttl)
        if claim is not None:
            await self.claim_run(response_id, *claim)
        if events:
            await self.append_events(response_id, events, ttl)

    async def claim_run(self, response_id: str, instance: str, lease: float) -> None:
        self._leases[response_id] = (instance, time.monotonic() + lease)

    async def renew_runs(self, response_ids: list[str], instance: str, lease: float) -> None:
        for response_id in response_ids:
            await self.claim_run(response_id, instance, lease)

    async def release_run(self, response_id: str) -> None:
        self._leases.pop(response_id, None)
        self._cancels.pop(response_id, None)

    async def take_lapsed_runs(self) -> list[str]:
        now = time.monotonic()
        lapsed = [rid for rid, (_, deadline) in self._leases.items() if deadline <= now]
        for rid in lapsed:
            del self._leases[rid]
        return lapsed

    async def run_owner(self, response_id: str) -> str | None:
        instance, deadline = self._leases.get(response_id, (None, 0.0))
        return instance if deadline > time.monotonic() else None

    async def request_cancel(self, response_id: str, ttl: float) -> None:
        self._cancels[response_id] = time.monotonic() + ttl

    async def cancel_requested(self, response_ids: list[str]) -> set[str]:
        return {rid for rid in response_ids if rid in self._cancels}


def _seq(entry: tuple[int, bytes]) -> int:
    return entry[0]
