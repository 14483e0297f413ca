"""The store interface, the same tests on every backend: memory, SQLite on a real file, the real Redis, the
real PostgreSQL (a schema of each test's own)."""
from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.background import EventLog
from gateway.config import StoreConfig, load_config
from gateway.errors import ConfigError, InvalidRequest
from gateway.store import StoreUnavailable, open_store_url
from gateway.store.redis import split_prefix
from gateway.store.service import StateService, Turn, normalize_items, token_owner

from .conftest import ROOT, run_cli


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres", "hybrid"])
async def store(request: Any, tmp_path: Any) -> Any:
    events_url = ""
    if request.param == "memory":
        url = "memory:"
    elif request.param == "sqlite":
        url = f"sqlite:{tmp_path / 'state' / 'gateway.db'}"
    elif request.param == "hybrid":   # PostgreSQL, the event logs and cancel signals in Redis
        url, events_url = request.getfixturevalue("postgres_url"), request.getfixturevalue("redis_url")
    else:
        url = request.getfixturevalue(f"{request.param}_url")
    backend = open_store_url(url, events_url)
    await backend.open()
    yield backend
    await backend.close()


async def test_responses_put_get_touch_delete(store):
    await store.put_response("resp_a", b'{"a":1}', ttl=60)
    await store.put_response("resp_b", b'{"b":2}', ttl=60)
    assert await store.get_responses(["resp_a", "resp_missing", "resp_b"]) == {"resp_a": b'{"a":1}',
                                                                                "resp_b": b'{"b":2}'}
    await store.touch_responses(["resp_a", "resp_missing"], ttl=120)
    assert await store.delete_response("resp_a") is True
    assert await store.delete_response("resp_a") is False
    assert await store.get_responses(["resp_a"]) == {}
    assert await store.get_responses([]) == {}


async def test_a_whole_chain_in_one_read(store):
    await store.put_response("resp_c0", b'{"chain":[]}', ttl=60)
    await store.put_response("resp_c1", b'{"chain":["resp_c0"]}', ttl=60)
    await store.put_response("resp_c2", b'{"chain":["resp_c0","resp_c1"]}', ttl=60)
    assert await store.get_chain("resp_c2") == {"resp_c0": b'{"chain":[]}', "resp_c1": b'{"chain":["resp_c0"]}',
                                                "resp_c2": b'{"chain":["resp_c0","resp_c1"]}'}
    await store.delete_response("resp_c0")
    assert set(await store.get_chain("resp_c2")) == {"resp_c1", "resp_c2"}
    assert await store.get_chain("resp_missing") == {}


async def test_conversation_items_in_order_with_paging(store):
    items = [(f"msg_{i}", f'{{"i":{i}}}'.encode()) for i in range(5)]
    await store.put_conversation("conv_1", b'{"c":1}', ttl=60, items=items[:3])
    await store.put_response("resp_1", b"{}", ttl=60, conversation=("conv_1", items[3:]))
    assert await store.get_conversation("conv_1") == b'{"c":1}'
    every, more = await store.list_items("conv_1", after=None, limit=None, order="asc")
    assert every == [item for _, item in items] and not more
    page, more = await store.list_items("conv_1", after=None, limit=2, order="desc")
    assert page == [items[4][1], items[3][1]] and more
    page, more = await store.list_items("conv_1", after="msg_3", limit=2, order="desc")
    assert page == [items[2][1], items[1][1]] and more
    page, more = await store.list_items("conv_1", after="msg_1", limit=10, order="asc")
    assert page == [items[2][1], items[3][1], items[4][1]] and not more
    assert await store.list_items("conv_1", after="msg_unknown", limit=10, order="asc") == ([], False)
    # an id appended again keeps its first place and value
    await store.put_conversation("conv_1", b'{"c":2}', ttl=60, items=[("msg_0", b'{"again":1}')])
    assert (await store.list_items("conv_1", after=None, limit=1, order="asc"))[0] == [items[0][1]]
    assert await store.get_conversation("conv_1") == b'{"c":2}'
    assert await store.get_item("conv_1", "msg_2") == items[2][1]
    assert await store.delete_item("conv_1", "msg_2") is True
    assert await store.delete_item("conv_1", "msg_2") is False
    assert await store.get_item("conv_1", "msg_2") is None
    assert len((await store.list_items("conv_1", after=None, limit=None, order="asc"))[0]) == 4
    assert await store.delete_conversation("conv_1") is True
    assert await store.get_conversation("conv_1") is None
    assert await store.list_items("conv_1", after=None, limit=None, order="asc") == ([], False)
    assert await store.delete_conversation("conv_1") is False


async def test_expired_entries_are_gone(store):
    await store.put_response("resp_old", b"{}", ttl=0.05)
    await store.put_conversation("conv_old", b"{}", ttl=0.05, items=[("msg_1", b"{}")])
    await store.put_response("resp_new", b"{}", ttl=60)
    await asyncio.sleep(0.2)
    assert await store.get_responses(["resp_old", "resp_new"]) == {"resp_new": b"{}"}
    assert await store.get_conversation("conv_old") is None
    assert await store.get_item("conv_old", "msg_1") is None
    assert await store.list_items("conv_old", after=None, limit=None, order="asc") == ([], False)


async def test_sqlite_sweep_deletes_rows_from_the_file(tmp_path):
    path = tmp_path / "gateway.db"
    store = open_store_url(f"sqlite:{path}")
    await store.open()
    await store.put_response("resp_old", b"{}", ttl=0.05)
    await store.put_conversation("conv_old", b"{}", ttl=0.05, items=[("msg_1", b"{}")])
    await store.put_response("resp_new", b"{}", ttl=60)
    await asyncio.sleep(0.1)
    await store.sweep()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert [r[0] for r in db.execute("SELECT id FROM responses")] == ["resp_new"]
    assert db.execute("SELECT count(*) FROM conversations").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM conversation_items").fetchone() == (0,)
    db.close()
    await store.close()


async def test_redis_keys_carry_their_expiry(redis_url):
    store = open_store_url(redis_url)
    await store.open()
    _, prefix = split_prefix(redis_url)
    await store.put_response("resp_1", b"{}", ttl=100, conversation=("conv_1", [("msg_1", b"{}")]))
    await store.put_conversation("conv_1", b"{}", ttl=100)
    client = aioredis.Redis(host="127.0.0.1", port=6379)
    keys = [key.decode() async for key in client.scan_iter(match=f"{prefix}*")]
    assert sorted(keys) == sorted(f"{prefix}{k}" for k in ("r:resp_1", "c:conv_1", "ci:conv_1", "co:conv_1",
                                                            "cn:conv_1"))
    for key in keys:
        assert 0 < await client.pttl(key) <= 100_000, key
    await client.aclose()
    await store.close()


async def test_unreachable_backends_raise_store_unavailable(tmp_path):
    for url in ("redis://127.0.0.1:1/0", f"sqlite:{tmp_path / 'file'}/under/a/file.db",
                "postgresql://root@127.0.0.1:1/test"):
        if url.startswith("sqlite:"):
            (tmp_path / "file").write_text("not a directory")
        store = open_store_url(url)
        with pytest.raises(StoreUnavailable) as info:
            await store.open()
        assert info.value.status == 503 and info.value.code == "store_unavailable"
        with pytest.raises(StoreUnavailable):
            await store.get_responses(["resp_x"])
        await store.close()


def test_store_config_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("store:\n  url: ${NO_SUCH_VAR_X:-sqlite:state/x.db}\n  ttl: 60\n  max_chain_length: 5\n")
    config = load_config(path)
    assert config.store.url == "sqlite:state/x.db" and config.store.ttl == 60 and config.store.max_chain_length == 5
    assert load_config(None, {"store": {"url": "redis://127.0.0.1:6379/0"}}).store.url == "redis://127.0.0.1:6379/0"
    assert load_config(None, {"store": {"url": "postgresql://u@h/db", "events_url": "redis://h:6379/0"}}).store.events_url
    for bad, key in (("url: mysql://x", "store.url"), ("ttl: 0", "store.ttl"), ("nope: 1", "store.nope"),
                     ("events_url: postgresql://x", "store.events_url"),
                     ("events_url: redis://h:6379/0", "store.events_url")):
        path.write_text(f"store:\n  {bad}\n")
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(path)


def test_shipped_config_and_unit_keep_state_in_a_file(monkeypatch):
    monkeypatch.delenv("GATEWAY_STORE_URL", raising=False)
    shipped = load_config(ROOT / "config.yaml").store
    assert shipped == StoreConfig(url="sqlite:state/gateway.db")
    unit = (ROOT / "deploy" / "gateway.service").read_text()
    assert "StateDirectory=gateway" in unit and "GATEWAY_STORE_URL=sqlite:/var/lib/gateway/gateway.db" in unit


def test_owner_is_a_hash_of_the_bearer_token():
    assert token_owner("Bearer sk-one") == token_owner("Bearer sk-one") != token_owner("Bearer sk-two")
    assert "sk-one" not in token_owner("Bearer sk-one")
    assert token_owner(None) == token_owner("") == "anonymous"


def test_input_items_get_ids_and_typed_content():
    items = normalize_items([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                             {"type": "function_call_output", "call_id": "c", "output": "x", "id": "fco_given"}])
    assert items[0]["id"].startswith("msg_") and items[0]["content"] == [{"type": "input_text", "text": "hi"}]
    assert items[0]["type"] == "message" and items[0]["status"] == "completed"
    assert items[1]["content"] == [{"type": "output_text", "text": "yo", "annotations": []}]
    assert items[2]["id"] == "fco_given"
    assert normalize_items("hello")[0]["content"] == [{"type": "input_text", "text": "hello"}]
    assert normalize_items([{"type": []}])[0]["id"].startswith("item_")  # translate.py rejects the type later
    with pytest.raises(InvalidRequest, match=r"input\[0\]\.id"):  # an id that is no string is never swapped
        normalize_items([{"role": "user", "content": "hi", "id": 5}])


# ---------------------------------------------------------------------------------------- background responses
async def test_event_log_append_read_follow(store):
    await store.put_response("resp_log", b"{}", ttl=60)
    await store.append_events("resp_log", [(0, b"a"), (1, b"b")], ttl=60)
    await store.append_events("resp_log", [(2, b"c")], ttl=60)
    assert await store.read_events("resp_log", -1) == [(0, b"a"), (1, b"b"), (2, b"c")]
    assert await store.read_events("resp_log", 1) == [(2, b"c")]
    assert await store.read_events("resp_log", 2) == []
    assert await store.read_events("resp_unknown", -1) == []
    started = asyncio.get_running_loop().time()
    assert await store.follow_events("resp_log", 2, timeout=0.2) == []
    assert asyncio.get_running_loop().time() - started >= 0.15
    waiting = asyncio.ensure_future(store.follow_events("resp_log", 2, timeout=3))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await store.append_events("resp_log", [(3, b"d"), (5, b"e")], ttl=60)
    assert await asyncio.wait_for(waiting, 2) == [(3, b"d"), (5, b"e")]
    assert await store.follow_events("resp_log", 0, timeout=1) == [(1, b"b"), (2, b"c"), (3, b"d"), (5, b"e")]
    assert await store.read_events("resp_log", 3) == [(5, b"e")]
    assert await store.delete_response("resp_log") is True
    assert await store.read_events("resp_log", -1) == []


async def test_event_log_expires_with_its_response(store):
    await store.put_response("resp_short", b"{}", ttl=0.05)
    await store.append_events("resp_short", [(0, b"a")], ttl=0.05)
    await asyncio.sleep(0.2)
    if hasattr(store, "sweep"):  # Redis (and the hybrid's event logs there) expire keys by themselves
        swept = store.sweep()
        if asyncio.iscoroutine(swept):
            await swept
    assert await store.read_events("resp_short", -1) == []


async def test_run_leases_lapse_to_exactly_one_taker(store):
    await store.claim_run("resp_run", "gw_a", lease=0.2)
    await store.claim_run("resp_other", "gw_a", lease=60)
    assert await store.run_owner("resp_run") == "gw_a"
    assert await store.take_lapsed_runs() == []
    await store.renew_runs(["resp_run"], "gw_a", lease=0.3)
    await asyncio.sleep(0.2)
    assert await store.take_lapsed_runs() == []  # renewed past the first deadline
    await asyncio.sleep(0.2)
    assert await store.run_owner("resp_run") is None
    takers = await asyncio.gather(store.take_lapsed_runs(), store.take_lapsed_runs())
    assert sorted(takers, key=len) == [[], ["resp_run"]]
    await store.release_run("resp_other")
    assert await store.run_owner("resp_other") is None
    await asyncio.sleep(0.05)
    assert await store.take_lapsed_runs() == []


async def test_cancel_requests(store):
    assert await store.cancel_requested(["resp_x", "resp_y"]) == set()
    await store.request_cancel("resp_x", ttl=60)
    assert await store.cancel_requested(["resp_x", "resp_y"]) == {"resp_x"}
    assert await store.cancel_requested([]) == set()
    await store.release_run("resp_x")
    assert await store.cancel_requested(["resp_x"]) == set()


async def test_write_run_stores_record_entries_and_lease_together(store):
    """A background create (with the lease) and a run start (without), concurrent calls sharing a write."""
    await asyncio.gather(store.write_run("resp_q1", b'{"q":1}', 60, [(0, b"a"), (1, b"b")], claim=("gw_a", 60)),
                         store.write_run("resp_q2", b'{"q":2}', 60, [], claim=("gw_b", 60)))
    assert await store.get_responses(["resp_q1", "resp_q2"]) == {"resp_q1": b'{"q":1}', "resp_q2": b'{"q":2}'}
    assert await store.read_events("resp_q1", -1) == [(0, b"a"), (1, b"b")]
    assert await store.read_events("resp_q2", -1) == []
    assert (await store.run_owner("resp_q1"), await store.run_owner("resp_q2")) == ("gw_a", "gw_b")
    waiting = asyncio.ensure_future(store.follow_events("resp_q1", 1, timeout=3))
    await asyncio.sleep(0.1)
    await store.write_run("resp_q1", b'{"q":3}', 60, [(2, b"c")])  # the run starts: the lease stays
    assert await asyncio.wait_for(waiting, 2) == [(2, b"c")]
    assert await store.get_responses(["resp_q1"]) == {"resp_q1": b'{"q":3}'}
    assert await store.run_owner("resp_q1") == "gw_a"
    assert await store.take_lapsed_runs() == []


class RoundTrips:
    """A loopback TCP proxy in front of a server (Redis by default) counting round trips: client sends after a
    server reply."""

    def __init__(self, port: int = 6379) -> None:
        self.port = port
        self.count = 0
        self._replied = True
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        redis_reader, redis_writer = await asyncio.open_connection("127.0.0.1", self.port)
        await asyncio.gather(self._pipe(client_reader, redis_writer, True),
                             self._pipe(redis_reader, client_writer, False), return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, to_redis: bool) -> None:
        try:
            while data := await reader.read(65536):
                if to_redis and self._replied:
                    self.count += 1
                self._replied = not to_redis
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


async def test_a_background_create_is_one_redis_round_trip(redis_url):
    """The queued record, the run's lease and the first events: one round trip (they were three), and a
    burst of creates shares it."""
    proxy = RoundTrips()
    port = await proxy.start()
    store = open_store_url(redis_url.replace("127.0.0.1:6379", f"127.0.0.1:{port}"))
    await store.open()
    service = StateService(store, StoreConfig())
    turn = Turn("owner", True, [], resumable=True)

    def queued(rid: str) -> list[dict[str, Any]]:
        response = {"id": rid, "object": "response", "status": "queued", "background": True, "output": []}
        return [{"type": "response.created", "sequence_number": 0, "response": response},
                {"type": "response.queued", "sequence_number": 1, "response": response}]

    logs = [EventLog(service, turn, f"resp_burst{i}", 1 << 20) for i in range(51)]
    try:
        before = proxy.count
        await logs[0].queue(queued("resp_burst0"), "gw_a", 60)
        assert proxy.count - before == 1
        before = proxy.count
        await asyncio.gather(*(log.queue(queued(log.response_id), "gw_a", 60) for log in logs[1:]))
        assert proxy.count - before == 1
        for log in logs:
            assert [seq for seq, _ in await store.read_events(log.response_id, -1)] == [0, 1]
            assert await store.run_owner(log.response_id) == "gw_a"
        assert len(await store.get_responses([log.response_id for log in logs])) == 51
    finally:
        await store.close()
        assert proxy.server is not None
        proxy.server.close()


def _chain_records(n: int, *, chain_last: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """A chain of `n` response records, each listing its ancestors (chain last, or in the layout before)."""
    ids = [f"resp_{'x' * (i % 3)}{i}" for i in range(n)]   # ids of several lengths
    records = []
    for i, rid in enumerate(ids):
        record: dict[str, Any] = {"owner": "alice", "input": [{"type": "message", "role": "user", "id": f"msg_{i}",
                                                                "content": [{"type": "input_text", "text": f"turn {i}"}]}],
                                  "response": {"id": rid, "output": []}}
        record = {**record, "resumable": False, "chain": ids[:i]} if chain_last else {**record, "chain": ids[:i],
                                                                                         "resumable": False}
        records.append((rid, record))
    return records


async def test_chain_ancestors_come_without_their_trailing_chain(store):
    records = _chain_records(5)
    for rid, record in records:
        await store.put_response(rid, orjson.dumps(record), ttl=60)
    found = await store.get_chain(records[-1][0])
    assert found[records[-1][0]] == orjson.dumps(records[-1][1])   # the response itself whole
    for rid, record in records[:-1]:   # its ancestors without the D ids each of them lists
        assert found[rid] == orjson.dumps({k: v for k, v in record.items() if k != "chain"})


async def test_chains_of_records_written_before_chain_came_last_load_whole(store):
    old = _chain_records(4, chain_last=False)
    new = _chain_records(6)[4:]   # continued after an upgrade: these end with their chain, their ancestors do not
    for rid, record in [*old, *new]:
        await store.put_response(rid, orjson.dumps(record), ttl=60)
    found = await store.get_chain(old[-1][0])
    assert {rid: orjson.loads(raw) for rid, raw in found.items()} == dict(old)
    found = await store.get_chain(new[-1][0])
    assert {rid: orjson.loads(raw) for rid, raw in found.items()} == {**dict(old), new[0][0]: {
        k: v for k, v in new[0][1].items() if k != "chain"}, new[1][0]: new[1][1]}
    service = StateService(store, StoreConfig())
    turn = await service.prepare({"model": "m", "input": "next", "previous_response_id": new[-1][0]}, "alice")
    assert [item["id"] for item in turn.earlier()] == [f"msg_{i}" for i in range(6)]


async def test_a_sqlite_file_of_the_earlier_schema_is_upgraded_and_its_records_read(tmp_path):
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)   # the responses table before records kept their chain in a column of its own
    old.execute("CREATE TABLE responses (id TEXT PRIMARY KEY, record BLOB NOT NULL, expires_at REAL NOT NULL) "
                "WITHOUT ROWID")
    records = _chain_records(3)
    old.executemany("INSERT INTO responses VALUES (?, ?, 4e9)", [(rid, orjson.dumps(r)) for rid, r in records])
    old.commit()
    old.close()
    store = open_store_url(f"sqlite:{path}")
    await store.open()
    try:
        found = await store.get_chain(records[-1][0])
        assert {rid: orjson.loads(raw) for rid, raw in found.items()} == dict(records)
        new = _chain_records(4)[3]
        await store.put_response(new[0], orjson.dumps(new[1]), ttl=60)
        found = await store.get_chain(new[0])
        assert found[new[0]] == orjson.dumps(new[1]) and found[records[0][0]] == orjson.dumps(records[0][1])
        assert [d.record for d in [d async for d in store.dump()] if d.id == new[0]] == [orjson.dumps(new[1])]
    finally:
        await store.close()


def _version_0_file(path: Any, records: list[tuple[str, bytes]]) -> None:
    """A file as schema version 0 left it: `responses` WITHOUT ROWID, the record before `expires_at`, a record's
    trailing `,"chain":[…]}` in `chain` (NULL for a record of another layout)."""
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE responses (id TEXT PRIMARY KEY, record BLOB NOT NULL, expires_at REAL NOT NULL, "
                "chain BLOB) WITHOUT ROWID")
    old.execute("CREATE INDEX responses_by_expiry ON responses (expires_at)")
    for rid, raw in records:
        cut = raw.rfind(b',"chain":[')
        head, chain = (raw[:cut], raw[cut:]) if raw.endswith(b"]}") else (raw, None)
        old.execute("INSERT INTO responses VALUES (?, ?, 4e9, ?)", (rid, head, chain))
    old.commit()
    old.close()


@pytest.mark.parametrize("how", ["open", "gateway migrate"])
async def test_a_sqlite_file_of_schema_version_0_is_migrated_once(tmp_path, how):
    path = tmp_path / "v0.db"
    records = [*_chain_records(3, chain_last=False), *_chain_records(6)[3:]]
    raw = [(rid, orjson.dumps(record)) for rid, record in records]
    _version_0_file(path, raw)
    if how == "gateway migrate":
        assert await run_cli("migrate", "--store", f"sqlite:{path}") == (
            0, f"sqlite:{path}: applied 1; schema at version 1\n")
        assert (await run_cli("migrate", "--store", f"sqlite:{path}"))[1].endswith(
            "nothing to apply; schema at version 1\n")
    store = open_store_url(f"sqlite:{path}")
    await store.open()
    try:
        assert await store.get_responses([rid for rid, _ in raw]) == dict(raw)
        assert {d.id: d.record async for d in store.dump()} == dict(raw)
        ancestors = {rid: orjson.dumps({k: v for k, v in record.items() if k != "chain"}) for rid, record in records}
        assert await store.get_chain(records[-1][0]) == {**dict(raw[:3]), **dict(list(ancestors.items())[3:5]),
                                                         records[-1][0]: raw[-1][1]}
    finally:
        await store.close()
    migrated = sqlite3.connect(path)
    assert migrated.execute("PRAGMA user_version").fetchone() == (1,)
    table = migrated.execute("SELECT sql FROM sqlite_master WHERE name = 'responses'").fetchone()[0]
    assert "WITHOUT ROWID" not in table and table.index("expires_at") < table.index("record")
    assert {"responses_by_expiry", "conversations"} <= {row[0] for row in migrated.execute(
        "SELECT name FROM sqlite_master")}
    migrated.close()
