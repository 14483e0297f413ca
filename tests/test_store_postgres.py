"""What only the PostgreSQL store does: migrations under an advisory lock, `gateway migrate`, round trips,
LISTEN/NOTIFY across instances, batched expiry. The shared contract is in test_store_backends.py."""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.store import open_store_url
from gateway.store import postgres
from gateway.store.postgres import MIGRATIONS, split_schema

from .conftest import free_port, run_cli
from .helpers import sdk
from .test_store_backends import RoundTrips

openai = pytest.importorskip("openai")


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


# ---------------------------------------------------------------------------------------- a PostgreSQL of our own
PG_BIN = Path(f"/usr/lib/postgresql/{max(p.name for p in Path('/usr/lib/postgresql').iterdir())}/bin") \
    if Path("/usr/lib/postgresql").is_dir() else None


class OwnPostgres:
    """A throwaway PostgreSQL cluster (initdb in a temporary directory, run as the `postgres` user) on its
    own port: the durability test stops and starts it without touching the machine's shared server."""

    def __init__(self, port: int) -> None:
        if PG_BIN is None or os.geteuid() != 0 or shutil.which("runuser") is None:
            pytest.skip("needs root, runuser and PostgreSQL's binaries (/usr/lib/postgresql) for a cluster of its own")
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="gw-pg-"))
        shutil.chown(self.dir, "postgres")
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self._as_postgres("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres", "--no-sync")

    def _as_postgres(self, tool: str, *args: str) -> None:
        assert PG_BIN is not None
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / tool), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    def start(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.dir / "data"), "-w", "-l", str(self.dir / "log"), "-o",
                          f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start")

    def crash(self) -> None:
        """Stop without a shutdown checkpoint, as a crash would (recovery replays the WAL at the next start)."""
        self._as_postgres("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.crash()
        shutil.rmtree(self.dir, ignore_errors=True)


async def test_postgres_restarted_during_load(make_gateway, upstream, postgres_base):
    """Under steady creates, PostgreSQL goes down hard and comes back: every response acknowledged as
    completed is there afterwards; meanwhile stateful requests get 503 in the envelope and stateless ones work."""
    server = OwnPostgres(free_port())
    try:
        server.start()
        gateway = await make_gateway(store={"url": server.url})
        acknowledged: list[str] = []
        refused: list[int] = []
        stop = asyncio.Event()

        async def load(client: Any) -> None:
            while not stop.is_set():
                try:
                    created = await client.responses.create(model="scripted", input="keep me")
                except openai.APIStatusError as exc:
                    assert exc.status_code == 503 and exc.body["code"] == "store_unavailable", exc.body
                    refused.append(exc.status_code)
                    await asyncio.sleep(0.02)
                else:
                    assert created.status == "completed"
                    acknowledged.append(created.id)

        async with sdk(str(gateway.make_url(""))) as client:
            workers = [asyncio.ensure_future(load(client)) for _ in range(4)]
            await asyncio.sleep(1.0)
            before_outage = len(acknowledged)
            await asyncio.to_thread(server.crash)
            await asyncio.sleep(0.5)
            stateless = await client.responses.create(model="scripted", input="x", store=False)
            assert stateless.status == "completed"
            with pytest.raises(openai.InternalServerError) as info:
                await client.responses.create(model="scripted", input="x")
            assert info.value.status_code == 503 and info.value.body["code"] == "store_unavailable"
            await asyncio.to_thread(server.start)
            await asyncio.sleep(1.5)
            stop.set()
            await asyncio.gather(*workers)
            assert before_outage > 0 and refused, (before_outage, len(refused))
            assert len(acknowledged) > before_outage   # creates work again after the restart
            found = 0
            for response_id in acknowledged:
                assert (await client.responses.retrieve(response_id)).output_text == "Hello"
                found += 1
            print(f"PostgreSQL restart under load: {found} acknowledged responses all there, {len(refused)} 503s")
    finally:
        server.remove()
