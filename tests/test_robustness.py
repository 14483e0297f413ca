"""Defects found from outside: late timeouts, leaked addresses, streams without an end, leaks, hangs.

Each test here failed on the code before its fix.
"""
from __future__ import annotations

import asyncio
import gc
import json

import aiohttp
import structlog

from gateway.pipeline import Run
from gateway.upstream import UpstreamStream

from .conftest import assert_valid_stream, free_port
from .helpers import post_stream
from .scripted_upstream import Reply, chunk, sse, text_reply, usage


def _json_body_in_pieces(document: dict, pieces: int, **headers: str) -> Reply:
    """A JSON answer written in `pieces` network writes with pauses, so the gateway reads it in several."""
    body = json.dumps(document).encode()
    step = -(-len(body) // pieces)
    steps: list = []
    for i in range(0, len(body), step):
        steps += [body[i:i + step], 0.05]
    return Reply(steps, headers={"Content-Type": "application/json", **headers})


# ------------------------------------------------------------------------------------- timeouts
async def test_idle_timeout_fires_on_time_with_the_shipped_first_byte_timeout(upstream, make_gateway, http):
    """first_byte_timeout (600 s, as shipped) far above idle_timeout: a stall after three chunks ends
    after about idle_timeout, not when the first-byte deadline passes."""
    gateway = await make_gateway(keepalive_interval=5, upstream={"first_byte_timeout": 600.0, "idle_timeout": 0.3})
    opening = sse(chunk({"role": "assistant", "content": "a"}), chunk({"content": "b"}), chunk({"content": "c"}),
                  done=False)
    upstream.enqueue(Reply([opening], end="hang"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(10):
        response, raw = await post_stream(http, gateway, {})
    elapsed = loop.time() - started
    result = assert_valid_stream(raw)
    assert result["status"] == "failed" and result["error"]["code"] == "upstream_timeout"
    assert result["text"] == "abc"
    assert elapsed < 3, elapsed


# ------------------------------------------------------------------------------------- addresses
async def test_unreachable_upstream_error_names_no_address(make_gateway, http):
    port = free_port()
    gateway = await make_gateway(upstream={"base_url": f"http://127.0.0.1:{port}/v1?token=SECRET-T"})
    with structlog.testing.capture_logs() as logs:
        for path, body in (("/v1/responses", {"model": "m", "input": "hi", "stream": True}),
                           ("/v1/responses", {"model": "m", "input": "hi"}),
                           ("/v1/chat/completions", {"model": "m", "messages": []})):
            async with http.post(gateway.make_url(path), json=body, headers={"X-Request-ID": "unreach-1"}) as r:
                assert r.status == 502
                error = (await r.json())["error"]
            assert error["code"] == "upstream_unavailable"
            assert "127.0.0.1" not in error["message"] and str(port) not in error["message"]
            assert "SECRET" not in error["message"] and "http" not in error["message"]
            assert "unreach-1" in error["message"]
    logged = [entry for entry in logs if entry["event"] == "upstream.unreachable"]
    assert len(logged) == 3 and all(f"127.0.0.1:{port}" in entry["url"] for entry in logged)


# ------------------------------------------------------------------------------------- terminal events
async def test_huge_usage_counts_still_end_the_stream(upstream, gateway, http):
    huge = {"prompt_tokens": 9223372036854775808, "completion_tokens": 18446744073709551615,
            "total_tokens": 3}
    for _ in range(2):
        upstream.enqueue(text_reply("Hi", use=huge))
    with structlog.testing.capture_logs() as logs:
        response, raw = await post_stream(http, gateway, {})
        result = assert_valid_stream(raw)
        assert result["status"] == "completed" and result["text"] == "Hi"
        async with http.post(gateway.make_url("/v1/responses"), json={"model": "m", "input": "hi"}) as r:
            assert r.status == 200
            final = await r.json()
    assert final["status"] == "completed"
    assert final["usage"]["input_tokens"] == 0 and final["usage"]["output_tokens"] == 0
    warnings = [entry["warning"] for entry in logs if entry["event"] == "response.warning"]
    assert any("prompt_tokens" in warning for warning in warnings), warnings


def _deep(levels: int) -> dict:
    value: dict = {"x": 1}
    for _ in range(levels):
        value = {"a": value}
    return value


async def test_deeply_nested_finish_reason_is_a_protocol_error(upstream, make_gateway, http, log_capture):
    lines = log_capture("info")  # the real renderer: the `response.finished` line must encode
    gateway = await make_gateway(log_level="info")
    for _ in range(2):
        upstream.enqueue(Reply([sse(chunk({"role": "assistant", "content": "Hi"}), chunk({}, finish=_deep(300)))]))
    response, raw = await post_stream(http, gateway, {})
    result = assert_valid_stream(raw)
    assert result["error"]["code"] == "upstream_protocol_error"
    async with http.post(gateway.make_url("/v1/responses"), json={"model": "m", "input": "hi"}) as r:
        assert r.status == 502
        assert (await r.json())["error"]["code"] == "upstream_protocol_error"
    logged = lines()
    finished = [line for line in logged if line["event"] == "response.finished"]
    assert [line["error_code"] for line in finished] == ["upstream_protocol_error"] * 2
    assert not [line for line in logged if line["level"] == "error"]


async def test_deeply_nested_provider_metadata_loses_no_event(upstream, gateway, http):
    call = {"index": 0, "id": "call_1", "type": "function", "extra_content": _deep(300),
            "function": {"name": "f", "arguments": "{}"}}
    upstream.enqueue(Reply([sse(chunk({"role": "assistant", "content": "thinking aloud"}),
                                chunk({"tool_calls": [call]}), chunk({}, finish="tool_calls"))]))
    with structlog.testing.capture_logs() as logs:
        response, raw = await post_stream(http, gateway, {})
    result = assert_valid_stream(raw)  # sequence numbers without gaps, every item added is done
    assert result["status"] == "completed"
    assert result["text"] == "thinking aloud"
    assert [call["name"] for call in result["tool_calls"]] == ["f"]
    warnings = [entry["warning"] for entry in logs if entry["event"] == "response.warning"]
    assert any("extra_content" in warning for warning in warnings), warnings


# ------------------------------------------------------------------------------------- reading bodies
async def test_json_answer_in_several_segments_is_translated(upstream, gateway, http):
    document = {"id": "x", "object": "chat.completion", "model": "scripted", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "word " * 2000}, "finish_reason": "stop"}],
        "usage": usage()}
    body = json.dumps(document).encode()
    upstream.enqueue(_json_body_in_pieces(document, 4),
                     _json_body_in_pieces(document, 3, **{"Content-Length": str(len(body))}))
    for _ in range(2):
        response, raw = await post_stream(http, gateway, {})
        assert response.status == 200, raw[:300]
        assert assert_valid_stream(raw)["text"] == "word " * 2000


async def test_error_body_in_two_segments_keeps_message_and_code(upstream, gateway, http):
    error = {"error": {"message": "the prompt is too long for this model, sorry " * 3, "type": "invalid_request_error",
                       "param": None, "code": "context_length_exceeded"}}
    reply = _json_body_in_pieces(error, 2)
    reply.status = 400
    upstream.enqueue(reply)
    async with http.post(gateway.make_url("/v1/responses"), json={"model": "m", "input": "hi"}) as response:
        assert response.status == 400
        got = (await response.json())["error"]
    assert got["message"] == error["error"]["message"]
    assert got["code"] == "context_length_exceeded"


async def test_error_body_that_stalls_is_answered_after_the_idle_timeout(upstream, make_gateway, http):
    """Reading a whole body must not wait forever (found by the fuzz once bodies were read to the end)."""
    gateway = await make_gateway(upstream={"idle_timeout": 0.3})
    upstream.enqueue(Reply([b"model runner crashed: "], status=500, headers={"Content-Type": "text/plain"},
                           end="hang"))
    async with asyncio.timeout(5):
        async with http.post(gateway.make_url("/v1/responses"), json={"model": "m", "input": "hi"}) as response:
            assert response.status == 500
            assert "model runner crashed" in (await response.json())["error"]["message"]


# ------------------------------------------------------------------------------------- passthrough
async def test_passthrough_cut_mid_body_closes_the_connection(upstream, gateway):
    upstream.enqueue(Reply([sse(chunk({"role": "assistant", "content": "partial"}), done=False), 0.05],
                           end="abort"))
    body = b'{"model": "m", "messages": [], "stream": true}'
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    with structlog.testing.capture_logs() as logs:
        try:
            async with asyncio.timeout(5):  # the connection must close: no hang
                raw = await reader.read()
        finally:
            writer.close()
    assert raw.count(b"HTTP/1.1 ") == 1, raw
    assert raw.startswith(b"HTTP/1.1 200")
    assert b"partial" in raw
    assert not raw.endswith(b"0\r\n\r\n"), "a cut body must not be ended as if complete"
    assert any(entry["event"] == "passthrough.upstream_cut" for entry in logs)


async def test_passthrough_upstream_silent_mid_body_closes_the_connection(upstream, make_gateway, http):
    """Found by the fuzz: the passthrough had no idle timeout, so a stalled upstream hung its client."""
    gateway = await make_gateway(upstream={"idle_timeout": 0.3})
    upstream.enqueue(Reply([sse(chunk({"role": "assistant", "content": "partial"}), done=False)], end="hang"))
    async with asyncio.timeout(5):
        async with http.post(gateway.make_url("/v1/chat/completions"),
                             json={"model": "m", "messages": [], "stream": True}) as response:
            assert response.status == 200
            try:
                await response.read()
            except aiohttp.ClientPayloadError:
                pass  # the honest signal of a cut body
            else:
                raise AssertionError("a stalled body must not end as if complete")
    await asyncio.sleep(0.1)
    assert upstream.disconnects == 1


# ------------------------------------------------------------------------------------- memory
def _alive(kind: type) -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj) is kind)


async def test_idle_timeouts_leave_no_request_alive(upstream, make_gateway, http):
    gateway = await make_gateway(keepalive_interval=5, upstream={"idle_timeout": 0.05})
    timeouts = 10
    upstream.responder = lambda body: Reply([sse(chunk({"role": "assistant", "content": "a"}), done=False)],
                                            end="hang")
    for _ in range(timeouts):
        response, raw = await post_stream(http, gateway, {})
        assert assert_valid_stream(raw)["error"]["code"] == "upstream_timeout"
    await asyncio.sleep(0.1)  # let the handlers return
    assert _alive(Run) == 0
    assert _alive(UpstreamStream) == 0
