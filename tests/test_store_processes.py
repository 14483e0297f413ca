"""State across processes: two gateways on one Redis, restarts of the gateway (SQLite) and of Redis itself."""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config

from .conftest import ROOT, free_port, gateway_process
from .scripted_upstream import Reply, chunk, sse, usage

openai = pytest.importorskip("openai")
SCALE_OUT = ROOT / "deploy" / "scale-out.yaml"


def sdk(url: str) -> Any:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-alice", max_retries=0, timeout=30,
                              _strict_response_validation=True)


async def test_two_processes_on_one_redis(upstream, redis_url):
    """The README's scale-out config, twice: what A stored, B reads and continues (and the reverse)."""
    env = {"GATEWAY_STORE_URL": redis_url, "UPSTREAM_BASE_URL": upstream.url}
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
