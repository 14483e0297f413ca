"""Faults and time: disconnects, silence, slow readers, refused and garbage upstreams, retries, limits."""
from __future__ import annotations

import asyncio
import json
import socket

import structlog

from .conftest import assert_valid_stream
from .helpers import post_stream
from .scripted_upstream import Reply, chunk, error_reply, sse, text_reply


def _finished(logs: list[dict]) -> dict:
    lines = [entry for entry in logs if entry["event"] == "response.finished"]
    assert len(lines) == 1, logs
    return lines[0]


async def _wait_for(predicate, timeout: float) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        assert loop.time() - start < timeout, "condition not met in time"
        await asyncio.sleep(0.01)
    return loop.time() - start


async def test_client_disconnect_closes_upstream_within_a_second(upstream, gateway, http):
    upstream.enqueue(Reply([sse(chunk({"role": "assistant", "content": "partial"}), done=False)], end="hang"))
    with structlog.testing.capture_logs() as logs:
        async with http.post(gateway.make_url("/v1/responses"),
                             json={"model": "m", "input": "hi", "stream": True}) as response:
            await response.content.readuntil(b"response.output_text.delta")
        elapsed = await _wait_for(lambda: upstream.disconnects == 1, 1.0)
        await _wait_for(lambda: any(e["event"] == "response.finished" for e in logs), 1.0)
    assert elapsed < 1.0
    assert _finished(logs)["client_disconnected"] is True


async def test_keepalive_comments_while_upstream_is_silent_before_first_byte(upstream, make_gateway, http):
    gateway = await make_gateway(keepalive_interval=0.1)
    upstream.enqueue(Reply([text_reply("late").steps[0]], delay_headers=0.45))
    response, raw = await post_stream(http, gateway, {})
    assert response.status == 200
    assert raw.count(b": ping") >= 2, raw[:300]
    assert assert_valid_stream(raw)["text"] == "late"


async def test_keepalive_comments_while_upstream_is_silent_mid_stream(upstream, make_gateway, http):
    gateway = await make_gateway(keepalive_interval=0.1)
    opening = sse(chunk({"role": "assistant", "content": "a"}), done=False)
    rest = sse(chunk({"content": "b"}), chunk({}, finish="stop"))
    upstream.enqueue(Reply([opening, 0.45, rest]))
    response, raw = await post_stream(http, gateway, {})
    assert raw.count(b": ping") >= 2
    assert assert_valid_stream(raw)["text"] == "ab"


async def test_idle_timeout_mid_stream_fails_and_closes_upstream(upstream, make_gateway, http):
    gateway = await make_gateway(keepalive_interval=0.1, upstream={"idle_timeout": 0.3})
    upstream.enqueue(Reply([sse(chunk({"role": "assistant", "content": "a"}), done=False)], end="hang"))
    response, raw = await post_stream(http, gateway, {})
    result = assert_valid_stream(raw)
    assert result["status"] == "failed"
    assert result["error"]["code"] == "upstream_timeout"
    assert result["text"] == "a"
    await _wait_for(lambda: upstream.disconnects == 1, 1.0)


async def test_first_byte_timeout_before_stream_is_504(upstream, make_gateway, http):
    gateway = await make_gateway(keepalive_interval=5, upstream={"first_byte_timeout": 0.2})
    upstream.enqueue(Reply([], delay_headers=2))
    response, raw = await post_stream(http, gateway, {})
    assert response.status == 504
    assert json.loads(raw)["error"]["code"] == "upstream_timeout"


async def test_first_byte_timeout_after_keepalive_started_is_failed(upstream, make_gateway, http):
    gateway = await make_gateway(keepalive_interval=0.1, upstream={"first_byte_timeout": 0.35})
    upstream.enqueue(Reply([], delay_headers=2))
    response, raw = await post_stream(http, gateway, {})
    assert response.status == 200
    result = assert_valid_stream(raw)
    assert result["error"]["code"] == "upstream_timeout"


async def test_slow_client_back_pressure_keeps_memory_flat(upstream, gateway):
    """A reader that stalls must pause the upstream, not grow a buffer in the gateway."""
    pieces = 12000
    body = sse(chunk({"role": "assistant", "content": ""}),
               *[chunk({"content": f"token-{i:05d} " + "x" * 2000}) for i in range(pieces)],
               chunk({}, finish="stop"))
    steps = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    upstream.enqueue(Reply(steps))
    request = json.dumps({"model": "m", "input": "hi", "stream": True}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port, limit=2 ** 20)
    writer.write(b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(request), request))
    await writer.drain()
    reader._transport.pause_reading()  # read nothing: the gateway must stop pulling from the upstream
    await asyncio.sleep(0.5)
    paused_at = upstream.bytes_written
    await asyncio.sleep(0.3)
    assert upstream.bytes_written == paused_at < len(body) / 2, (paused_at, len(body))
    assert _gateway_buffered(gateway) < 1024 * 1024
    reader._transport.resume_reading()
    raw = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    result = assert_valid_stream(_dechunk(payload))
    assert result["status"] == "completed"
    assert result["text"].count("token-") == pieces


def _gateway_buffered(gateway) -> int:
    """Bytes the gateway holds in its client-side transports' write buffers."""
    total = 0
    for protocol in gateway.runner.server.connections:
        if protocol.transport is not None:
            total += protocol.transport.get_write_buffer_size()
    return total


def _dechunk(payload: bytes) -> bytes:
    out, rest = [], payload
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2:]
    return b"".join(out)


async def test_upstream_refuses_connections_is_502(make_gateway, http, upstream):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    upstream.url = f"http://127.0.0.1:{port}/v1"
    gateway = await make_gateway()
    with structlog.testing.capture_logs() as logs:
        response, raw = await post_stream(http, gateway, {})
    assert response.status == 502
    error = json.loads(raw)["error"]
    assert error["code"] == "upstream_unavailable"
    assert "connection refused" in error["message"]
    assert str(port) not in error["message"]  # the address goes to the log line, not to the client
    assert any(str(port) in entry["url"] for entry in logs if entry["event"] == "upstream.unreachable")


async def test_upstream_resets_before_answer_is_502(upstream, gateway, http):
    upstream.enqueue(Reply([], end="abort"))
    response, raw = await post_stream(http, gateway, {})
    # Headers were sent, then the connection reset before any event: a clean failed stream.
    if response.status == 200:
        assert assert_valid_stream(raw)["status"] == "failed"
    else:
        assert response.status == 502
        assert json.loads(raw)["error"]["type"]


async def test_upstream_resets_mid_stream_is_failed(upstream, gateway, http):
    upstream.enqueue(Reply([sse(chunk({"role": "assistant", "content": "cut"}), done=False)], end="abort"))
    response, raw = await post_stream(http, gateway, {})
    result = assert_valid_stream(raw)
    assert result["status"] == "failed"
    assert result["error"]["code"] in ("upstream_disconnected", "upstream_truncated")
    assert result["text"] == "cut"


async def test_upstream_html_error_page_is_502(upstream, gateway, http):
    upstream.enqueue(Reply([b"<html><body>Bad Gateway</body></html>"], status=200,
                           headers={"Content-Type": "text/html"}))
    response, raw = await post_stream(http, gateway, {})
    assert response.status == 502
    assert "text/html" in json.loads(raw)["error"]["message"]


async def test_upstream_garbage_json_body_is_502(upstream, gateway, http):
    upstream.enqueue(Reply([b"{not json"], headers={"Content-Type": "application/json"}))
    response, raw = await post_stream(http, gateway, {})
    assert response.status == 502
    assert "invalid JSON" in json.loads(raw)["error"]["message"]


async def test_upstream_non_stream_json_answer_is_translated(upstream, gateway, http):
    completion = {"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "whole"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}
    upstream.enqueue(Reply([json.dumps(completion).encode()], headers={"Content-Type": "application/json"}))
    response, raw = await post_stream(http, gateway, {})
    result = assert_valid_stream(raw)
    assert (result["text"], result["status"], result["usage"]["total_tokens"]) == ("whole", "completed", 3)


async def test_retries_503_then_succeeds(upstream, make_gateway, http):
    gateway = await make_gateway(upstream={"retries": 2})
    upstream.enqueue(error_reply(503, "warming up"), error_reply(502, "again"), text_reply("third"))
    response, raw = await post_stream(http, gateway, {})
    assert assert_valid_stream(raw)["text"] == "third"
    assert len(upstream.requests) == 3


async def test_retries_exhausted_keeps_upstream_status(upstream, make_gateway, http):
    gateway = await make_gateway(upstream={"retries": 1})
    upstream.enqueue(error_reply(503, "busy"), error_reply(503, "still busy"))
    response, raw = await post_stream(http, gateway, {})
    assert response.status == 503
    assert json.loads(raw)["error"]["message"] == "still busy"
    assert len(upstream.requests) == 2


async def test_no_retry_on_400_or_after_first_byte(upstream, make_gateway, http):
    gateway = await make_gateway(upstream={"retries": 2})
    upstream.enqueue(error_reply(400, "bad"))
    response, _ = await post_stream(http, gateway, {})
    assert response.status == 400 and len(upstream.requests) == 1
    upstream.enqueue(Reply([sse(chunk({"role": "assistant", "content": "x"}), done=False)], end="abort"))
    response, raw = await post_stream(http, gateway, {})
    assert assert_valid_stream(raw)["status"] == "failed"
    assert len(upstream.requests) == 2


async def test_concurrency_limit_is_429_with_retry_after(upstream, make_gateway, http):
    gateway = await make_gateway(max_concurrent_streams=1)
    upstream.enqueue(Reply([sse(chunk({"role": "assistant", "content": "a"}), done=False), 0.5,
                            sse(chunk({}, finish="stop"))]))
    first = asyncio.create_task(post_stream(http, gateway, {}))
    await _wait_for(lambda: len(upstream.requests) == 1, 2)
    response, raw = await post_stream(http, gateway, {})
    assert response.status == 429
    assert response.headers["Retry-After"]
    assert json.loads(raw)["error"]["code"] == "rate_limit_exceeded"
    first_response, first_raw = await first
    assert assert_valid_stream(first_raw)["status"] == "completed"


async def test_non_streaming_failure_maps_to_http_status(upstream, make_gateway, http):
    gateway = await make_gateway(upstream={"idle_timeout": 0.2})
    upstream.enqueue(Reply([sse(chunk({"role": "assistant", "content": "a"}), done=False)], end="hang"))
    async with http.post(gateway.make_url("/v1/responses"), json={"model": "m", "input": "x"}) as response:
        body = await response.json()
    assert response.status == 504
    assert body["error"]["code"] == "upstream_timeout"


async def test_shutdown_ends_running_streams_with_failed(upstream, make_gateway, http):
    gateway = await make_gateway(shutdown_grace=0.2)
    upstream.enqueue(Reply([sse(chunk({"role": "assistant", "content": "a"}), done=False)], end="hang"))
    task = asyncio.create_task(post_stream(http, gateway, {}))
    await _wait_for(lambda: len(upstream.requests) == 1, 2)
    await asyncio.sleep(0.05)
    await gateway.app.shutdown()
    response, raw = await asyncio.wait_for(task, 5)
    result = assert_valid_stream(raw)
    assert result["status"] == "failed"
    assert result["error"]["code"] == "server_shutting_down"
    assert result["text"] == "a"


async def test_shutdown_lets_streams_finish_within_grace(upstream, make_gateway, http):
    gateway = await make_gateway(shutdown_grace=3)
    upstream.enqueue(Reply([sse(chunk({"role": "assistant", "content": "a"}), done=False), 0.3,
                            sse(chunk({"content": "b"}), chunk({}, finish="stop"))]))
    task = asyncio.create_task(post_stream(http, gateway, {}))
    await _wait_for(lambda: len(upstream.requests) == 1, 2)
    shutdown = asyncio.create_task(gateway.app.shutdown())
    await asyncio.sleep(0.05)
    late, late_raw = await post_stream(http, gateway, {})  # a keep-alive connection during the drain
    assert late.status == 503
    assert json.loads(late_raw)["error"]["code"] == "server_shutting_down"
    for path in ("/v1/responses/compact", "/v1/responses/input_tokens"):  # nothing new starts upstream
        async with http.post(gateway.make_url(path), json={"model": "m", "input": "x"}) as refused:
            assert refused.status == 503 and refused.headers["Retry-After"] == "1", path
            assert (await refused.json())["error"]["code"] == "server_shutting_down"
    assert len(upstream.requests) == 1
    response, raw = await asyncio.wait_for(task, 5)
    await shutdown
    assert assert_valid_stream(raw)["text"] == "ab"


async def test_shutdown_while_waiting_for_upstream_headers(upstream, make_gateway, http):
    gateway = await make_gateway(shutdown_grace=0.1, keepalive_interval=0.05)
    upstream.enqueue(Reply([], delay_headers=5))
    task = asyncio.create_task(post_stream(http, gateway, {}))
    await _wait_for(lambda: len(upstream.requests) == 1, 2)
    await asyncio.sleep(0.1)
    await gateway.app.shutdown()
    response, raw = await asyncio.wait_for(task, 5)
    assert assert_valid_stream(raw)["error"]["code"] == "server_shutting_down"


async def test_body_too_large_is_413(make_gateway, http):
    gateway = await make_gateway(max_body_bytes=1000)
    async with http.post(gateway.make_url("/v1/responses"),
                         json={"model": "m", "input": "x" * 5000}) as response:
        assert response.status == 413
        assert (await response.json())["error"]["message"]


async def test_unsupported_content_type_is_415(gateway, http):
    async with http.post(gateway.make_url("/v1/responses"), data=b"model=m",
                         headers={"Content-Type": "application/x-www-form-urlencoded"}) as response:
        assert response.status == 415
        assert "application/json" in (await response.json())["error"]["message"]


async def test_deep_json_is_400(gateway, http):
    deep = "[" * 100 + "]" * 100
    body = '{"model": "m", "input": "x", "metadata": {"a": %s}}' % deep
    async with http.post(gateway.make_url("/v1/responses"), data=body,
                         headers={"Content-Type": "application/json"}) as response:
        assert response.status == 400
        assert "nested" in (await response.json())["error"]["message"]


async def test_context_overflow_is_reported_with_the_code_codex_understands(upstream, gateway, http):
    upstream.enqueue(Reply([json.dumps({"error": {"code": 400, "type": "exceed_context_size_error",
                                                  "message": "request (23874 tokens) exceeds the available "
                                                             "context size (2048 tokens)"}}).encode()],
                           status=400, headers={"Content-Type": "application/json"}))
    response, raw = await post_stream(http, gateway, {})
    assert response.status == 400
    assert json.loads(raw)["error"]["code"] == "context_length_exceeded"
    upstream.enqueue(Reply([sse({"error": {"message": "This model's maximum context length is 8192 tokens"}})]))
    response, raw = await post_stream(http, gateway, {})
    assert assert_valid_stream(raw)["error"]["code"] == "context_length_exceeded"


async def test_non_json_data_lines_are_skipped_and_reported(upstream, gateway, http):
    upstream.enqueue(Reply([b"data: keep-alive\n\ndata: keep-alive\n\n" + text_reply("ok").steps[0]]))
    with structlog.testing.capture_logs() as logs:
        response, raw = await post_stream(http, gateway, {})
    assert assert_valid_stream(raw)["text"] == "ok"
    warnings = [entry["warning"] for entry in logs if entry["event"] == "response.warning"]
    assert warnings == ["skipped 2 non-JSON data line(s) from the upstream, first: 'keep-alive'"]
