"""`gateway store export` / `import`: an operator moves from one backend to another without losing a
conversation (SQLite to PostgreSQL here, through real gateways and the CLI)."""
from __future__ import annotations

import asyncio

import pytest

from gateway.store import open_store_url

from .conftest import gateway_process, run_cli
from .helpers import sdk

openai = pytest.importorskip("openai")


async def test_sqlite_to_postgresql_keeps_chains_and_conversations(upstream, tmp_path, postgres_url):
    sqlite_url = f"sqlite:{tmp_path / 'gateway.db'}"
    async with gateway_process("--upstream-url", upstream.url, "--store", sqlite_url) as old, sdk(old.url) as client:
        first = await client.responses.create(model="scripted", input="remember 42")
        conversation = await client.conversations.create(items=[{"role": "user", "content": "hi"}],
                                                         metadata={"k": "v"})
        await client.responses.create(model="scripted", input="again", conversation=conversation.id)
    dump = tmp_path / "state.jsonl"
    status, out = await run_cli("store", "export", "--store", sqlite_url, str(dump))
    assert status == 0 and "exported 3" in out, out
    status, out = await run_cli("store", "import", "--store", postgres_url, str(dump))
    assert status == 0 and "imported 3" in out, out

    async with gateway_process("--upstream-url", upstream.url, "--store", postgres_url) as new, \
            sdk(new.url) as client:
        assert (await client.responses.retrieve(first.id)).output_text == "Hello"
        await client.responses.create(model="scripted", input="what number?", previous_response_id=first.id)
        assert [m["content"] for m in upstream.requests[-1].body["messages"]] == ["remember 42", "Hello",
                                                                                  "what number?"]
        assert (await client.conversations.retrieve(conversation.id)).metadata == {"k": "v"}
        items = await client.conversations.items.list(conversation.id, order="asc")
        assert [item.role for item in items.data] == ["user", "user", "assistant"]

    # the time left travels with each object
    store = open_store_url(postgres_url)
    await store.open()
    try:
        ttls = {dumped.id: dumped.ttl async for dumped in store.dump()}
        assert ttls.keys() >= {first.id, conversation.id} and all(0 < t <= 30 * 86400 for t in ttls.values())
    finally:
        await store.close()


async def test_every_backend_dumps_what_it_holds(tmp_path, redis_url, postgres_url):
    for url in ("memory:", f"sqlite:{tmp_path / 'x.db'}", redis_url, postgres_url):
        store = open_store_url(url)
        await store.open()
        try:
            await store.put_response("resp_1", b'{"r":1}', ttl=60)
            await store.put_response("resp_gone", b"{}", ttl=0.001)
            await store.put_conversation("conv_1", b'{"c":1}', ttl=60, items=[("msg_1", b'{"i":1}'),
                                                                              ("msg_2", b'{"i":2}')])
            await asyncio.sleep(0.05)
            dumped = sorted([(d.kind, d.id, d.record, d.items) async for d in store.dump()])
            assert dumped == [("conversation", "conv_1", b'{"c":1}', [("msg_1", b'{"i":1}'), ("msg_2", b'{"i":2}')]),
                              ("response", "resp_1", b'{"r":1}', [])], url
        finally:
            await store.close()


async def test_bad_import_lines_are_one_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "response", "id": "resp_1", "ttl": 60, "record": {}}\nnot json\n')
    status, out = await run_cli("store", "import", "--store", f"sqlite:{tmp_path / 'x.db'}", str(bad))
    assert status == 2 and "line 2" in out and "Traceback" not in out, out
    status, out = await run_cli("store", "export", "--store", "sqlite:/dev/null/x.db")
    assert status == 2 and "Traceback" not in out, out
