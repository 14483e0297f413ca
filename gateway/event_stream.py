"""Writing Responses events to the client: SSE bytes, or nothing until the final JSON.

`EventStream` is a thin adapter over aiohttp-sse's `EventSourceResponse` (headers, the
keep-alive comment every N seconds, a send timeout for stalled peers); events are
pre-encoded with orjson and each batch goes out in one write, which also waits for
the socket to drain, so a slow reader pauses the upstream instead of growing a buffer.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web
from aiohttp_sse import EventSourceResponse


def encode_event(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def encode_events(events: Iterable[dict[str, Any]]) -> bytes:
    return b"".join([encode_event(event) for event in events])


class EventStream:
    """The streaming sink: `text/event-stream`, started lazily by the pipeline."""

    streaming = True

    def __init__(self, request: web.Request, headers: dict[str, str], keepalive_interval: float) -> None:
        self._request = request
        self._headers = headers
        self._keepalive = keepalive_interval
        self.response: EventSourceResponse | None = None
        self.bytes_sent = 0

    @property
    def started(self) -> bool:
        return self.response is not None

    async def start(self, events: list[dict[str, Any]]) -> None:
        response = EventSourceResponse(headers=self._headers, allow_all_methods=True,
                                       ping_interval=self._keepalive, send_timeout=None)
        await response.prepare(self._request)
        self.response = response
        await self.send(events)

    async def send(self, events: list[dict[str, Any]]) -> None:
        if events and self.response is not None:
            data = encode_events(events)
            self.bytes_sent += len(data)
            await self.response.write(data)

    async def close(self) -> None:
        if self.response is not None:
            self.response.stop_streaming()
            await self.response.write_eof()


class FinalResponse:
    """The non-streaming sink: events are folded by the stream processor; nothing is sent early."""

    streaming = False
    started = False

    async def start(self, events: list[dict[str, Any]]) -> None:
        pass

    async def send(self, events: list[dict[str, Any]]) -> None:
        pass

    async def close(self) -> None:
        pass
