"""`redis://HOST:PORT/DB[?prefix=P]` — shared by any number of gateway instances (redis-py asyncio).

Keys (all under the prefix, default `gateway:`): `r:{id}` a response record; `c:{id}` a
conversation record with its items in the hash `ci:{id}` (item id → item), their order in the
sorted set `co:{id}` and a counter `cn:{id}`. Background responses: the event log is the stream
`e:{id}` (entry id `seq+1`-0, so XRANGE/XREAD positions are sequence numbers), a run's lease the key
`lease:{id}` (the instance) plus its deadline in the sorted set `runs`, a cancel request the key
`x:{id}`. Every key carries its own expiry (PEXPIRE), so Redis
removes expired state by itself. A response and the conversation items it adds are written in one
MULTI/EXEC transaction; so are a burst of background creates and run starts (`write_run`). A
`previous_response_id` chain is read by one script (`_GET_CHAIN`), which cuts each ancestor's own
list of ids before it leaves Redis; it builds the ancestors' keys itself, so it needs a single node.
"""
from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.driver_info import DriverInfo
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import CHAIN_KEY, DUMP_PAGE, Appends, Batcher, Dumped, Entries, Order, RunWrite, StoreUnavailable, chain_in_two_reads

T = TypeVar("T")

# KEYS: conversation record, items hash, order set, counter. ARGV: ttl ms, then id, item pairs.
# Items keep their first position: an id appended again is ignored.
_APPEND = """
for i = 2, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), ARGV[i])
  end
end
for k = 1, 4 do redis.call('PEXPIRE', KEYS[k], ARGV[1]) end
return 1
"""


# KEYS: the runs sorted set. ARGV: now (ms). The lapsed runs, removed in the same step: one taker each.
_TAKE_LAPSED = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, id in ipairs(ids) do redis.call('ZREM', KEYS[1], id) end
return ids
"""
# KEYS: the response. ARGV: the prefix of response keys, the key that starts a record's trailing chain.
# Returns the record, then (id, record) of each ancestor found, cut before its own trailing chain when
# that sits where expected (see base.chain_suffix_lengths); an empty string first when the record's
# chain is not last. Ancestor keys come from the record, so this script needs a single Redis node.
# An ancestor's chain is never read (GETRANGE up to it): copying every ancestor whole into Lua cost
# Redis about 30 µs per ancestor at 1,000 turns, the D² bytes the cut exists to avoid. Finding the key
# there is proof enough that the chain is last (base.chain_suffix_lengths).
_GET_CHAIN = """
local tip = redis.call('GET', KEYS[1])
if not tip then return {} end
local ids = string.match(tip, ',"chain":%[([^%]]*)%]}$')
if not ids then return {''} end
local out, used, k = {tip}, 0, 0
for id in string.gmatch(ids, '"([^"]*)"') do
  local key = ARGV[1] .. id
  local suffix = #ARGV[2] + used + math.max(k - 1, 0) + 1
  local head = redis.call('GETRANGE', key, 0, #ARGV[2] - suffix - 2)
  if #head > #ARGV[2] and string.sub(head, -#ARGV[2]) == ARGV[2] then
    out[#out + 1] = id
    out[#out + 1] = string.sub(head, 1, -#ARGV[2] - 1) .. '}'
  else
    local record = redis.call('GET', key)
    if record then
      out[#out + 1] = id
      out[#out + 1] = record
    end
  end
  used, k = used + #id + 2, k + 1
end
return out
"""
# KEYS: the event log stream. ARGV: ttl ms, then (entry id, frame) pairs. An entry already there (a
# write retried after a reconnect) is skipped: pcall keeps XADD's "equal or smaller" error to itself.
_XADD_ALL = """
for i = 2, #ARGV, 2 do redis.pcall('XADD', KEYS[1], ARGV[i], 'f', ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
# What a connection tells Redis (CLIENT SETINFO), made once: by default redis-py reads its package
# metadata from disk for every new connection, about 1.5 ms each while a burst grows the pool.
_DRIVER = DriverInfo(name="redis-py", lib_version=redis.__version__)
# XREAD BLOCK holds its connection; it must return before the socket timeout (5 s).
_MAX_BLOCK = 4.0
# Connections per pool. Past it a command waits (up to the socket timeout) for a free connection:
# redis-py's default pool (100) fails at once instead, which hundreds of streams reach.
COMMAND_CONNECTIONS = 128
FOLLOWER_CONNECTIONS = 1024


def split_prefix(url: str) -> tuple[str, str]:
    """The URL redis-py gets, and the key prefix taken out of its `prefix` query parameter."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    prefix = next((v for k, v in query if k == "prefix"), "gateway:")
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


class RedisStore:
    def __init__(self, url: str) -> None:
        self.url = url
        redis_url, self.prefix = split_prefix(url)
        self._redis = _client(redis_url, COMMAND_CONNECTIONS)
        # XREAD BLOCK holds its connection while it waits: followers get a pool of their own.
        self._followers = _client(redis_url, FOLLOWER_CONNECTIONS)
        self._appends: Batcher[tuple[str, Entries]] = Batcher(self._append_batch)
        self._runs: Batcher[RunWrite] = Batcher(self._write_runs)
        self._event_ttl = 0.0

    async def _call(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis store: {exc}") from None

    def _conversation_keys(self, conversation_id: str) -> list[str]:
        p = self.prefix
        return [f"{p}c:{conversation_id}", f"{p}ci:{conversation_id}", f"{p}co:{conversation_id}",
                f"{p}cn:{conversation_id}"]

    async def open(self) -> None:
        await self.ping()

    async def close(self) -> None:
        await self._redis.aclose()
        await self._followers.aclose()

    async def ping(self) -> None:
        await self._call(self._redis.ping())

    async def dump(self) -> AsyncIterator[Dumped]:
        for kind, mark in (("response", "r:"), ("conversation", "c:")):
            cursor: int | None = None
            while cursor != 0:
                cursor, keys = await self._call(self._redis.scan(cursor or 0, match=f"{self.prefix}{mark}*",
                                                                 count=DUMP_PAGE))
                for key in keys:
                    object_id = key.decode()[len(self.prefix) + len(mark):]
                    pipe = self._redis.pipeline(transaction=False)
                    pipe.get(key)
                    pipe.pttl(key)
                    record, ttl_ms = await self._call(pipe.execute())
                    if record is None or ttl_ms <= 0:
                        continue   # expired since the scan
                    items = [] if kind == "response" else await self._items(object_id)
                    yield Dumped(kind, object_id, record, ttl_ms / 1000, items)  # type: ignore[arg-type]

    async def _items(self, conversation_id: str) -> list[tuple[str, bytes]]:
        _, items_key, order_key, _ = self._conversation_keys(conversation_id)
        ids = await self._call(self._redis.zrange(order_key, 0, -1))
        values = await self._call(self._redis.hmget(items_key, ids)) if ids else []
        return [(i.decode(), v) for i, v in zip(ids, values) if v is not None]

    # ------------------------------------------------------------------ responses
    async def put_response(self, response_id: str, record: bytes, ttl: float,
                           conversation: tuple[str, list[tuple[str, bytes]]] | None = None) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(f"{self.prefix}r:{response_id}", record, px=_ms(ttl))
        if conversation is not None:
            self._append(pipe, conversation[0], conversation[1], ttl)
        await self._call(pipe.execute())

    def _append(self, client: Any, conversation_id: str, items: list[tuple[str, bytes]], ttl: float) -> None:
        args: list[Any] = [_ms(ttl)]
        for item_id, item in items:
            args += [item_id, item]
        # EVAL, not EVALSHA: a restarted Redis has no script cache, and the script is short.
        client.eval(_APPEND, 4, *self._conversation_keys(conversation_id), *args)

    async def get_responses(self, response_ids: list[str]) -> dict[str, bytes]:
        if not response_ids:
            return {}
        values = await self._call(self._redis.mget([f"{self.prefix}r:{rid}" for rid in response_ids]))
        return {rid: value for rid, value in zip(response_ids, values) if value is not None}

    async def get_chain(self, response_id: str) -> dict[str, bytes]:
        """One round trip: a script reads the record and its ancestors', each without its trailing
        chain (base.chain_suffix_lengths), so the D² bytes of a D-turn chain stay in Redis."""
        found = await self._call(self._redis.eval(_GET_CHAIN, 1, f"{self.prefix}r:{response_id}",
                                                  f"{self.prefix}r:", CHAIN_KEY))
        if not found:
            return {}
        if found[0] == b"":   # a record whose chain is not its last key (an older layout)
            return await chain_in_two_reads(self, response_id)
        records = {response_id: found[0]}
        records.update((rid.decode(), record) for rid, record in zip(found[1::2], found[2::2]))
        return records

    async def touch_responses(self, response_ids: list[str], ttl: float) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for rid in response_ids:
            pipe.pexpire(f"{self.prefix}r:{rid}", _ms(ttl), gt=True)
        await self._call(pipe.execute())

    async def delete_response(self, response_id: str) -> bool:
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(f"{self.prefix}r:{response_id}")
        pipe.delete(f"{self.prefix}e:{response_id}")
        deleted, _ = await self._call(pipe.execute())
        return deleted > 0

    # ------------------------------------------------------------------ conversations
    async def put_conversation(self, conversation_id: str, record: bytes, ttl: float,
                               items: list[tuple[str, bytes]] | None = None) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(self._conversation_keys(conversation_id)[0], record, px=_ms(ttl))
        self._append(pipe, conversation_id, items or [], ttl)
        await self._call(pipe.execute())

    async def get_conversation(self, conversation_id: str) -> bytes | None:
        return await self._call(self._redis.get(self._conversation_keys(conversation_id)[0]))

    async def delete_conversation(self, conversation_id: str) -> bool:
        keys = self._conversation_keys(conversation_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(keys[0])
        pipe.delete(*keys[1:])
        deleted, _ = await self._call(pipe.execute())
        return deleted > 0

    async def list_items(self, conversation_id: str, *, after: str | None, limit: int | None,
                         order: Order) -> tuple[list[bytes], bool]:
        _, items_key, order_key, _ = self._conversation_keys(conversation_id)
        low, high = "-inf", "+inf"
        if after is not None:
            score = await self._call(self._redis.zscore(order_key, after))
            if score is None:
                return [], False
            if order == "asc":
                low = f"({score}"
            else:
                high = f"({score}"
        window = {"start": 0, "num": limit + 1} if limit is not None else {}
        if order == "asc":
            ids = await self._call(self._redis.zrangebyscore(order_key, low, high, **window))
        else:
            ids = await self._call(self._redis.zrevrangebyscore(order_key, high, low, **window))
        more = limit is not None and len(ids) > limit
        ids = ids[:limit] if more else ids
        values = await self._call(self._redis.hmget(items_key, ids)) if ids else []
        return [v for v in values if v is not None], more

    async def get_item(self, conversation_id: str, item_id: str) -> bytes | None:
        return await self._call(self._redis.hget(self._conversation_keys(conversation_id)[1], item_id))

    async def delete_item(self, conversation_id: str, item_id: str) -> bool:
        _, items_key, order_key, _ = self._conversation_keys(conversation_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(items_key, item_id)
        pipe.zrem(order_key, item_id)
        removed, _ = await self._call(pipe.execute())
        return removed > 0

    # ------------------------------------------------------------------ background responses
    async def append_events(self, response_id: str, events: list[tuple[int, bytes]], ttl: float) -> None:
        self._event_ttl = ttl  # the store's ttl: the same for every response
        await self._appends.add((response_id, events))

    async def _append_batch(self, batch: Appends) -> None:
        # One script call per response (redis-py's cost is per command, not per argument); one
        # MULTI/EXEC for the batch, so a follower wakes to whole batches.
        pipe = self._redis.pipeline(transaction=True)
        for response_id, events in batch:
            self._xadd(pipe, response_id, events, self._event_ttl)
        await self._call(pipe.execute())

    def _xadd(self, client: Any, response_id: str, events: Entries, ttl: float) -> None:
        args: list[Any] = [_ms(ttl)]
        for seq, frame in events:
            args += [f"{seq + 1}-0", frame]
        client.eval(_XADD_ALL, 1, f"{self.prefix}e:{response_id}", *args)

    async def read_events(self, response_id: str, after: int) -> list[tuple[int, bytes]]:
        entries = await self._call(self._redis.xrange(f"{self.prefix}e:{response_id}", min=f"{after + 2}-0"))
        return _events(entries)

    async def follow_events(self, response_id: str, after: int, timeout: float) -> list[tuple[int, bytes]]:
        key = f"{self.prefix}e:{response_id}"
        found = await self._call(self._followers.xread({key: f"{after + 1}-0"},
                                                   block=_ms(min(timeout, _MAX_BLOCK))))
        return _events(found[0][1]) if found else []

    async def write_run(self, response_id: str, record: bytes, ttl: float, events: Entries,
                        claim: tuple[str, float] | None = None) -> None:
        await self._runs.add(RunWrite(response_id, record, ttl, events, claim))

    async def _write_runs(self, batch: list[RunWrite]) -> None:
        # One MULTI/EXEC for a burst of creates and run starts: each one's record, entries and lease together.
        pipe = self._redis.pipeline(transaction=True)
        for run in batch:
            pipe.set(f"{self.prefix}r:{run.response_id}", run.record, px=_ms(run.ttl))
            if run.claim is not None:
                self._lease(pipe, [run.response_id], *run.claim)
            if run.events:
                self._xadd(pipe, run.response_id, run.events, run.ttl)
        await self._call(pipe.execute())

    async def claim_run(self, response_id: str, instance: str, lease: float) -> None:
        await self.renew_runs([response_id], instance, lease)

    async def renew_runs(self, response_ids: list[str], instance: str, lease: float) -> None:
        if not response_ids:
            return
        pipe = self._redis.pipeline(transaction=False)
        self._lease(pipe, response_ids, instance, lease)
        await self._call(pipe.execute())

    def _lease(self, client: Any, response_ids: list[str], instance: str, lease: float) -> None:
        deadline = int((time.time() + lease) * 1000)
        for response_id in response_ids:
            client.set(f"{self.prefix}lease:{response_id}", instance, px=_ms(lease))
        client.zadd(f"{self.prefix}runs", {response_id: deadline for response_id in response_ids})

    async def release_run(self, response_id: str) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(f"{self.prefix}lease:{response_id}", f"{self.prefix}x:{response_id}")
        pipe.zrem(f"{self.prefix}runs", response_id)
        await self._call(pipe.execute())

    async def take_lapsed_runs(self) -> list[str]:
        ids = await self._call(self._redis.eval(_TAKE_LAPSED, 1, f"{self.prefix}runs", int(time.time() * 1000)))
        return [rid.decode() for rid in ids]

    async def run_owner(self, response_id: str) -> str | None:
        owner = await self._call(self._redis.get(f"{self.prefix}lease:{response_id}"))
        return owner.decode() if owner is not None else None

    async def request_cancel(self, response_id: str, ttl: float) -> None:
        await self._call(self._redis.set(f"{self.prefix}x:{response_id}", 1, px=_ms(ttl)))

    async def cancel_requested(self, response_ids: list[str]) -> set[str]:
        if not response_ids:
            return set()
        flags = await self._call(self._redis.mget([f"{self.prefix}x:{rid}" for rid in response_ids]))
        return {rid for rid, flag in zip(response_ids, flags) if flag is not None}


def _client(url: str, connections: int) -> aioredis.Redis:
    # A pooled connection that died with a Redis restart is retried on a fresh one. Every write is
    # idempotent (SET, the append script skips ids already present, XADD of a logged id is ignored),
    # so a retry is safe.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=connections, timeout=5, socket_connect_timeout=2, socket_timeout=5,
        health_check_interval=30, retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError], driver_info=_DRIVER)
    return aioredis.Redis(connection_pool=pool)


def _events(entries: list[Any]) -> list[tuple[int, bytes]]:
    return [(int(entry_id.split(b"-")[0]) - 1, fields[b"f"]) for entry_id, fields in entries]


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


