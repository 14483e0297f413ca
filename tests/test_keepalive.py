"""The shared keep-alive ticker: one task pings every open stream; finished streams leave it."""
from __future__ import annotations

import asyncio

from gateway.event_stream import KeepAlive
from gateway.state import STATE

from .conftest import assert_valid_stream
from .helpers import post_stream
from .scripted_upstream import Reply, chunk, sse


class _Recorder:
    """Stands in for an EventStream: counts pings, can go away."""

    def __init__(self, alive: bool = True) -> None:
        self.pings = 0
        self.alive = alive

    async def ping(self) -> bool:
        self.pings += 1
        return self.alive


async def test_one_ticker_pings_every_stream_and_drops_the_dead():
    keepalive = KeepAlive(0.05)
    live, dead = _Recorder(), _Recorder(alive=False)
    keepalive.add(live)  # type: ignore[arg-type]
    keepalive.add(dead)  # type: ignore[arg-type]
    await asyncio.sleep(0.18)
    assert live.pings >= 2
    assert dead.pings == 1  # its write failed: not pinged again
    assert len(keepalive) == 1
    keepalive.discard(live)  # type: ignore[arg-type]
    await asyncio.sleep(0.08)
    assert keepalive._task is None  # the ticker ends with its last stream  # noqa: SLF001
    await keepalive.close()


async def test_concurrent_silent_streams_share_the_ticker_and_leave_it(upstream, make_gateway, http):
    gateway = await make_gateway(keepalive_interval=0.1)
    keepalive = STATE.get(gateway.app).keepalive
    for _ in range(3):
        opening = sse(chunk({"role": "assistant", "content": "a"}), done=False)
        upstream.enqueue(Reply([opening, 0.35, sse(chunk({"content": "b"}), chunk({}, finish="stop"))]))
    results = await asyncio.gather(*(post_stream(http, gateway, {}) for _ in range(3)))
    for response, raw in results:
        assert response.status == 200
        assert raw.count(b": ping\r\n\r\n") >= 2, raw[:300]
        assert assert_valid_stream(raw)["text"] == "ab"
    assert len(keepalive) == 0  # every finished stream left the ticker
