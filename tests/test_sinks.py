"""The sink contract (gateway/pipeline.py): one pipeline, any number of consumers fanned out by `Tee`."""
from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gateway.config import Config, UpstreamConfig
from gateway.event_stream import encode_events
from gateway.pipeline import Run, Tee, run_pipeline
from gateway.routing import RoutedRequest, RoutingTable
from gateway.stream_processor import TERMINAL_TYPES

from .conftest import assert_valid_stream
from .scripted_upstream import text_reply


class Recorder:
    """A store recorder: persists the final response (slowly) before the terminal event may go on."""

    streaming = False
    started = False

    def __init__(self, timeline: list[str]) -> None:
        self.timeline = timeline
        self.finished = self.abandoned = False

    async def start(self, events: list[dict[str, Any]]) -> None:
        await self.send(events)

    async def send(self, events: list[dict[str, Any]]) -> None:
        if events and events[-1]["type"] in TERMINAL_TYPES:
            await asyncio.sleep(0.05)  # the write to the store
            self.timeline.append("recorder: persisted " + events[-1]["response"]["status"])

    async def finish(self) -> None:
        self.finished = True

    def abandon(self) -> None:
        self.abandoned = True


class Client:
    """The client's sink: keeps the events as the SSE writer would send them, answers the route."""

    streaming = True

    def __init__(self, timeline: list[str]) -> None:
        self.timeline = timeline
        self.events: list[dict[str, Any]] = []
        self.started = False

    async def start(self, events: list[dict[str, Any]]) -> None:
        self.started = True
        await self.send(events)

    async def send(self, events: list[dict[str, Any]]) -> None:
        self.events += events
        self.timeline += [f"client: {event['type']}" for event in events if event["type"] in TERMINAL_TYPES]

    async def finish(self) -> web.Response:
        return web.Response(body=encode_events(self.events))

    def abandon(self) -> None:
        pass


async def _run(upstream: Any, sink: Any) -> None:
    table = RoutingTable(Config(upstream=UpstreamConfig(base_url=upstream.url, retries=0)))
    await table.start()
    routed = RoutedRequest(table, table.targets("scripted"), key=None, trace={}, metrics=None)
    try:
        chat = routed.translate({"model": "scripted", "input": "hi", "stream": True})
        await run_pipeline(Run("req_sinks", chat), routed, sink, keepalive_interval=15, client_authorization=None)
    finally:
        routed.release()
        await table.close()


async def test_a_sink_ahead_of_the_client_acts_before_the_terminal_event_reaches_it(upstream):
    timeline: list[str] = []
    recorder, client = Recorder(timeline), Client(timeline)
    tee = Tee(recorder, client)
    upstream.enqueue(text_reply("Hel", "lo"))
    await _run(upstream, tee)
    assert timeline == ["recorder: persisted completed", "client: response.completed"]
    response = await tee.finish()
    tee.abandon()
    assert response is not None and recorder.finished and recorder.abandoned
    assert assert_valid_stream(response.body)["text"] == "Hello"


async def test_tee_is_started_once_its_client_sink_is(upstream):
    recorder, client = Recorder([]), Client([])
    tee = Tee(recorder, client)
    assert tee.streaming and not tee.started
    upstream.enqueue(text_reply("Hi"))
    await _run(upstream, tee)
    assert tee.started and not recorder.started
