"""What only the PostgreSQL store does: migrations under an advisory lock, `gateway migrate`, round trips,
LISTEN/NOTIFY across instances, batched expiry. The shared contract is in test_store_backends.py."""
from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from gateway.store import open_store_url
from gateway.store import postgres
from gateway.store.postgres import MIGRATIONS, split_schema

from .conftest import run_cli
from .test_store_backends import RoundTrips


async def _tables(url: str) -> tuple[asyncpg.Connection, str]:
    dsn, schema = split_schema(url)
    return await asyncpg.connect(dsn), schema


async def test_instances_starting_together_apply_each_migration_once(postgres_url):
    stores = [open_store_url(postgres_url) for _ in range(4)]
    await asyncio.gather(*(store.open() for store in stores))
    conn, schema = await _tables(postgres_url)
    try:
        versions = await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations ORDER BY version')
        assert [row[0] for row in versions] == [version for version, _ in MIGRATIONS]
        await stores[0].put_response("resp_1", b"{}", ttl=60)
        assert await stores[3].get_responses(["resp_1"]) == {"resp_1": b"{}"}
    finally:
        await conn.close()
        for store in stores:
            await store.close()


async def test_gateway_migrate_command(postgres_url):
    status, out = await run_cli("migrate", "--store", postgres_url)
    assert status == 0 and f"applied {MIGRATIONS[-1][0]}" in out, out
    status, out = await run_cli("migrate", "--store", postgres_url)
    assert status == 0 and "nothing to apply" in out, out
    status, out = await run_cli("migrate", "--store", "postgresql://root@127.0.0.1:1/test")
    assert status == 2 and "Traceback" not in out and "PostgreSQL store" in out, out
    status, out = await run_cli("migrate", "--store", "memory:")
    assert status == 0 and "nothing to migrate" in out


async def test_a_chain_and_a_background_create_are_one_round_trip_each(postgres_url):
    proxy = RoundTrips(5432)
    port = await proxy.start()
    store = open_store_url(postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{port}"))
    await store.open()
    try:
        ids = [f"resp_{i}" for i in range(20)]
        for i, rid in enumerate(ids):
            await store.put_response(rid, b'{"chain":[%s]}' % b",".join(b'"%s"' % a.encode() for a in ids[:i]), 60)
        await store.get_chain(ids[-1])   # prepares the statement (asyncpg caches it per connection)
        before = proxy.count
        assert len(await store.get_chain(ids[-1])) == 20
        assert proxy.count - before == 1
        await store.write_run("resp_w0", b"{}", 60, [(0, b"a")], claim=("gw_a", 60))
        before = proxy.count
        await asyncio.gather(*(store.write_run(f"resp_w{i}", b"{}", 60, [(0, b"a"), (1, b"b")],
                                               claim=("gw_a", 60)) for i in range(1, 40)))
        assert proxy.count - before <= 2   # the first write, and the rest together in the next
        assert await store.read_events("resp_w39", -1) == [(0, b"a"), (1, b"b")]
    finally:
        await store.close()
        assert proxy.server is not None
        proxy.server.close()


async def test_a_follower_on_another_instance_wakes_on_notify(postgres_url):
    writer, follower = open_store_url(postgres_url), open_store_url(postgres_url)
    await writer.open()
    await follower.open()
    try:
        await writer.put_response("resp_n", b"{}", ttl=60)
        waiting = asyncio.ensure_future(follower.follow_events("resp_n", -1, timeout=5))
        await asyncio.sleep(0.2)
        started = asyncio.get_running_loop().time()
        await writer.append_events("resp_n", [(0, b"a")], ttl=60)
        assert await asyncio.wait_for(waiting, 3) == [(0, b"a")]
        # well under the poll interval: the NOTIFY woke it, not the poll
        assert asyncio.get_running_loop().time() - started < postgres.FOLLOW_POLL / 2
    finally:
        await writer.close()
        await follower.close()


async def test_sweep_deletes_expired_rows_in_batches(postgres_url, monkeypatch):
    monkeypatch.setattr(postgres, "SWEEP_BATCH", 3)
    store = open_store_url(postgres_url)
    await store.open()
    conn, schema = await _tables(postgres_url)
    try:
        for i in range(7):
            await store.put_response(f"resp_old{i}", b"{}", ttl=0.05)
            await store.append_events(f"resp_old{i}", [(0, b"a")], ttl=0.05)
        await store.put_conversation("conv_old", b"{}", ttl=0.05, items=[("msg_1", b"{}")])
        await store.request_cancel("resp_old0", ttl=0.05)
        await store.put_response("resp_new", b"{}", ttl=60)
        await store.append_events("resp_new", [(0, b"a")], ttl=60)
        await asyncio.sleep(0.1)
        assert await store.sweep() == 7 + 1 + 1
        assert [r[0] for r in await conn.fetch(f'SELECT id FROM "{schema}".responses')] == ["resp_new"]
        assert [r[0] for r in await conn.fetch(f'SELECT response_id FROM "{schema}".response_events')] == ["resp_new"]
        for table in ("conversations", "conversation_items", "cancels"):
            assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".{table}') == 0, table
    finally:
        await conn.close()
        await store.close()


def test_the_schema_comes_from_the_url():
    assert split_schema("postgresql://u@h:1/db?schema=s1&sslmode=disable") == ("postgresql://u@h:1/db?sslmode=disable",
                                                                               "s1")
    assert split_schema("postgres://u@h/db") == ("postgresql://u@h/db", "public")


@pytest.fixture(autouse=True)
def _needs_postgres(postgres_base: Any) -> None:
    """Every test here skips visibly without PostgreSQL (a failure with CI=true)."""
