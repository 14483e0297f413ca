"""`sqlite:PATH` — the embedded default: one file in WAL mode, written from one dedicated thread.

Every operation is one function run on that thread (`run_in_executor` with a single worker), so a
multi-statement transaction is never interleaved with another coroutine's statements and the
event loop never waits on the disk. `synchronous=NORMAL` (WAL): a committed response survives a
crash or restart of the gateway; a power loss may lose the last transactions. Expired rows are
filtered on every read and deleted by a sweep every `SWEEP_INTERVAL` seconds.

A response record's trailing `,"chain":[…]` (its ancestors' ids, gateway/store/service.py) is kept in
the column `chain`, last in the row, and `record` holds the rest with its closing brace: an ancestor of
a chain is its `record` as stored, and SQLite does not even load the `chain` bytes. Records of another
layout keep `chain` NULL. `responses` is a rowid table with `expires_at` before the record, so the
record of a row of a few kB sits in its leaf page (a WITHOUT ROWID table spills anything over about
1 kB onto overflow pages, which made reading a chain's 1,000 ancestors twice as slow).

The schema's version is the file's `user_version` (SCHEMA_VERSION); opening a file of an earlier version
migrates it in one transaction (`gateway migrate` does just that). 1: `responses` rebuilt as above.
"""
from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .base import (CHAIN_KEY, DUMP_PAGE, Appends, Batcher, Dumped, Entries, Notifier, Order, RunWrite, StoreUnavailable,
                   chain_of, trailing_chain)

SWEEP_INTERVAL = 300.0
PAGE_CACHE_KIB = 32 * 1024   # at most, grown as pages are read
T = TypeVar("T")

SCHEMA_VERSION = 1   # PRAGMA user_version of a file this code created or migrated
_RESPONSES = ("CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, expires_at REAL NOT NULL, "
              "record BLOB NOT NULL, chain BLOB)")
_SCHEMA = (
    _RESPONSES,
    "CREATE INDEX IF NOT EXISTS responses_by_expiry ON responses (expires_at)",
    "CREATE TABLE IF NOT EXISTS conversations (id TEXT PRIMARY KEY, record BLOB NOT NULL, "
    "expires_at REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS conversations_by_expiry ON conversations (expires_at)",
    "CREATE TABLE IF NOT EXISTS conversation_items (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
    "conversation_id TEXT NOT NULL, id TEXT NOT NULL, record BLOB NOT NULL, UNIQUE (conversation_id, id))",
    "CREATE INDEX IF NOT EXISTS items_by_conversation ON conversation_items (conversation_id, seq)",
    "CREATE TABLE IF NOT EXISTS response_events (response_id TEXT NOT NULL, seq INTEGER NOT NULL, "
    "frame BLOB NOT NULL, PRIMARY KEY (response_id, seq)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, instance TEXT NOT NULL, deadline REAL NOT NULL) "
    "WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS cancels (id TEXT PRIMARY KEY, expires_at REAL NOT NULL) WITHOUT ROWID",
)
# Followers poll this often for events written by another process on the same file; a write by
# this process wakes them at once (Notifier).
FOLLOW_POLL = 0.5


class SQLiteStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.path = url.removeprefix("sqlite:").removeprefix("//")
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._sweeper: asyncio.Task[None] | None = None
        self._notifier = Notifier()
        self._appends: Batcher[tuple[str, Entries]] = Batcher(self._append_batch)
        self._runs: Batcher[RunWrite] = Batcher(self._write_runs)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, self._connected, fn, args)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from None

    def _connected(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """On the store's thread: (re)connect if an earlier attempt failed, then run `fn`."""
        if self._db is None:
            self._connect()
        return fn(*args)

    def _connect(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        # Pages kept in memory (the default is 2 MB): a long chain's records are read back on every turn, and
        # reading each again from the file cost more than the rest of a continuation.
        db.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
        try:
            migrate(db)
        except BaseException:
            db.close()
            raise
        self._db = db

    async def open(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        await self._run(self._sweep)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._thread, db.close)
        self._thread.shutdown(wait=True)

    async def ping(self) -> None:
        await self._run(self._query, "SELECT 1", ())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            with contextlib.suppress(StoreUnavailable):
                await self.sweep()

    async def sweep(self) -> None:
        await self._run(self._sweep)

    def _sweep(self) -> None:
        now = time.time()
        with self._transaction() as db:
            db.execute("DELETE FROM responses WHERE expires_at <= ?", (now,))
            db.execute("DELETE FROM response_events WHERE response_id NOT IN (SELECT id FROM responses)")
            db.execute("DELETE FROM cancels WHERE expires_at <= ?", (now,))
            db.execute("DELETE FROM conversation_items WHERE conversation_id IN "
                       "(SELECT id FROM conversations WHERE expires_at <= ?)", (now,))
            db.execute("DELETE FROM conversations WHERE expires_at <= ?", (now,))

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        assert self._db is not None
        return _transaction(self._db)

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        assert self._db is not None
        return self._db.execute(sql, args).fetchall()

    def _change(self, sql: str, args: tuple[Any, ...]) -> int:
        assert self._db is not None
        return self._db.execute(sql, args).rowcount

    async def dump(self) -> AsyncIterator[Dumped]:
        for kind, table in (("response", "responses"), ("conversation", "conversations")):
            after = ""
            tail = "chain" if table == "responses" else "NULL"
            while rows := await self._run(self._query, f"SELECT id, record, expires_at - ?, {tail} FROM {table} "
                                          "WHERE id > ? AND expires_at > ? ORDER BY id LIMIT ?",
                                          (time.time(), after, time.time(), DUMP_PAGE)):
                for object_id, head, ttl, chain in rows:
                    record = _joined(head, chain)
                    items = [] if kind == "response" else [(i, bytes(r)) for i, r in await self._run(
                        self._query, "SELECT id, record FROM conversation_items WHERE conversation_id = ? "
                        "ORDER BY seq", (object_id,))]
                    yield Dumped(kind, object_id, record, ttl, items)  # type: ignore[arg-type]
                after = rows[-1][0]

    # ------------------------------------------------------------------ responses
    async def put_response(self, response_id: str, record: bytes, ttl: float,
                           conversation: tuple[str, list[tuple[str, bytes]]] | None = None) -> None:
        await self._run(self._put_response, response_id, record, ttl, conversation)

    def _put_response(self, response_id: str, record: bytes, ttl: float,
                      conversation: tuple[str, list[tuple[str, bytes]]] | None) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO responses (id, record, chain, expires_at) VALUES (?, ?, ?, ?)",
                       (response_id, *_split(record), time.time() + ttl))
            if conversation is not None:
                self._append(db, *conversation, ttl)

    async def get_responses(self, response_ids: list[str]) -> dict[str, bytes]:
        if not response_ids:
            return {}
        marks = ",".join("?" * len(response_ids))
        rows = await self._run(self._query, f"SELECT id, record, chain FROM responses WHERE id IN ({marks}) "
                               "AND expires_at > ?", (*response_ids, time.time()))
        return {rid: _joined(head, chain) for rid, head, chain in rows}

    async def get_chain(self, response_id: str) -> dict[str, bytes]:
        return await self._run(self._get_chain, response_id, time.time())

    def _get_chain(self, response_id: str, now: float) -> dict[str, bytes]:
        """On the store's thread, so one hop: the record, then its ancestors' without their chains, which
        SQLite does not even read (the `chain` column comes after the others in each row)."""
        rows = self._query("SELECT record, chain FROM responses WHERE id = ? AND expires_at > ?", (response_id, now))
        if not rows:
            return {}
        found = {response_id: _joined(*rows[0])}
        chain = chain_of(found[response_id])
        if chain:
            marks = ",".join("?" * len(chain))
            found.update(self._query(f"SELECT id, record FROM responses WHERE id IN ({marks}) AND expires_at > ?",
                                     (*chain, now)))
        return found

    async def touch_responses(self, response_ids: list[str], ttl: float) -> None:
        if response_ids:
            marks = ",".join("?" * len(response_ids))
            await self._run(self._change, f"UPDATE responses SET expires_at = max(expires_at, ?) "
                            f"WHERE id IN ({marks})", (time.time() + ttl, *response_ids))

    async def delete_response(self, response_id: str) -> bool:
        return await self._run(self._delete_response, response_id)

    def _delete_response(self, response_id: str) -> bool:
        with self._transaction() as db:
            db.execute("DELETE FROM response_events WHERE response_id = ?", (response_id,))
            return db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0

    # ------------------------------------------------------------------ conversations
    async def put_conversation(self, conversation_id: str, record: bytes, ttl: float,
                               items: list[tuple[str, bytes]] | None = None) -> None:
        await self._run(self._put_conversation, conversation_id, record, ttl, items or [])

    def _put_conversation(self, conversation_id: str, record: bytes, ttl: float,
                          items: list[tuple[str, bytes]]) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO conversations (id, record, expires_at) VALUES (?, ?, ?)",
                       (conversation_id, record, time.time() + ttl))
            self._append(db, conversation_id, items, ttl)

    @staticmethod
    def _append(db: sqlite3.Connection, conversation_id: str, items: list[tuple[str, bytes]], ttl: float) -> None:
        """Items keep their first position: an id appended again is ignored."""
        db.executemany("INSERT OR IGNORE INTO conversation_items (conversation_id, id, record) VALUES (?, ?, ?)",
                       [(conversation_id, item_id, item) for item_id, item in items])
        db.execute("UPDATE conversations SET expires_at = ? WHERE id = ?", (time.time() + ttl, conversation_id))

    async def get_conversation(self, conversation_id: str) -> bytes | None:
        rows = await self._run(self._query, "SELECT record FROM conversations WHERE id = ? AND expires_at > ?",
                               (conversation_id, time.time()))
        return bytes(rows[0][0]) if rows else None

    async def delete_conversation(self, conversation_id: str) -> bool:
        return await self._run(self._delete_conversation, conversation_id)

    def _delete_conversation(self, conversation_id: str) -> bool:
        with self._transaction() as db:
            db.execute("DELETE FROM conversation_items WHERE conversation_id = ?", (conversation_id,))
            return db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,)).rowcount > 0

    async def list_items(self, conversation_id: str, *, after: str | None, limit: int | None,
                         order: Order) -> tuple[list[bytes], bool]:
        return await self._run(self._list_items, conversation_id, after, limit, order)

    def _list_items(self, conversation_id: str, after: str | None, limit: int | None,
                    order: Order) -> tuple[list[bytes], bool]:
        if not self._query("SELECT 1 FROM conversations WHERE id = ? AND expires_at > ?", (conversation_id, time.time())):
            return [], False
        sql = "SELECT record FROM conversation_items WHERE conversation_id = ?"
        args: list[Any] = [conversation_id]
        if after is not None:
            cursor = self._query("SELECT seq FROM conversation_items WHERE conversation_id = ? AND id = ?",
                                 (conversation_id, after))
            if not cursor:
                return [], False
            sql += " AND seq > ?" if order == "asc" else " AND seq < ?"
            args.append(cursor[0][0])
        sql += " ORDER BY seq " + ("ASC" if order == "asc" else "DESC")
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit + 1)
        rows = [bytes(r[0]) for r in self._query(sql, tuple(args))]
        if limit is not None and len(rows) > limit:
            return rows[:limit], True
        return rows, False

    async def get_item(self, conversation_id: str, item_id: str) -> bytes | None:
        rows = await self._run(self._query, "SELECT i.record FROM conversation_items i JOIN conversations c ON "
                               "c.id = i.conversation_id WHERE i.conversation_id = ? AND i.id = ? AND c.expires_at > ?",
                               (conversation_id, item_id, time.time()))
        return bytes(rows[0][0]) if rows else None

    async def delete_item(self, conversation_id: str, item_id: str) -> bool:
        return await self._run(self._change, "DELETE FROM conversation_items WHERE conversation_id = ? AND id = ?",
                               (conversation_id, item_id)) > 0

    # ------------------------------------------------------------------ background responses
    async def append_events(self, response_id: str, events: list[tuple[int, bytes]], ttl: float) -> None:
        await self._appends.add((response_id, events))

    async def _append_batch(self, batch: Appends) -> None:
        await self._run(self._append_events, batch)
        for response_id, _ in batch:
            self._notifier.notify(response_id)

    def _append_events(self, batch: Appends) -> None:
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO response_events (response_id, seq, frame) VALUES (?, ?, ?)",
                           [(response_id, seq, frame) for response_id, events in batch for seq, frame in events])

    async def read_events(self, response_id: str, after: int) -> list[tuple[int, bytes]]:
        rows = await self._run(self._query, "SELECT seq, frame FROM response_events WHERE response_id = ? AND "
                               "seq > ? ORDER BY seq", (response_id, after))
        return [(seq, bytes(frame)) for seq, frame in rows]

    async def follow_events(self, response_id: str, after: int, timeout: float) -> list[tuple[int, bytes]]:
        deadline = time.monotonic() + timeout
        while not (found := await self.read_events(response_id, after)):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await self._notifier.wait(response_id, min(left, FOLLOW_POLL))
        return found

    async def write_run(self, response_id: str, record: bytes, ttl: float, events: Entries,
                        claim: tuple[str, float] | None = None) -> None:
        await self._runs.add(RunWrite(response_id, record, ttl, events, claim))

    async def _write_runs(self, batch: list[RunWrite]) -> None:
        await self._run(self._write_run_rows, batch)
        for run in batch:
            if run.events:
                self._notifier.notify(run.response_id)

    def _write_run_rows(self, batch: list[RunWrite]) -> None:
        """One transaction for a burst of creates and run starts: each one's record, entries and lease."""
        now = time.time()
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO responses (id, record, chain, expires_at) VALUES (?, ?, ?, ?)",
                           [(run.response_id, *_split(run.record), now + run.ttl) for run in batch])
            db.executemany("INSERT OR REPLACE INTO runs (id, instance, deadline) VALUES (?, ?, ?)",
                           [(run.response_id, run.claim[0], now + run.claim[1]) for run in batch if run.claim])
            db.executemany("INSERT OR REPLACE INTO response_events (response_id, seq, frame) VALUES (?, ?, ?)",
                           [(run.response_id, seq, frame) for run in batch for seq, frame in run.events])

    async def claim_run(self, response_id: str, instance: str, lease: float) -> None:
        await self._run(self._change, "INSERT OR REPLACE INTO runs (id, instance, deadline) VALUES (?, ?, ?)",
                        (response_id, instance, time.time() + lease))

    async def renew_runs(self, response_ids: list[str], instance: str, lease: float) -> None:
        if response_ids:
            marks = ",".join("?" * len(response_ids))
            await self._run(self._change, f"UPDATE runs SET deadline = ? WHERE instance = ? AND id IN ({marks})",
                            (time.time() + lease, instance, *response_ids))

    async def release_run(self, response_id: str) -> None:
        await self._run(self._release_run, response_id)

    def _release_run(self, response_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM runs WHERE id = ?", (response_id,))
            db.execute("DELETE FROM cancels WHERE id = ?", (response_id,))

    async def take_lapsed_runs(self) -> list[str]:
        rows = await self._run(self._query, "DELETE FROM runs WHERE deadline <= ? RETURNING id", (time.time(),))
        return [row[0] for row in rows]

    async def run_owner(self, response_id: str) -> str | None:
        rows = await self._run(self._query, "SELECT instance FROM runs WHERE id = ? AND deadline > ?",
                               (response_id, time.time()))
        return rows[0][0] if rows else None

    async def request_cancel(self, response_id: str, ttl: float) -> None:
        await self._run(self._change, "INSERT OR REPLACE INTO cancels (id, expires_at) VALUES (?, ?)",
                        (response_id, time.time() + ttl))

    async def cancel_requested(self, response_ids: list[str]) -> set[str]:
        if not response_ids:
            return set()
        marks = ",".join("?" * len(response_ids))
        rows = await self._run(self._query, f"SELECT id FROM cancels WHERE id IN ({marks})", tuple(response_ids))
        return {row[0] for row in rows}


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def migrate(db: sqlite3.Connection) -> list[int]:
    """Bring the file to SCHEMA_VERSION (creating its tables when new); the versions applied. One transaction,
    taken before the version is read, so processes opening the file together migrate it once."""
    with _transaction(db):
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version >= SCHEMA_VERSION:
            return []
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'responses'").fetchall():
            _rebuild_responses(db)   # a file of version 0
        for statement in _SCHEMA:
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return list(range(version + 1, SCHEMA_VERSION + 1))


async def migrate_url(url: str) -> list[int]:
    """`gateway migrate`: the migrations applied to a `sqlite:PATH` store's file (raises StoreUnavailable)."""
    path = SQLiteStore(url).path
    try:
        return await asyncio.to_thread(_migrate_path, path)
    except (sqlite3.Error, OSError) as exc:
        raise StoreUnavailable(f"SQLite store {path}: {exc}") from None


def _migrate_path(path: str) -> list[int]:
    db = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        return migrate(db)
    finally:
        db.close()


def _rebuild_responses(db: sqlite3.Connection) -> None:
    """Version 0 to 1: `responses` (WITHOUT ROWID, the record before `expires_at`, maybe no `chain` column
    yet, the closing brace in `chain`) copied into a rowid table of the current layout. (`||` makes text of
    the blobs, whose bytes the cast keeps: the file's encoding is UTF-8.) Its index goes with the old table."""
    if "chain" not in {row[1] for row in db.execute("PRAGMA table_info(responses)")}:
        db.execute("ALTER TABLE responses ADD COLUMN chain BLOB")
    db.execute("ALTER TABLE responses RENAME TO responses_v0")
    db.execute(_RESPONSES)
    db.execute("INSERT INTO responses (id, expires_at, record, chain) SELECT id, expires_at, "
               "iif(chain IS NULL, record, CAST(record || '}' AS BLOB)), substr(chain, 1, length(chain) - 1) "
               "FROM responses_v0")
    db.execute("DROP TABLE responses_v0")


def _split(record: bytes) -> tuple[bytes, bytes | None]:
    """A response record as its two columns: itself without a trailing `,"chain":[…]` (base.CHAIN_KEY), and
    that (None when the record has another layout), so an ancestor is read without the ids it lists."""
    if trailing_chain(record) is None:
        return record, None
    cut = record.rfind(CHAIN_KEY)
    return record[:cut] + b"}", record[cut:-1]


def _joined(head: bytes, chain: bytes | None) -> bytes:
    return head[:-1] + chain + b"}" if chain is not None else head
