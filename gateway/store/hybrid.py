"""`store.events_url: redis://…` beside a `store.url`: the background event logs and cancel signals in Redis
(streams that followers block on, short-lived keys), everything else — responses, conversations, run
leases — in the main store (PostgreSQL). The event logs expire in Redis by themselves (the store's ttl).

`write_run` writes the main store's part (record, lease) first, then the log entries: a follower only
ever finds entries of a response whose record exists.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from .base import Dumped, Entries, Order, Store


class HybridStore:
    def __init__(self, records: Store, events: Store) -> None:
        self.records = records
        self.events = events
        self.url = records.url

    async def open(self) -> None:
        await asyncio.gather(self.records.open(), self.events.open())

    async def close(self) -> None:
        await asyncio.gather(self.records.close(), self.events.close())

    async def ping(self) -> None:
        await asyncio.gather(self.records.ping(), self.events.ping())

    # ------------------------------------------------------------------ responses, conversations: the main store
    async def put_response(self, response_id: str, record: bytes, ttl: float,
                           conversation: tuple[str, list[tuple[str, bytes]]] | None = None) -> None:
        await self.records.put_response(response_id, record, ttl, conversation)

    async def get_responses(self, response_ids: list[str]) -> dict[str, bytes]:
        return await self.records.get_responses(response_ids)

    async def get_chain(self, response_id: str) -> dict[str, bytes]:
        return await self.records.get_chain(response_id)

    async def touch_responses(self, response_ids: list[str], ttl: float) -> None:
        await self.records.touch_responses(response_ids, ttl)

    async def delete_response(self, response_id: str) -> bool:
        deleted, _ = await asyncio.gather(self.records.delete_response(response_id),
                                          self.events.delete_response(response_id))
        return deleted

    async def put_conversation(self, conversation_id: str, record: bytes, ttl: float,
                               items: list[tuple[str, bytes]] | None = None) -> None:
        await self.records.put_conversation(conversation_id, record, ttl, items)

    async def get_conversation(self, conversation_id: str) -> bytes | None:
        return await self.records.get_conversation(conversation_id)

    async def delete_conversation(self, conversation_id: str) -> bool:
        return await self.records.delete_conversation(conversation_id)

    async def list_items(self, conversation_id: str, *, after: str | None, limit: int | None,
                         order: Order) -> tuple[list[bytes], bool]:
        return await self.records.list_items(conversation_id, after=after, limit=limit, order=order)

    async def get_item(self, conversation_id: str, item_id: str) -> bytes | None:
        return await self.records.get_item(conversation_id, item_id)

    async def delete_item(self, conversation_id: str, item_id: str) -> bool:
        return await self.records.delete_item(conversation_id, item_id)

    def dump(self) -> AsyncIterator[Dumped]:
        return self.records.dump()

    # ------------------------------------------------------------------ background: logs and cancels in Redis
    async def append_events(self, response_id: str, events: list[tuple[int, bytes]], ttl: float) -> None:
        await self.events.append_events(response_id, events, ttl)

    async def read_events(self, response_id: str, after: int) -> list[tuple[int, bytes]]:
        return await self.events.read_events(response_id, after)

    async def follow_events(self, response_id: str, after: int, timeout: float) -> list[tuple[int, bytes]]:
        return await self.events.follow_events(response_id, after, timeout)

    async def write_run(self, response_id: str, record: bytes, ttl: float, events: Entries,
                        claim: tuple[str, float] | None = None) -> None:
        await self.records.write_run(response_id, record, ttl, [], claim)
        if events:
            await self.events.append_events(response_id, events, ttl)

    async def claim_run(self, response_id: str, instance: str, lease: float) -> None:
        await self.records.claim_run(response_id, instance, lease)

    async def renew_runs(self, response_ids: list[str], instance: str, lease: float) -> None:
        await self.records.renew_runs(response_ids, instance, lease)

    async def release_run(self, response_id: str) -> None:
        await asyncio.gather(self.records.release_run(response_id), self.events.release_run(response_id))

    async def take_lapsed_runs(self) -> list[str]:
        return await self.records.take_lapsed_runs()

    async def run_owner(self, response_id: str) -> str | None:
        return await self.records.run_owner(response_id)

    async def request_cancel(self, response_id: str, ttl: float) -> None:
        await self.events.request_cancel(response_id, ttl)

    async def cancel_requested(self, response_ids: list[str]) -> set[str]:
        return await self.events.cancel_requested(response_ids)
