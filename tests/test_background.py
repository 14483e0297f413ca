"""Background responses over real servers: the openai SDK against the gateway over the scripted upstream."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from .conftest import assert_valid_stream
from .helpers import events_of, read_stream, sdk
from .scripted_upstream import Reply, chunk, paced_reply, sse, usage

openai = pytest.importorskip("openai")

WORDS = [f"w{i} " for i in range(30)]


def url_of(gateway: Any) -> str:
    return str(gateway.make_url("")).rstrip("/")


async def test_create_returns_at_once_then_retrieve_polls_to_completed(make_gateway, upstream, store_url):
    gateway = await make_gateway(store={"url": store_url})
    async with sdk(url_of(gateway)) as client:
        await client.responses.create(model="scripted", input="warm up")  # the SDK builds its models once
        upstream.enqueue(paced_reply(*WORDS[:10], gap=0.2))  # two seconds upstream
        started = time.monotonic()
        created = await client.responses.create(model="scripted", input="slow", background=True)
        assert time.monotonic() - started < 0.3
        assert (created.status, created.background, created.output) == ("queued", True, [])
        seen = set()
        while (polled := await client.responses.retrieve(created.id)).status not in ("completed", "failed"):
            seen.add(polled.status)
            await asyncio.sleep(0.1)
        assert polled.status == "completed" and polled.output_text == "".join(WORDS[:10])
        assert polled.background is True and "in_progress" in seen
        assert time.monotonic() - started > 1.5


async def test_background_needs_store_and_streams_only_when_created_with_stream(make_gateway, upstream, http):
    gateway = await make_gateway()
    async with sdk(url_of(gateway)) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.create(model="scripted", input="x", background=True, store=False)
        assert info.value.param == "background" and "store=true" in info.value.message
        plain = await client.responses.create(model="scripted", input="x")
        quiet = await client.responses.create(model="scripted", input="x", background=True)
        for response_id in (plain.id, quiet.id):
            status, body = await read_stream(http, f"{url_of(gateway)}/v1/responses/{response_id}?stream=true")
            assert status == 400 and b"created it with stream=true" in body
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.cancel(plain.id)
        assert "background=true" in info.value.message
        with pytest.raises(openai.NotFoundError):
            await client.responses.cancel("resp_unknown")


async def test_stream_resumes_exactly_after_a_drop(make_gateway, upstream, http, store_url):
    upstream.enqueue(paced_reply(*WORDS, gap=0.03))
    gateway = await make_gateway(store={"url": store_url})
    base = url_of(gateway)
    body = {"model": "scripted", "input": "count", "stream": True, "background": True}
    status, head = await read_stream(http, f"{base}/v1/responses", limit=8, json=body)
    assert status == 200
    head_events = events_of(head)
    assert [e["type"] for e in head_events[:3]] == ["response.created", "response.queued", "response.in_progress"]
    assert head_events[0]["response"]["status"] == "queued" and head_events[0]["response"]["background"] is True
    response_id, cut = head_events[0]["response"]["id"], head_events[-1]["sequence_number"]
    async with sdk(base) as client:  # the client left; the run goes on
        resumed = [e async for e in await client.responses.retrieve(response_id, stream=True, starting_after=cut)]
        assert [e.sequence_number for e in resumed] == list(range(cut + 1, cut + 1 + len(resumed)))
        assert resumed[-1].type == "response.completed"
        text = "".join(e.delta for e in [*map(_obj, head_events), *resumed] if e.type == "response.output_text.delta")
        assert text == "".join(WORDS) == resumed[-1].response.output_text
        # The SDK's own resume: GET without starting_after, dropping <= cut itself.
        async with client.responses.stream(response_id=response_id, starting_after=cut) as stream:
            tail = [e async for e in stream]
            final = await stream.get_final_response()
        assert [e.sequence_number for e in tail] == [e.sequence_number for e in resumed]
        assert final.output_text == "".join(WORDS)
    status, full = await read_stream(http, f"{base}/v1/responses/{response_id}?stream=true&include_obfuscation=false")
    assert status == 200 and events_of(full)[0]["type"] == "response.created"
    assert assert_valid_stream(full)["text"] == "".join(WORDS)
    assert full.startswith(head)  # byte for byte what the first client saw
    _, resumed_raw = await read_stream(http, f"{base}/v1/responses/{response_id}?stream=true&starting_after={cut}")
    assert head + resumed_raw == full


async def test_reads_of_many_deltas_are_logged_and_stored_exactly(make_gateway, upstream, http, store_url):
    # Whole reads of deltas: the fast path hands the sinks a FastBatch (the middle read) or a Joined
    # holding one (the first and last), which the event log and the store recorder take like a list.
    words = [f"x{i} " for i in range(40)]
    deltas = [chunk({"content": w}) for w in words]
    first = sse(chunk({"role": "assistant", "content": ""}), *deltas[:10], done=False)
    last = sse(*deltas[30:], chunk({}, finish="stop"), chunk(choices=False, usage=usage()))
    upstream.enqueue(Reply([first, 0.1, sse(*deltas[10:30], done=False), 0.1, last]))
    gateway = await make_gateway(store={"url": store_url})
    base = url_of(gateway)
    body = {"model": "scripted", "input": "count", "stream": True, "background": True}
    status, live = await read_stream(http, f"{base}/v1/responses", json=body)
    assert status == 200 and assert_valid_stream(live)["text"] == "".join(words)
    response_id = events_of(live)[0]["response"]["id"]
    status, logged = await read_stream(http, f"{base}/v1/responses/{response_id}?stream=true")
    assert status == 200 and logged == live
    async with sdk(base) as client:
        stored = await client.responses.retrieve(response_id)
    assert stored.status == "completed" and stored.output_text == "".join(words)


def _obj(event: dict[str, Any]) -> Any:
    return type("E", (), {"type": event["type"], "delta": event.get("delta")})


async def test_cancel_closes_the_upstream_within_a_second(make_gateway, upstream, http, store_url):
    upstream.enqueue(paced_reply(*WORDS * 10, gap=0.05))  # fifteen seconds
    gateway = await make_gateway(store={"url": store_url})
    base = url_of(gateway)
    async with sdk(base) as client:
        created = await client.responses.create(model="scripted", input="long", background=True, stream=True)
        async for event in created:
            if event.type == "response.created":
                response_id = event.response.id
            if event.type == "response.output_text.delta":
                break
        await created.close()
        started = time.monotonic()
        cancelled = await client.responses.cancel(response_id)
        while upstream.disconnects == 0 and time.monotonic() - started < 2:
            await asyncio.sleep(0.01)
        assert upstream.disconnects == 1 and time.monotonic() - started < 1.0
        assert cancelled.status == "cancelled" and cancelled.completed_at is None
        assert (await client.responses.cancel(response_id)).model_dump() == cancelled.model_dump()
        assert (await client.responses.retrieve(response_id)).status == "cancelled"
        status, replay = await read_stream(http, f"{base}/v1/responses/{response_id}?stream=true")
        assert status == 200 and events_of(replay)[-1]["type"] == "response.failed"
        assert events_of(replay)[-1]["response"]["status"] == "cancelled"
        done = await client.responses.create(model="scripted", input="quick", background=True)
        while (done := await client.responses.retrieve(done.id)).status != "completed":
            await asyncio.sleep(0.05)
        assert (await client.responses.cancel(done.id)).model_dump() == done.model_dump()


async def test_cancel_of_a_queued_response(make_gateway, upstream):
    upstream.enqueue(paced_reply(*WORDS, gap=0.1))
    gateway = await make_gateway(max_concurrent_streams=1)
    async with sdk(url_of(gateway)) as client:
        running = await client.responses.create(model="scripted", input="a", background=True)
        waiting = await client.responses.create(model="scripted", input="b", background=True)
        assert (await client.responses.retrieve(waiting.id)).status == "queued"
        cancelled = await client.responses.cancel(waiting.id)
        assert cancelled.status == "cancelled"
        assert (await client.responses.cancel(running.id)).status == "cancelled"
    assert len(upstream.requests) == 1


async def test_a_queued_run_logs_under_its_own_request_id(make_gateway, upstream, log_capture):
    # The second run starts when the first ends, from the first one's task: its log lines still name its request.
    lines = log_capture("info")
    upstream.responder = lambda body: paced_reply(*WORDS[:3], gap=0.05)
    gateway = await make_gateway(max_concurrent_streams=1, log_level="info")
    async with sdk(url_of(gateway)) as client:
        created = [await client.responses.create(model="scripted", input=name, background=True,
                                                 extra_headers={"X-Request-ID": name}) for name in ("bg-a", "bg-b")]
        for response in created:
            while (response := await client.responses.retrieve(response.id)).status != "completed":
                await asyncio.sleep(0.05)
    finished = {line["response_id"]: line["request_id"] for line in lines() if line["event"] == "response.finished"}
    assert [finished[response.id] for response in created] == ["bg-a", "bg-b"]


async def test_queue_limit_answers_429_and_queued_runs_start_when_a_slot_frees(make_gateway, upstream):
    upstream.responder = lambda body: paced_reply(*WORDS[:5], gap=0.1)
    gateway = await make_gateway(max_concurrent_streams=2, max_queued_background=1)
    async with sdk(url_of(gateway)) as client:
        created = [await client.responses.create(model="scripted", input=str(i), background=True) for i in range(3)]
        with pytest.raises(openai.RateLimitError):
            await client.responses.create(model="scripted", input="x", background=True)
        assert (await client.responses.retrieve(created[2].id)).status == "queued"
        for response in created:
            while (response := await client.responses.retrieve(response.id)).status != "completed":
                await asyncio.sleep(0.05)
            assert response.output_text == "".join(WORDS[:5])


async def test_event_log_bound_run_finishes_resume_is_410(make_gateway, upstream, http):
    upstream.enqueue(paced_reply(*WORDS, gap=0.01))
    gateway = await make_gateway(store={"max_event_log_bytes": 3000})
    base = url_of(gateway)
    status, raw = await read_stream(http, f"{base}/v1/responses", json={"model": "scripted", "input": "x",
                                                                        "stream": True, "background": True})
    events = events_of(raw)
    assert status == 200 and events[-1]["type"] == "response.completed"  # the live follower still ends
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "".join(WORDS)
    response_id = events[0]["response"]["id"]
    status, body = await read_stream(http, f"{base}/v1/responses/{response_id}?stream=true&starting_after=3")
    assert status == 410 and b"store.max_event_log_bytes" in body
    async with http.get(f"{base}/v1/responses/{response_id}", headers={"Authorization": "Bearer sk-alice"}) as response:
        assert (await response.json())["status"] == "completed"


@pytest.mark.parametrize("query", ["stream=true&starting_after=-1", "stream=true&starting_after=x",
                                   "starting_after=%5B%5D", "starting_after=1&starting_after=2", "starting_after=%C2%B2"])
async def test_a_malformed_starting_after_is_400_with_or_without_stream(make_gateway, upstream, http, query):
    gateway = await make_gateway(store={"url": "memory:"})
    base = url_of(gateway)
    status, body = await read_stream(http, f"{base}/v1/responses", json={"model": "scripted", "input": "x",
                                                                        "background": True})
    response_id = orjson.loads(body)["id"]
    async with http.get(f"{base}/v1/responses/{response_id}?{query}",
                        headers={"Authorization": "Bearer sk-alice"}) as response:
        error = (await response.json())["error"]
    assert response.status == 400 and error["param"] == "starting_after"


async def test_hundreds_of_background_streams_lose_nothing(make_gateway, upstream, http):
    upstream.responder = lambda body: paced_reply(*[f"{body['messages'][-1]['content']}-{i} " for i in range(10)],
                                                   gap=0.05)
    gateway = await make_gateway(store={"url": "memory:"})
    base = url_of(gateway)
    count = 300

    async def one(i: int) -> tuple[int, bytes]:
        return await read_stream(http, f"{base}/v1/responses", json={"model": "scripted", "input": f"s{i}",
                                                                     "stream": True, "background": True})

    results = await asyncio.gather(*(one(i) for i in range(count)))
    for i, (status, raw) in enumerate(results):
        assert status == 200
        assert assert_valid_stream(raw)["text"] == "".join(f"s{i}-{k} " for k in range(10))


async def test_shutdown_ends_running_and_queued_background_runs(make_gateway, upstream, tmp_path):
    upstream.responder = lambda body: paced_reply(*WORDS * 10, gap=0.05)
    store_url = f"sqlite:{tmp_path / 'gateway.db'}"
    gateway = await make_gateway(max_concurrent_streams=1, store={"url": store_url})
    async with sdk(url_of(gateway)) as client:
        running = await client.responses.create(model="scripted", input="a", background=True)
        queued = await client.responses.create(model="scripted", input="b", background=True)
        while (await client.responses.retrieve(running.id)).status != "in_progress":
            await asyncio.sleep(0.05)
    await gateway.close()  # shutdown_grace is 0.5 s in the tests
    from gateway.store import open_store_url
    store = open_store_url(store_url)
    await store.open()
    try:
        found = await store.get_responses([running.id, queued.id])
        for response_id in (running.id, queued.id):
            response = orjson.loads(found[response_id])["response"]
            assert response["status"] == "failed" and response["error"]["code"] == "server_shutting_down"
    finally:
        await store.close()
