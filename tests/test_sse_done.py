"""`server.sse_done`: `data: [DONE]` after the terminal event, on every SSE stream the gateway writes.

Over real servers: the gateway over the scripted upstream, read raw (aiohttp) and by the openai SDK.
The live stream and the background one (created with stream=true, or resumed with GET ?stream=true)
end alike: both go through `EventStream.finish`.
"""
from __future__ import annotations

from typing import Any

import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError

from .conftest import assert_valid_stream
from .helpers import events_of, post_stream, read_stream, sdk
from .scripted_upstream import Reply, chunk, paced_reply, sse, text_reply

openai = pytest.importorskip("openai")

DONE = b"data: [DONE]\n\n"


def assert_ending(raw: bytes, done: bool) -> None:
    """The stream validates; with `done` its last frame is the one end marker, right after the terminal event."""
    assert_valid_stream(raw)
    frames = raw.split(b"\n\n")
    assert frames[-1] == b"", raw[-200:]
    terminal = frames[-3] if done else frames[-2]
    assert terminal.startswith(b"event: response.") and b'"type":"response.' in terminal, raw[-300:]
    assert events_of(raw)[-1]["type"] in ("response.completed", "response.incomplete", "response.failed")
    assert raw.count(DONE) == (1 if done else 0), raw[-200:]
    assert raw.endswith(DONE) is done


async def test_on_by_default(gateway, upstream, http):
    upstream.enqueue(text_reply("Hello", " there"))
    response, raw = await post_stream(http, gateway, {})
    assert response.status == 200
    assert_ending(raw, done=True)


@pytest.mark.parametrize("done", [True, False])
async def test_option_on_and_off(make_gateway, upstream, http, done):
    gateway = await make_gateway(sse_done=done)
    upstream.enqueue(text_reply("Hello"))
    _, raw = await post_stream(http, gateway, {})
    assert_ending(raw, done)


async def test_failed_stream_ends_with_the_marker_too(gateway, upstream, http):
    # The upstream stops mid-answer without finish_reason: the gateway's own response.failed, then [DONE].
    upstream.enqueue(Reply([sse(chunk({"role": "assistant", "content": "Hel"}), done=False)]))
    _, raw = await post_stream(http, gateway, {})
    assert events_of(raw)[-1]["type"] == "response.failed"
    assert_ending(raw, done=True)


async def test_openai_sdk_strict_reads_past_the_marker(gateway, upstream):
    base = str(gateway.make_url("")).rstrip("/")
    async with sdk(base) as client:
        upstream.enqueue(text_reply("Hello", " there"))
        events = [e async for e in await client.responses.create(model="scripted", input="hi", stream=True)]
        assert events[-1].type == "response.completed" and events[-1].response.output_text == "Hello there"
        upstream.enqueue(text_reply("Hi", " again"))
        async with client.responses.stream(model="scripted", input="hi") as stream:
            helper_events = [e async for e in stream]
            final = await stream.get_final_response()
        assert helper_events[-1].type == "response.completed" and final.output_text == "Hi again"


@pytest.mark.parametrize("done", [True, False])
async def test_background_stream_and_its_resume_end_like_a_live_stream(make_gateway, upstream, http, done):
    gateway = await make_gateway(sse_done=done)
    base = str(gateway.make_url("")).rstrip("/")
    upstream.enqueue(paced_reply("a ", "b ", "c ", gap=0.05))
    body: dict[str, Any] = {"model": "scripted", "input": "count", "stream": True, "background": True}
    status, live = await read_stream(http, f"{base}/v1/responses", json=body)
    assert status == 200
    assert_ending(live, done)
    response_id = events_of(live)[0]["response"]["id"]
    status, resumed = await read_stream(http, f"{base}/v1/responses/{response_id}?stream=true")
    assert status == 200 and resumed == live
    cut = events_of(live)[3]["sequence_number"]
    _, tail = await read_stream(http, f"{base}/v1/responses/{response_id}?stream=true&starting_after={cut}")
    assert tail.endswith(DONE) is done and live.endswith(tail)
    async with sdk(base) as client:  # the SDK's resume, strict
        events = [e async for e in await client.responses.retrieve(response_id, stream=True, starting_after=cut)]
    assert events[-1].type == "response.completed" and events[-1].response.output_text == "a b c "


@pytest.mark.parametrize(("value", "expected"), [("false", False), (True, True), ("0", False)])
def test_config_key(value, expected):
    assert parse_config({"server": {"sse_done": value}}).server.sse_done is expected


def test_config_key_rejects_a_non_boolean():
    with pytest.raises(ConfigError, match="server.sse_done"):
        parse_config({"server": {"sse_done": "sometimes"}})
