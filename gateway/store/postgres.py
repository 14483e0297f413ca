"""`postgresql://USER@HOST:PORT/DB[?schema=S]` — the shared store on PostgreSQL (asyncpg).

Tables (in schema S, default `public`; see MIGRATIONS): `responses`, `conversations` and
`conversation_items` (items in insertion order by a sequence), and for background responses
`response_events` (the event log), `runs` (leases) and `cancels`. Every write is one statement —
data-modifying CTEs, arrays passed with `unnest` — so it is atomic without BEGIN/COMMIT round trips.

- Expiry: rows carry `expires_at`, every read filters on it, and a sweeper deletes expired rows in
  batches of SWEEP_BATCH under `FOR UPDATE SKIP LOCKED`: it never waits on a row a request holds and
  never holds many locks at once.
- Followers of an event log: a write that adds events sends `NOTIFY` (on commit) with the response
  id; one LISTEN connection per instance wakes the local waiters, so a follower on another instance
  wakes at once. A poll every FOLLOW_POLL seconds covers a lost listener connection.
- Leases: `take_lapsed_runs` deletes lapsed rows selected `FOR UPDATE SKIP LOCKED`: each lapsed run
  goes to exactly one taker even when every instance asks at once.
- Migrations are versioned; `open` applies the missing ones in one transaction holding an advisory
  transaction lock, so instances starting together apply each exactly once (`gateway migrate` too).
"""
from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from .base import CHAIN_KEY, DUMP_PAGE, Appends, Batcher, Dumped, Entries, Notifier, Order, RunWrite, StoreUnavailable

T = TypeVar("T")

# (version, statements). Append new versions; never edit an applied one.
MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE responses (id text PRIMARY KEY, record bytea NOT NULL, expires_at timestamptz NOT NULL);
CREATE INDEX responses_by_expiry ON responses (expires_at);
CREATE TABLE conversations (id text PRIMARY KEY, record bytea NOT NULL, expires_at timestamptz NOT NULL);
CREATE INDEX conversations_by_expiry ON conversations (expires_at);
CREATE TABLE conversation_items (
    seq bigserial PRIMARY KEY, conversation_id text NOT NULL, id text NOT NULL, record bytea NOT NULL,
    UNIQUE (conversation_id, id));
CREATE INDEX items_by_conversation ON conversation_items (conversation_id, seq);
CREATE TABLE response_events (
    response_id text NOT NULL, seq integer NOT NULL, frame bytea NOT NULL, PRIMARY KEY (response_id, seq));
CREATE TABLE runs (id text PRIMARY KEY, instance text NOT NULL, deadline timestamptz NOT NULL);
CREATE INDEX runs_by_deadline ON runs (deadline);
CREATE TABLE cancels (id text PRIMARY KEY, expires_at timestamptz NOT NULL);
"""),
]
POOL_MIN, POOL_MAX = 1, 32       # connections per instance (plus one for LISTEN)
ACQUIRE_TIMEOUT = 5.0            # waiting for a free pooled connection
COMMAND_TIMEOUT = 10.0           # one statement
CONNECT_TIMEOUT = 3.0
SWEEP_INTERVAL = 60.0
SWEEP_BATCH = 1000
FOLLOW_POLL = 0.5
LISTEN_CHECK = 1.0

_INTERVAL = "make_interval(secs => {})"
# What a connection killed under a statement raises (a server restart, an idle connection cut).
_LOST_CONNECTION = (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError, asyncpg.AdminShutdownError,
                    asyncpg.CannotConnectNowError, ConnectionResetError)


def split_schema(url: str) -> tuple[str, str]:
    """The DSN asyncpg gets, and the schema taken out of the URL's `schema` query parameter."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    schema = next((v for k, v in query if k == "schema"), "public")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(scheme="postgresql", query=rest)), schema


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class PostgresStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._dsn, self.schema = split_schema(url)
        self._channel = f"gateway_events:{self.schema}"   # NOTIFY is database-wide: one channel per schema
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._connecting = asyncio.Lock()
        self._sweeper: asyncio.Task[None] | None = None
        self._notifier = Notifier()
        self._appends: Batcher[tuple[str, Entries]] = Batcher(self._append_batch)
        self._runs: Batcher[RunWrite] = Batcher(self._write_runs)

    # ------------------------------------------------------------------ connections
    async def _ready(self) -> asyncpg.Pool:
        """The pool, created (with migrations applied) on first use and again after a failed start."""
        if self._pool is not None:
            return self._pool
        async with self._connecting:
            if self._pool is None:
                await migrate(self._dsn, self.schema)
                self._pool = await asyncpg.create_pool(
                    self._dsn, min_size=POOL_MIN, max_size=POOL_MAX, timeout=CONNECT_TIMEOUT,
                    command_timeout=COMMAND_TIMEOUT, max_inactive_connection_lifetime=300,
                    server_settings={"search_path": self.schema, "application_name": "gateway"}, reset=_keep)
        return self._pool

    async def _call(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        try:
            try:
                return await self._once(work)
            except _LOST_CONNECTION:
                # A pooled connection that died with a PostgreSQL restart fails once, and the pool opens a
                # new one: try again. Every write is idempotent (upserts, appends that skip ids present).
                return await self._once(work)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"PostgreSQL store: {type(exc).__name__}: {exc}") from None

    async def _once(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        pool = await self._ready()
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            return await work(conn)

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self._call(lambda conn: conn.fetch(sql, *args))

    async def _value(self, sql: str, *args: Any) -> Any:
        return await self._call(lambda conn: conn.fetchval(sql, *args))

    async def open(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        await self.ping()
        await self._listen()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._listener is not None:
            listener, self._listener = self._listener, None
            with contextlib.suppress(Exception):
                await listener.close(timeout=2)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 5)

    async def ping(self) -> None:
        await self._value("SELECT 1")

    async def _listen(self) -> None:
        """(Re)open the LISTEN connection; failures are left to the followers' poll."""
        if self._listener is not None and not self._listener.is_closed():
            return
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            conn = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT,
                                         server_settings={"application_name": "gateway-listen"})
            try:
                await conn.add_listener(self._channel, self._on_notify)
            except BaseException:
                conn.terminate()
                raise
            self._listener = conn

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._notifier.notify(payload)

    async def _sweep_forever(self) -> None:
        """Keep the LISTEN connection open (checked every LISTEN_CHECK seconds, so followers are woken again
        soon after a PostgreSQL restart) and sweep every SWEEP_INTERVAL."""
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + SWEEP_INTERVAL
        while True:
            await asyncio.sleep(LISTEN_CHECK)
            await self._listen()
            if loop.time() >= next_sweep:
                next_sweep = loop.time() + SWEEP_INTERVAL
                with contextlib.suppress(StoreUnavailable):
                    await self.sweep()

    async def sweep(self) -> int:
        """Delete expired rows, SWEEP_BATCH at a time, each batch its own short statement."""
        total = 0
        for sql in (_SWEEP_RESPONSES, _SWEEP_CONVERSATIONS, _SWEEP_CANCELS):
            while (done := await self._value(sql, SWEEP_BATCH)) > 0:
                total += done
                if done < SWEEP_BATCH:
                    break
        return total

    async def dump(self) -> AsyncIterator[Dumped]:
        for kind, table in (("response", "responses"), ("conversation", "conversations")):
            after = ""
            while rows := await self._fetch(
                    f"SELECT id, record, extract(epoch FROM expires_at - now())::float8 FROM {table} "
                    "WHERE id > $1 AND expires_at > now() ORDER BY id LIMIT $2", after, DUMP_PAGE):
                for object_id, record, ttl in rows:
                    items = [] if kind == "response" else [(r[0], r[1]) for r in await self._fetch(
                        "SELECT id, record FROM conversation_items WHERE conversation_id = $1 ORDER BY seq", object_id)]
                    yield Dumped(kind, object_id, record, ttl, items)  # type: ignore[arg-type]
                after = rows[-1][0]

    # ------------------------------------------------------------------ responses
    async def put_response(self, response_id: str, record: bytes, ttl: float,
                           conversation: tuple[str, list[tuple[str, bytes]]] | None = None) -> None:
        if conversation is None:
            await self._fetch(_PUT_RESPONSE, response_id, record, ttl)
            return
        conversation_id, items = conversation
        await self._fetch(_PUT_RESPONSE_WITH_ITEMS, response_id, record, ttl, conversation_id,
                          [i for i, _ in items], [r for _, r in items])

    async def get_responses(self, response_ids: list[str]) -> dict[str, bytes]:
        if not response_ids:
            return {}
        rows = await self._fetch("SELECT id, record FROM responses WHERE id = ANY($1::text[]) "
                                 "AND expires_at > now()", response_ids)
        return {row[0]: row[1] for row in rows}

    async def get_chain(self, response_id: str) -> dict[str, bytes]:
        rows = await self._fetch(_GET_CHAIN, response_id, CHAIN_KEY)
        return {rid: record + b"}" if cut else record for rid, record, cut in rows}

    async def touch_responses(self, response_ids: list[str], ttl: float) -> None:
        if response_ids:
            await self._fetch(f"UPDATE responses SET expires_at = greatest(expires_at, now() + {_INTERVAL.format('$2')}) "
                              "WHERE id = ANY($1::text[])", response_ids, ttl)

    async def delete_response(self, response_id: str) -> bool:
        return bool(await self._value(
            "WITH e AS (DELETE FROM response_events WHERE response_id = $1), "
            "r AS (DELETE FROM responses WHERE id = $1 RETURNING 1) SELECT count(*) FROM r", response_id))

    # ------------------------------------------------------------------ conversations
    async def put_conversation(self, conversation_id: str, record: bytes, ttl: float,
                               items: list[tuple[str, bytes]] | None = None) -> None:
        items = items or []
        await self._fetch(_PUT_CONVERSATION, conversation_id, record, ttl, conversation_id,
                          [i for i, _ in items], [r for _, r in items])

    async def get_conversation(self, conversation_id: str) -> bytes | None:
        return await self._value("SELECT record FROM conversations WHERE id = $1 AND expires_at > now()",
                                 conversation_id)

    async def delete_conversation(self, conversation_id: str) -> bool:
        return bool(await self._value(
            "WITH i AS (DELETE FROM conversation_items WHERE conversation_id = $1), "
            "c AS (DELETE FROM conversations WHERE id = $1 RETURNING 1) SELECT count(*) FROM c", conversation_id))

    async def list_items(self, conversation_id: str, *, after: str | None, limit: int | None,
                         order: Order) -> tuple[list[bytes], bool]:
        # One statement: the conversation must be live, and an unknown `after` gives no rows (NULL compare).
        sql = ("SELECT i.record FROM conversation_items i WHERE i.conversation_id = $1 AND EXISTS "
               "(SELECT 1 FROM conversations c WHERE c.id = $1 AND c.expires_at > now())")
        args: list[Any] = [conversation_id]
        if after is not None:
            args.append(after)
            sql += (f" AND i.seq {'>' if order == 'asc' else '<'} (SELECT seq FROM conversation_items "
                    "WHERE conversation_id = $1 AND id = $2)")
        sql += " ORDER BY i.seq " + ("ASC" if order == "asc" else "DESC")
        if limit is not None:
            args.append(limit + 1)
            sql += f" LIMIT ${len(args)}"
        rows = [row[0] for row in await self._fetch(sql, *args)]
        if limit is not None and len(rows) > limit:
            return rows[:limit], True
        return rows, False

    async def get_item(self, conversation_id: str, item_id: str) -> bytes | None:
        return await self._value(
            "SELECT i.record FROM conversation_items i JOIN conversations c ON c.id = i.conversation_id "
            "WHERE i.conversation_id = $1 AND i.id = $2 AND c.expires_at > now()", conversation_id, item_id)

    async def delete_item(self, conversation_id: str, item_id: str) -> bool:
        return bool(await self._fetch("DELETE FROM conversation_items WHERE conversation_id = $1 AND id = $2 "
                                      "RETURNING 1", conversation_id, item_id))

    # ------------------------------------------------------------------ background responses
    async def append_events(self, response_id: str, events: list[tuple[int, bytes]], ttl: float) -> None:
        await self._appends.add((response_id, events))

    async def _append_batch(self, batch: Appends) -> None:
        entries = _unique_entries((response_id, events) for response_id, events in batch)
        await self._fetch(_APPEND_EVENTS, *entries, self._channel)

    async def read_events(self, response_id: str, after: int) -> list[tuple[int, bytes]]:
        rows = await self._fetch("SELECT seq, frame FROM response_events WHERE response_id = $1 AND seq > $2 "
                                 "ORDER BY seq", response_id, after)
        return [(row[0], row[1]) for row in rows]

    async def follow_events(self, response_id: str, after: int, timeout: float) -> list[tuple[int, bytes]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            woken = self._notifier.arm(response_id)   # armed before the read: a NOTIFY during it is kept
            found = await self.read_events(response_id, after)
            left = deadline - loop.time()
            if found or left <= 0:
                return found
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(left, FOLLOW_POLL))

    async def write_run(self, response_id: str, record: bytes, ttl: float, events: Entries,
                        claim: tuple[str, float] | None = None) -> None:
        await self._runs.add(RunWrite(response_id, record, ttl, events, claim))

    async def _write_runs(self, batch: list[RunWrite]) -> None:
        """One statement for a burst of creates and run starts: records, leases, log entries, NOTIFY."""
        records = {run.response_id: (run.record, run.ttl) for run in batch}   # the last write of an id wins
        claims = {run.response_id: run.claim for run in batch if run.claim is not None}
        await self._fetch(_WRITE_RUNS, list(records), [r for r, _ in records.values()],
                          [t for _, t in records.values()], list(claims), [c[0] for c in claims.values()],
                          [c[1] for c in claims.values()],
                          *_unique_entries((run.response_id, run.events) for run in batch), self._channel)

    async def claim_run(self, response_id: str, instance: str, lease: float) -> None:
        await self._fetch(f"INSERT INTO runs (id, instance, deadline) VALUES ($1, $2, now() + {_INTERVAL.format('$3')}) "
                          "ON CONFLICT (id) DO UPDATE SET instance = excluded.instance, deadline = excluded.deadline",
                          response_id, instance, lease)

    async def renew_runs(self, response_ids: list[str], instance: str, lease: float) -> None:
        if response_ids:
            await self._fetch(f"UPDATE runs SET deadline = now() + {_INTERVAL.format('$3')} "
                              "WHERE id = ANY($1::text[]) AND instance = $2", response_ids, instance, lease)

    async def release_run(self, response_id: str) -> None:
        await self._fetch("WITH r AS (DELETE FROM runs WHERE id = $1) DELETE FROM cancels WHERE id = $1", response_id)

    async def take_lapsed_runs(self) -> list[str]:
        rows = await self._fetch("DELETE FROM runs WHERE id IN (SELECT id FROM runs WHERE deadline <= now() "
                                 "FOR UPDATE SKIP LOCKED) RETURNING id")
        return [row[0] for row in rows]

    async def run_owner(self, response_id: str) -> str | None:
        return await self._value("SELECT instance FROM runs WHERE id = $1 AND deadline > now()", response_id)

    async def request_cancel(self, response_id: str, ttl: float) -> None:
        await self._fetch(f"INSERT INTO cancels (id, expires_at) VALUES ($1, now() + {_INTERVAL.format('$2')}) "
                          "ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at", response_id, ttl)

    async def cancel_requested(self, response_ids: list[str]) -> set[str]:
        if not response_ids:
            return set()
        rows = await self._fetch("SELECT id FROM cancels WHERE id = ANY($1::text[]) AND expires_at > now()",
                                 response_ids)
        return {row[0] for row in rows}


async def _keep(_conn: asyncpg.Connection) -> None:
    """A released connection is reused as it is: pooled connections keep no session state (no LISTEN, no
    session locks, no SET), and asyncpg's default reset would cost a round trip per store call."""


def _unique_entries(runs: Any) -> tuple[list[str], list[int], list[bytes]]:
    """Log entries as three parallel arrays for `unnest`, an entry written twice in a batch once."""
    entries: dict[tuple[str, int], bytes] = {}
    for response_id, events in runs:
        for seq, frame in events:
            entries[(response_id, seq)] = frame
    return [k[0] for k in entries], [k[1] for k in entries], list(entries.values())


async def migrate(dsn: str, schema: str) -> list[int]:
    """Apply the missing MIGRATIONS in one transaction under an advisory lock; the versions applied."""
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT, command_timeout=60)
    try:
        async with conn.transaction():
            # The lock is keyed by the schema, held to the commit: concurrent starts wait here, then see
            # the versions the first one applied.
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", 0x6777, zlib.crc32(schema.encode()) - 2**31)
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(schema)}")
            await conn.execute(f"SET LOCAL search_path TO {_quote(schema)}")
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                               "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            done = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
            applied = []
            for version, statements in MIGRATIONS:
                if version not in done:
                    await conn.execute(statements)
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                    applied.append(version)
            return applied
    finally:
        await conn.close()


async def migrate_url(url: str) -> list[int]:
    """`gateway migrate`: the migrations for a `postgresql://` store URL (raises StoreUnavailable)."""
    dsn, schema = split_schema(url)
    try:
        return await migrate(dsn, schema)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise StoreUnavailable(f"PostgreSQL store: {type(exc).__name__}: {exc}") from None


_TTL = _INTERVAL.format("$3")
_PUT_RESPONSE = (f"INSERT INTO responses (id, record, expires_at) VALUES ($1, $2, now() + {_TTL}) "
                 "ON CONFLICT (id) DO UPDATE SET record = excluded.record, expires_at = excluded.expires_at")
# Items keep their first position: an id appended again is ignored. The conversation's expiry moves on.
_APPEND_ITEMS = ("items AS (INSERT INTO conversation_items (conversation_id, id, record) "
                 "SELECT $4, i.id, i.record FROM unnest($5::text[], $6::bytea[]) WITH ORDINALITY AS i(id, record, n) "
                 "ORDER BY i.n ON CONFLICT (conversation_id, id) DO NOTHING)")
_PUT_RESPONSE_WITH_ITEMS = (f"WITH r AS ({_PUT_RESPONSE}), {_APPEND_ITEMS} "
                            f"UPDATE conversations SET expires_at = now() + {_TTL} WHERE id = $4")
# Arguments as for a response with items: $1 the conversation id again as $4, so one items CTE serves both.
_PUT_CONVERSATION = (
    f"WITH c AS (INSERT INTO conversations (id, record, expires_at) VALUES ($1, $2, now() + {_TTL}) "
    f"ON CONFLICT (id) DO UPDATE SET record = excluded.record, expires_at = excluded.expires_at), {_APPEND_ITEMS} "
    "SELECT 1")
_INSERT_EVENTS = ("INSERT INTO response_events (response_id, seq, frame) "
                  "SELECT * FROM unnest({0}::text[], {1}::int[], {2}::bytea[]) "
                  "ON CONFLICT (response_id, seq) DO UPDATE SET frame = excluded.frame")
_APPEND_EVENTS = (f"WITH e AS ({_INSERT_EVENTS.format('$1', '$2', '$3')}) "
                  "SELECT count(pg_notify($4, id)) FROM (SELECT DISTINCT unnest($1::text[]) AS id) ids")
_WRITE_RUNS = (
    "WITH r AS (INSERT INTO responses (id, record, expires_at) "
    "SELECT i, rec, now() + make_interval(secs => t) FROM unnest($1::text[], $2::bytea[], $3::float8[]) AS x(i, rec, t) "
    "ON CONFLICT (id) DO UPDATE SET record = excluded.record, expires_at = excluded.expires_at), "
    "l AS (INSERT INTO runs (id, instance, deadline) "
    "SELECT i, inst, now() + make_interval(secs => s) FROM unnest($4::text[], $5::text[], $6::float8[]) AS y(i, inst, s) "
    "ON CONFLICT (id) DO UPDATE SET instance = excluded.instance, deadline = excluded.deadline), "
    f"e AS ({_INSERT_EVENTS.format('$7', '$8', '$9')}) "
    "SELECT count(pg_notify($10, id)) FROM (SELECT DISTINCT unnest($7::text[]) AS id) ids")
# A whole chain in one round trip: the response, and the ancestors its record lists (JSON `chain`), each cut
# before its own trailing `,"chain":[…]` ($2) when that sits where expected (base.chain_suffix_lengths: the
# key, the quoted ids before it with their commas, "]"), without the closing brace the caller adds back.
# The record's end is not checked: a compressed record's end costs decompressing it whole (about 20 µs per
# ancestor at 1,000 turns), and the key found there already proves the chain is last.
_GET_CHAIN = (
    "WITH p AS (SELECT id, record FROM responses WHERE id = $1 AND expires_at > now()), "
    "c AS (SELECT c.id, (octet_length($2::bytea) + coalesce(sum(octet_length(c.id) + 2) OVER w, 0) + greatest(c.k - 2, 0) + 1)"
    "::int AS suffix FROM p CROSS JOIN LATERAL jsonb_array_elements_text(convert_from(p.record, 'UTF8')::jsonb -> 'chain') "
    "WITH ORDINALITY AS c(id, k) WINDOW w AS (ORDER BY c.k ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)), "
    "a AS (SELECT r.id, r.record, octet_length(r.record) - c.suffix AS start FROM c "
    "JOIN responses r ON r.id = c.id AND r.expires_at > now()), "
    "t AS (SELECT id, record, start, start > 1 AND substring(record FROM start FOR octet_length($2::bytea)) = $2::bytea "
    "AS cut FROM a) "
    "SELECT id, record, false FROM p UNION ALL "
    "SELECT id, CASE WHEN cut THEN substring(record FROM 1 FOR start - 1) ELSE record END, cut FROM t")
_SWEEP_RESPONSES = (
    "WITH gone AS (DELETE FROM responses WHERE id IN (SELECT id FROM responses WHERE expires_at <= now() "
    "LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id), "
    "e AS (DELETE FROM response_events WHERE response_id IN (SELECT id FROM gone)) SELECT count(*) FROM gone")
_SWEEP_CONVERSATIONS = (
    "WITH gone AS (DELETE FROM conversations WHERE id IN (SELECT id FROM conversations WHERE expires_at <= now() "
    "LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id), "
    "i AS (DELETE FROM conversation_items WHERE conversation_id IN (SELECT id FROM gone)) SELECT count(*) FROM gone")
_SWEEP_CANCELS = ("WITH gone AS (DELETE FROM cancels WHERE id IN (SELECT id FROM cancels WHERE expires_at <= now() "
                  "LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING 1) SELECT count(*) FROM gone")
