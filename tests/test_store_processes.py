"""State across processes: two gateways on one shared store (Redis, PostgreSQL), restarts of the gateway (SQLite)
and of Redis itself."""
from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config

from .conftest import ROOT, free_port, gateway_process
from .helpers import events_of, read_stream, sdk
from .scripted_upstream import Reply, chunk, paced_reply, sse, usage

openai = pytest.importorskip("openai")
SCALE_OUT = ROOT / "deploy" / "scale-out.yaml"


@pytest.fixture(params=["redis", "postgres", "hybrid"])
def shared_store(request: Any) -> dict[str, str]:
    """The environment for deploy/scale-out.yaml naming each shared store in turn: the real Redis, the real
    PostgreSQL, PostgreSQL with the event logs in Redis (a key prefix and a schema of the test's own)."""
    if request.param == "hybrid":
        return {"GATEWAY_STORE_URL": request.getfixturevalue("postgres_url"),
                "GATEWAY_STORE_EVENTS_URL": request.getfixturevalue("redis_url")}
    return {"GATEWAY_STORE_URL": request.getfixturevalue(f"{request.param}_url")}


async def test_two_processes_on_one_shared_store(upstream, shared_store):
    """The README's scale-out config, twice: what A stored, B reads and continues (and the reverse)."""
    env = {**shared_store, "UPSTREAM_BASE_URL": upstream.url}
    async with gateway_process("--config", str(SCALE_OUT), env=env) as a, \
            gateway_process("--config", str(SCALE_OUT), env=env) as b, sdk(a.url) as on_a, sdk(b.url) as on_b:
        first = await on_a.responses.create(model="scripted", input="remember 42")
        assert (await on_b.responses.retrieve(first.id)).model_dump() == first.model_dump()
        second = await on_b.responses.create(model="scripted", input="what number?", previous_response_id=first.id)
        assert [m["content"] for m in upstream.requests[-1].body["messages"]] == ["remember 42", "Hello",
                                                                                  "what number?"]
        conversation = await on_b.conversations.create(items=[{"role": "user", "content": "hi"}])
        await on_a.responses.create(model="scripted", input="again", conversation=conversation.id)
        items = await on_b.conversations.items.list(conversation.id, order="asc")
        assert [item.role for item in items.data] == ["user", "user", "assistant"]
        await on_a.responses.delete(second.id)
        with pytest.raises(openai.NotFoundError):
            await on_b.responses.retrieve(second.id)


def test_scale_out_example_config_loads():
    config = load_config(SCALE_OUT)
    assert config.store.url.startswith("redis://") and config.store.ttl == 30 * 86400


async def test_sqlite_survives_a_gateway_restart(upstream, tmp_path):
    store = f"sqlite:{tmp_path / 'state' / 'gateway.db'}"
    args = ("--upstream-url", upstream.url, "--store", store)
    async with gateway_process(*args) as first_run, sdk(first_run.url) as client:
        created = await client.responses.create(model="scripted", input="before the restart")
        conversation = await client.conversations.create(metadata={"k": "v"})
    assert first_run.returncode == 0
    async with gateway_process(*args) as second_run, sdk(second_run.url) as client:
        assert (await client.responses.retrieve(created.id)).output_text == "Hello"
        assert (await client.conversations.retrieve(conversation.id)).metadata == {"k": "v"}
        await client.responses.create(model="scripted", input="after", previous_response_id=created.id)
    assert [m["content"] for m in upstream.requests[-1].body["messages"]] == ["before the restart", "Hello", "after"]


# ---------------------------------------------------------------------------------------- a Redis of our own
@contextlib.asynccontextmanager
async def own_redis(directory: Path, port: int) -> Any:
    """A redis-server with the README's durable settings (appendonly yes, appendfsync always)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed: the Redis restart and outage tests need their own server")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
                             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            await asyncio.sleep(0.05)
        yield proc
    finally:
        proc.kill()
        proc.wait()


async def test_acknowledged_response_survives_a_redis_crash(make_gateway, upstream, tmp_path):
    port = free_port()
    gateway = await make_gateway(store={"url": f"redis://127.0.0.1:{port}/0"})
    async with own_redis(tmp_path, port) as redis_proc, sdk(str(gateway.make_url(""))) as client:
        created = await client.responses.create(model="scripted", input="keep me")
        redis_proc.kill()  # SIGKILL: no shutdown save
        redis_proc.wait()
    async with own_redis(tmp_path, port), sdk(str(gateway.make_url(""))) as client:
        assert (await client.responses.retrieve(created.id)).output_text == "Hello"


async def test_redis_outage_mid_stream_then_recovery(make_gateway, upstream, tmp_path):
    port = free_port()
    gateway = await make_gateway(store={"url": f"redis://127.0.0.1:{port}/0"})
    slow = Reply([sse(chunk({"role": "assistant", "content": "a"}), done=False), 0.5,
                  sse(chunk({"content": "b"}), chunk({}, finish="stop"), chunk(choices=False, usage=usage()))])
    async with own_redis(tmp_path, port) as redis_proc:
        upstream.enqueue(slow)
        async with openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key="k", max_retries=0) as client:
            stream = await client.responses.create(model="scripted", input="x", stream=True)
            events = []
            async for event in stream:
                events.append(event)
                if event.type == "response.output_text.delta" and len(events) < 6:
                    redis_proc.kill()
            assert events[-1].type == "response.failed"
            assert events[-1].response.error.code == "store_unavailable"
            stateless = await client.responses.create(model="scripted", input="x", store=False)
            assert stateless.status == "completed"
            with pytest.raises(openai.InternalServerError) as info:
                await client.responses.create(model="scripted", input="x")
            assert info.value.status_code == 503
            requests_while_down = len(upstream.requests)
    assert requests_while_down == 2  # the stateful request was refused before any upstream work
    async with own_redis(tmp_path, port), sdk(str(gateway.make_url(""))) as client:
        assert (await client.responses.create(model="scripted", input="x")).status == "completed"


# ---------------------------------------------------------------------------------------- background responses
WORDS = [f"w{i} " for i in range(40)]


async def wait_for_status(client: Any, response_id: str, wanted: str, within: float) -> float:
    """Poll until the response has status `wanted`; the seconds it took (fails after `within`)."""
    started = asyncio.get_running_loop().time()
    while (status := (await client.responses.retrieve(response_id)).status) != wanted:
        elapsed = asyncio.get_running_loop().time() - started
        assert elapsed < within, f"still {status} after {elapsed:.1f}s"
        await asyncio.sleep(0.05)
    return asyncio.get_running_loop().time() - started


async def events_in_redis(url: str, response_id: str) -> int:
    import redis.asyncio as aioredis

    from gateway.store.redis import split_prefix
    redis_url, prefix = split_prefix(url)
    client = aioredis.from_url(redis_url)
    try:
        return await client.xlen(f"{prefix}e:{response_id}")
    finally:
        await client.aclose()


async def test_background_started_on_a_resumed_and_cancelled_on_b(upstream, shared_store, http):
    env = {**shared_store, "UPSTREAM_BASE_URL": upstream.url}
    async with gateway_process("--config", str(SCALE_OUT), env=env) as a, \
            gateway_process("--config", str(SCALE_OUT), env=env) as b, sdk(a.url) as on_a, sdk(b.url) as on_b:
        upstream.enqueue(paced_reply(*WORDS, gap=0.03))
        body = {"model": "scripted", "input": "count", "stream": True, "background": True}
        status, head = await read_stream(http, f"{a.url}/v1/responses", limit=8, json=body)
        assert status == 200
        response_id, cut = events_of(head)[0]["response"]["id"], events_of(head)[-1]["sequence_number"]
        status, tail = await read_stream(http, f"{b.url}/v1/responses/{response_id}?stream=true&starting_after={cut}")
        assert [e["sequence_number"] for e in events_of(tail)] == list(range(cut + 1, cut + 1 + len(events_of(tail))))
        assert events_of(tail)[-1]["type"] == "response.completed"
        _, full = await read_stream(http, f"{b.url}/v1/responses/{response_id}?stream=true")
        assert head + tail == full
        assert (await on_a.responses.retrieve(response_id)).output_text == "".join(WORDS)
        if "GATEWAY_STORE_EVENTS_URL" in shared_store:   # the hybrid: the event log is a Redis stream
            assert await events_in_redis(shared_store["GATEWAY_STORE_EVENTS_URL"], response_id) == len(events_of(full))

        upstream.enqueue(paced_reply(*WORDS * 10, gap=0.05))
        created = await on_a.responses.create(model="scripted", input="long", background=True)
        await wait_for_status(on_a, created.id, "in_progress", within=5)
        while upstream.bytes_written == 0 or len(upstream.requests) < 2:
            await asyncio.sleep(0.01)
        disconnects, started = upstream.disconnects, asyncio.get_running_loop().time()
        cancelled = await on_b.responses.cancel(created.id)
        while upstream.disconnects == disconnects and asyncio.get_running_loop().time() - started < 3:
            await asyncio.sleep(0.01)
        assert asyncio.get_running_loop().time() - started < 1.0, "A closed the upstream late (or never)"
        assert cancelled.status == "cancelled" and cancelled.completed_at is None
        assert (await on_a.responses.retrieve(created.id)).status == "cancelled"


async def test_kill_9_of_the_running_instance_b_ends_it_within_the_lease(upstream, shared_store, http):
    lease = 1.0
    env = {**shared_store, "UPSTREAM_BASE_URL": upstream.url, "GATEWAY_BACKGROUND_LEASE": str(lease)}
    async with gateway_process("--config", str(SCALE_OUT), env=env) as a, \
            gateway_process("--config", str(SCALE_OUT), env=env) as b, sdk(b.url) as on_b:
        upstream.enqueue(paced_reply(*WORDS * 10, gap=0.05))
        body = {"model": "scripted", "input": "long", "stream": True, "background": True}
        status, head = await read_stream(http, f"{a.url}/v1/responses", limit=6, json=body)
        response_id, cut = events_of(head)[0]["response"]["id"], events_of(head)[-1]["sequence_number"]
        a.proc.kill()
        await a.proc.wait()
        # lease + B's reaping interval (lease / 2) + a poll tick, with room for a loaded machine
        took = await wait_for_status(on_b, response_id, "failed", within=lease * 1.5 + 2.5)
        failed = await on_b.responses.retrieve(response_id)
        assert "lease lapsed" in failed.error.message
        status, tail = await read_stream(http, f"{b.url}/v1/responses/{response_id}?stream=true&starting_after={cut}")
        assert status == 200 and events_of(tail)[-1]["type"] == "response.failed"
        print(f"kill -9: B ended the run as failed {took:.2f}s after (lease {lease}s)")


async def test_sqlite_next_start_ends_a_background_run_of_a_killed_gateway(upstream, tmp_path):
    config = tmp_path / "gateway.yaml"
    config.write_text(f"store:\n  url: sqlite:{tmp_path / 'gateway.db'}\n  background_lease: 1\n")
    args = ("--config", str(config), "--upstream-url", upstream.url)
    upstream.enqueue(paced_reply(*WORDS * 10, gap=0.05))
    async with gateway_process(*args) as first_run, sdk(first_run.url) as client:
        created = await client.responses.create(model="scripted", input="long", background=True)
        await wait_for_status(client, created.id, "in_progress", within=5)
        first_run.proc.kill()
        await first_run.proc.wait()
    async with gateway_process(*args) as second_run, sdk(second_run.url) as client:
        await wait_for_status(client, created.id, "failed", within=5)
