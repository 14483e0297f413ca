"""The private aiohttp attributes the gateway relies on still exist and still mean the same.

setup.cfg keeps aiohttp below its next minor release because of them. Before raising that bound,
this file must pass on the new release; each failure names the attribute and the gateway code
that needs it, instead of a keep-alive or a mid-stream tail that silently goes missing.
"""
from __future__ import annotations

import asyncio
import inspect
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol

from gateway.event_stream import EventStream, KeepAlive, _direct_protocol
from gateway.sse import PING
from gateway.upstream import _unread


async def _serve_once(aiohttp_server: Any, http: Any, handler: Any, keepalive: KeepAlive) -> bytes:
    """GET `handler` once on a real server; the body, with the keep-alive ticker closed after."""
    app = web.Application()
    app.router.add_get("/", handler)
    server = await aiohttp_server(app, host="127.0.0.1")
    try:
        async with http.get(server.make_url("/")) as response:
            return await response.read()
    finally:
        await keepalive.close()


def _changed(what: str, user: str) -> str:
    return f"aiohttp {aiohttp.__version__} changed {what}, which {user} relies on"


async def test_stream_response_payload_writer_and_eof_flag(aiohttp_server, http):
    """EventStream.ping (gateway/event_stream.py) writes through `_payload_writer` and reads `_eof_sent`."""
    seen: dict[str, Any] = {}
    keepalive = KeepAlive(3600)

    async def handler(request: web.Request) -> web.StreamResponse:
        stream = EventStream(request, {}, keepalive, done=False)
        await stream.start([])
        response = stream.response
        assert response is not None
        writer = getattr(response, "_payload_writer", None)
        seen["writer"] = writer is not None
        seen["drain"] = writer is not None and "drain" in inspect.signature(writer.write).parameters
        seen["eof_before"] = getattr(response, "_eof_sent", None)
        seen["ping_open"] = await stream.ping()
        await stream.finish()
        seen["eof_after"] = getattr(response, "_eof_sent", None)
        seen["ping_closed"] = await stream.ping()
        return response

    body = await _serve_once(aiohttp_server, http, handler, keepalive)
    assert seen["writer"], _changed("StreamResponse._payload_writer (gone or None after prepare)", "EventStream.ping")
    assert seen["drain"], _changed("the payload writer's write(..., drain=)", "EventStream.ping")
    assert seen["eof_before"] is False and seen["eof_after"] is True, _changed(
        f"StreamResponse._eof_sent (was {seen['eof_before']!r} while open, {seen['eof_after']!r} after write_eof)",
        "EventStream.ping")
    assert seen["ping_open"] and not seen["ping_closed"], _changed("the stream response's writer", "EventStream.ping")
    assert body == PING


async def test_stream_reader_buffer_holds_the_unread_bytes():
    """upstream._unread recovers bytes that arrived with a failure from `_buffer` and `_buffer_offset`."""
    reader = aiohttp.StreamReader(BaseProtocol(asyncio.get_running_loop()), 2**16)
    reader.feed_data(b"data: one\n")
    reader.feed_data(b"\ndata: two")
    assert await reader.read(6) == b"data: "
    buffer, offset = getattr(reader, "_buffer", None), getattr(reader, "_buffer_offset", None)
    assert buffer is not None and all(isinstance(b, bytes) for b in buffer), _changed(
        "StreamReader._buffer (no longer a sequence of bytes)", "upstream._unread")
    assert isinstance(offset, int), _changed("StreamReader._buffer_offset (no longer an int)", "upstream._unread")
    assert _unread(reader) == b"one\n\ndata: two", _changed(
        "what StreamReader._buffer[_buffer_offset:] holds", "upstream._unread")


async def test_direct_writes_find_the_writer_state_and_the_protocols_flow_control(aiohttp_server, http):
    """EventStream's direct writes (gateway/event_stream.py `_direct_protocol`, `EventStream.send`) read the payload writer's
    `chunked`, `length`, `_compress` and `_headers_written`, and wait on the protocol's `_paused`
    and `_drain_helper()`."""
    seen: dict[str, Any] = {}
    keepalive = KeepAlive(3600)

    async def handler(request: web.Request) -> web.StreamResponse:
        stream = EventStream(request, {}, keepalive, done=False)
        await stream.start([{"type": "response.created", "sequence_number": 0}])
        response = stream.response
        assert response is not None
        writer = response._payload_writer
        seen["direct"] = _direct_protocol(response) is not None
        seen["paused"] = isinstance(getattr(writer.protocol, "_paused", None), bool)
        seen["drain"] = inspect.iscoroutinefunction(getattr(writer.protocol, "_drain_helper", None))
        await stream.send([{"type": "response.in_progress", "sequence_number": 1}])
        await stream.finish()
        return response

    body = await _serve_once(aiohttp_server, http, handler, keepalive)
    assert seen["direct"], _changed("the payload writer's chunked/length/_compress/_headers_written", "_direct_protocol")
    assert seen["paused"] and seen["drain"], _changed("BaseProtocol._paused / _drain_helper()", "EventStream.send")
    assert body.count(b"event: ") == 2 and body.endswith(b"\n\n"), body
