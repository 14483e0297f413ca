"""The client's sinks: Responses events as SSE bytes, or folded into the final JSON (see pipeline.py).

`EventStream` is a plain aiohttp `StreamResponse` with the event-stream headers; each batch
of events is framed by `sse.encode_events` and goes out in one write, which also waits for
the socket to drain, so a slow reader pauses the upstream instead of growing a buffer.
After the head, batches bypass `StreamResponse.write`: on a paced stream every token is one
write, and aiohttp's three layers of coroutines per write cost more than framing the HTTP
chunk here and waiting only while the transport is paused (`_direct_protocol`).
The keep-alive comment (`: ping`) comes from one `KeepAlive` ticker shared by every open
stream: aiohttp-sse's ping task per stream costs about 1.6 kB more per stream and three times
the CPU per ping (measured by bench/sse_sink_cost.py; figures in README).
Every stream, live or resumed (background.py), ends in `EventStream.finish`: with `server.sse_done`
that is where `data: [DONE]` follows the terminal event, so both end alike.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from .errors import error_envelope, internal_error_message
from .log import get_logger
from .sse import DONE_FRAME, PING, encode_events
from .stream_processor import TERMINAL_TYPES

# The headers aiohttp-sse's EventSourceResponse set (the gateway used it before the shared ticker).
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "Connection": "keep-alive",
                "X-Accel-Buffering": "no"}


class KeepAlive:
    """Writes `: ping` to every registered stream each `interval` seconds, from one task.

    Streams share the interval, so a stream re-queued at the tail after its ping is due
    no earlier than any stream ahead of it: the dict (insertion-ordered) is a FIFO whose
    head is always the next one due, and a tick costs O(streams pinged), never a scan.
    """

    __slots__ = ("interval", "_slack", "_due", "_task")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        # Streams due within this margin share a wake-up: a ping a little early is harmless.
        self._slack = interval / 20
        self._due: dict[EventStream, float] = {}
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._due)

    def add(self, stream: EventStream) -> None:
        loop = asyncio.get_running_loop()
        self._due[stream] = loop.time() + self.interval
        if self._task is None:
            self._task = loop.create_task(self._run())

    def discard(self, stream: EventStream) -> None:
        self._due.pop(stream, None)

    async def close(self) -> None:
        task, self._task = self._task, None
        self._due.clear()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = self._due
        try:
            while due:
                wait = next(iter(due.values())) - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                now = loop.time()
                while due:
                    stream, at = next(iter(due.items()))
                    if at > now + self._slack:
                        break
                    del due[stream]
                    if await stream.ping():
                        due[stream] = now + self.interval
        finally:
            self._task = None


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=headers,
                        content_type="application/json")


def _direct_protocol(response: web.StreamResponse) -> Any:
    """The connection's protocol, for writing `response`'s body directly once its headers went
    out; None where aiohttp must write (not chunked, a declared length, compression).

    A direct write does what aiohttp's writer does per write, minus what an SSE body never needs:
    frame the chunk, write it, and wait while the transport is above its high-water mark, so a
    slow reader still pauses the upstream.
    """
    writer = response._payload_writer  # noqa: SLF001
    if (writer is None or not writer.chunked or writer.length is not None or writer._compress is not None  # noqa: SLF001
            or not writer._headers_written):  # noqa: SLF001
        return None
    return writer.protocol


def _http_chunk(data: bytes) -> bytes:
    """`data` framed as one HTTP/1.1 chunk (the response is chunked: `_direct_protocol` checks)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class EventStream:
    """The streaming sink: `text/event-stream`, started lazily by the pipeline."""

    __slots__ = ("_request", "_headers", "_keepalive", "_done", "response", "_protocol")
    streaming = True

    def __init__(self, request: web.Request, headers: dict[str, str], keepalive: KeepAlive, *,
                 done: bool) -> None:
        """`done`: end with `data: [DONE]` after the terminal event (`server.sse_done`)."""
        self._request = request
        self._headers = headers
        self._keepalive = keepalive
        self._done = done
        self.response: web.StreamResponse | None = None
        self._protocol: Any = None  # set once the head went out: later batches are written directly

    @property
    def started(self) -> bool:
        return self.response is not None

    async def start(self, events: list[dict[str, Any]]) -> None:
        response = web.StreamResponse(headers={**self._headers, **_SSE_HEADERS})
        await response.prepare(self._request)
        self.response = response
        self._keepalive.add(self)
        # The head goes through aiohttp, which sends the headers with it; the rest goes direct.
        await response.write(encode_events(events))
        self._protocol = _direct_protocol(response)

    async def send(self, events: Sequence[Any]) -> None:
        if not events or self.response is None:
            return
        protocol = self._protocol
        if protocol is None:
            await self.response.write(encode_events(events))
            return
        transport = protocol.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.write(_http_chunk(encode_events(events)))
        if protocol._paused:  # noqa: SLF001
            await protocol._drain_helper()  # noqa: SLF001

    def ready(self) -> bool:
        """A batch can be written now without waiting: the head went out and the socket is not backed up."""
        protocol = self._protocol
        if protocol is None or protocol._paused:  # noqa: SLF001
            return False
        transport = protocol.transport
        return transport is not None and not transport.is_closing()

    def take(self, events: Sequence[Any]) -> None:
        """Write a batch now (only after `ready()`): the upstream's read callback hands deltas over."""
        self._protocol.transport.write(_http_chunk(encode_events(events)))

    async def ping(self) -> bool:
        """Write the keep-alive comment; False once the stream is gone.

        `drain=False`: the write goes to the transport at once and never waits for the socket
        (the server's writer has no chunk hook), so one stalled client cannot hold up the
        pings of the others.
        """
        response = self.response
        writer = response._payload_writer if response is not None else None  # noqa: SLF001
        if writer is None or response is None or response._eof_sent:  # noqa: SLF001
            return False
        try:
            await writer.write(PING, drain=False)
        except Exception:  # noqa: BLE001 - a closed or broken connection; the pipeline sees it on its next write
            return False
        return True

    async def finish(self) -> web.StreamResponse:
        self._keepalive.discard(self)
        assert self.response is not None, "the pipeline starts a streaming sink before it returns"
        await self.response.write_eof(DONE_FRAME if self._done else b"")
        return self.response

    def abandon(self) -> None:
        """Stop pinging (also when the pipeline ended without finish(): client gone)."""
        self._keepalive.discard(self)


# HTTP status for a non-streaming response that failed, by error code.
_FAILED_STATUS = {"upstream_timeout": 504, "server_shutting_down": 503, "rate_limit_exceeded": 429,
                  "store_unavailable": 503}


class FinalResponse:
    """The non-streaming sink: folds the events into the final Response, answered as JSON at the end."""

    __slots__ = ("_request_id", "_final")
    streaming = False
    started = False

    def __init__(self, request_id: str) -> None:
        self._request_id = request_id
        self._final: dict[str, Any] | None = None

    async def start(self, events: list[dict[str, Any]]) -> None:
        pass

    async def send(self, events: Sequence[Any]) -> None:
        if events and events[-1]["type"] in TERMINAL_TYPES:
            self._final = events[-1]["response"]

    def ready(self) -> bool:
        return True

    def take(self, events: Sequence[Any]) -> None:
        pass  # deltas: only the terminal event's response is answered

    async def finish(self) -> web.Response:
        response = self._final
        assert response is not None, "the pipeline ends every run it returns from with a terminal event"
        try:
            if response["status"] == "failed":
                error = response["error"]
                return json_response(error_envelope(error["message"], "upstream_error", None, error["code"]),
                                     status=_FAILED_STATUS.get(error["code"], 502))
            return json_response(response)
        except orjson.JSONEncodeError:
            get_logger().exception("response.unencodable")
            return json_response(error_envelope(internal_error_message(self._request_id), "server_error", None,
                                                "server_error"), status=500)

    def abandon(self) -> None:
        pass
