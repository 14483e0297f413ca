"""Memory that returns: large upstream events are held in bounded pieces, and freed memory goes back.

The mechanism (gateway/memory.py): after a stream that held a large upstream event ends, and once
the gateway goes quiet, `malloc_trim(0)` hands glibc's free heap pages back. The figures are in
bench/memory.py (`python -m bench.run --scenarios memory`); here only what must hold, without timing.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.fast_path import Recogniser
from gateway.memory import LARGE_BUFFER, Trimmer, malloc_trim
from gateway.sse import MAX_EVENT_CHARS, ChunkDecoder, EventTooLarge, SSEDecoder
from gateway.state import STATE

from .conftest import assert_valid_stream, gateway_process
from .helpers import post_stream
from .scripted_upstream import Reply, chunk, paced_reply, sse, usage
from .test_websocket import assert_valid_turn, create, turn_events

MB = 1024 * 1024
GLIBC = malloc_trim() is not None
needs_glibc = pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's: elsewhere the trimmer does nothing")


def big_reply(size: int = MB, piece: int = 4096) -> Reply:
    """A text answer whose one content delta is `size` characters, written in `piece`-byte writes."""
    event = sse(chunk({"content": "x" * size}), done=False)
    head = sse(chunk({"role": "assistant", "content": ""}), done=False)
    tail = sse(chunk({}, finish="stop"), chunk(choices=False, usage=usage()))
    return Reply([head, *(event[i:i + piece] for i in range(0, len(event), piece)), tail])


async def wait_for(condition: Any, seconds: float = 10.0) -> bool:
    """Poll `condition()` until true or `seconds` passed (a bound on waiting, not a timing assertion)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


# ---------------------------------------------------------------------------------- the decoder's buffers
def test_a_long_line_in_many_reads_is_one_event_and_measured():
    decoder = SSEDecoder()
    event = b"data: " + b"y" * MB + b"\n\n"
    out = []
    for i in range(0, len(event), 4096):
        out += decoder.feed(event[i:i + 4096])
    assert out == [("", "y" * MB)]
    assert decoder.held >= MB  # what the trimmer is told the stream held
    assert decoder.between_events  # nothing of it is kept once delivered


def test_the_fast_path_takes_a_large_event_split_over_reads():
    """Once a template is learned, a large event cut into small reads still decodes whole (and only once)."""
    decoder = ChunkDecoder(fast_path=True)
    small = b"".join(b"data: " + orjson.dumps(chunk({"content": word})) + b"\n\n" for word in ("a", "b", "c"))
    decoder.feed(small)
    decoder.feed(small)
    big = b"data: " + orjson.dumps(chunk({"content": "z" * MB})) + b"\n\n"
    items: list[Any] = []
    for i in range(0, len(big), 4096):
        items += decoder.feed(big[i:i + 4096])
    assert len(items) == 1
    item = items[0]
    if type(item) is tuple:  # a fast_path.FastDelta: the template and the JSON string's body, still escaped
        assert item[1] == b"z" * MB
    else:
        assert item["choices"][0]["delta"]["content"] == "z" * MB
    assert decoder.held >= MB


def test_a_large_chunk_teaches_no_template_a_small_one_does():
    """Learning scans the chunk's string with a regex (about 80 ms per MB): large chunks are not looked at."""
    recogniser = Recogniser()
    for content in ("q" * MB, "small"):
        data = orjson.dumps(chunk({"content": content})).decode()
        recogniser.learn(data, orjson.loads(data))
        if content != "small":
            assert recogniser.templates == []
    assert len(recogniser.templates) == 1


def test_an_event_past_the_limit_fails_instead_of_growing():
    decoder = SSEDecoder()
    decoder.feed(b"data: ")
    piece = b"w" * MB
    with pytest.raises(EventTooLarge):
        for _ in range(MAX_EVENT_CHARS // MB + 1):
            decoder.feed(piece)


def test_many_data_lines_count_toward_the_limit():
    decoder = SSEDecoder()
    lines = b"data: " + b"v" * (MB - 7) + b"\n"
    with pytest.raises(EventTooLarge):
        for _ in range(MAX_EVENT_CHARS // MB + 1):
            decoder.feed(lines)


async def test_an_oversized_upstream_event_ends_the_stream_with_a_protocol_error(upstream, gateway, http):
    upstream.enqueue(big_reply(MAX_EVENT_CHARS + MB, piece=256 * 1024))
    response, raw = await post_stream(http, gateway, {})
    assert response.status == 200
    result = assert_valid_stream(raw)
    assert result["status"] == "failed"
    assert result["error"]["code"] == "upstream_protocol_error"
    assert "larger than" in result["error"]["message"]


# ---------------------------------------------------------------------------------- the trimmer
async def test_trimmer_trims_when_quiet_and_after_a_large_buffer_but_not_per_small_run():
    calls: list[int] = []
    active = [1]
    trimmer = Trimmer(lambda: active[0], lambda pad: calls.append(pad) or 1, quiet_delay=0.0, min_interval=3600)
    trimmer.ended(held=100)  # a small run ended under load: nothing to give back
    await asyncio.sleep(0.01)
    assert calls == []
    trimmer.ended(held=LARGE_BUFFER)  # a large one under load: once
    assert await wait_for(lambda: calls == [0])
    trimmer.ended(held=LARGE_BUFFER)  # another within min_interval while busy: waits for the interval
    await asyncio.sleep(0.01)
    assert calls == [0]
    active[0] = 0
    trimmer.ended(held=100)  # quiet now: a trim delays no one, so the interval does not apply
    assert await wait_for(lambda: calls == [0, 0])
    trimmer.close()


async def test_trimmer_without_glibc_does_nothing():
    trimmer = Trimmer(lambda: 0, None, quiet_delay=0.0)
    trimmer.ended(held=10 * MB)
    await asyncio.sleep(0.01)
    assert trimmer.trims == 0


@needs_glibc
async def test_a_stream_with_1mb_events_is_trimmed_after_even_under_load(upstream, gateway, http):
    """Another stream stays open (a busy gateway is never quiet), yet the large stream's end trims."""
    trimmer = STATE.get(gateway.app).trimmer
    assert trimmer is not None and trimmer.trims == 0
    upstream.enqueue(paced_reply(*["tick"] * 200, gap=0.05), big_reply())
    async with http.post(gateway.make_url("/v1/responses"),
                         json={"model": "scripted", "input": "hi", "stream": True}) as slow:
        await slow.content.readuntil(b"response.output_text.delta")
        result, raw = await post_stream(http, gateway, {})
        assert len(assert_valid_stream(raw)["text"]) == MB
        assert await wait_for(lambda: trimmer.trims >= 1)
        assert STATE.get(gateway.app).active == 1  # trimmed while the slow stream still runs
        slow.close()


@needs_glibc
async def test_a_websocket_turn_with_1mb_events_is_trimmed_after(upstream, gateway, http):
    """A turn's end counts as a run's end: the open connection keeps the gateway busy, the large buffer trims."""
    trimmer = STATE.get(gateway.app).trimmer
    assert trimmer is not None and trimmer.trims == 0
    upstream.enqueue(big_reply())
    async with http.ws_connect(gateway.make_url("/v1/responses"), max_msg_size=4 * MB) as ws:
        await ws.send_str(orjson.dumps(create()).decode())
        assert len(assert_valid_turn(await turn_events(ws))["text"]) == MB
        assert await wait_for(lambda: trimmer.trims >= 1)


@needs_glibc
async def test_rss_returns_after_a_burst_of_1mb_streams(upstream, tmp_path: Path):
    """Loose on purpose: unmodified, RSS stayed at 1.6-2x idle after such a burst; trimmed, it returns near idle."""
    upstream.responder = lambda body: big_reply(2 * MB, piece=64 * 1024)
    async with gateway_process("--upstream-url", upstream.url, "--log-level", "warning") as gw:
        pid = gw.proc.pid
        await asyncio.sleep(1.0)
        idle = rss_kb(pid)
        gate = asyncio.Semaphore(8)
        async with aiohttp.ClientSession() as http:
            async def one() -> None:
                async with gate:
                    async with http.post(f"{gw.url}/v1/responses",
                                         json={"model": "scripted", "input": "hi", "stream": True,
                                               "store": False}) as response:
                        assert response.status == 200
                        await response.read()
            await asyncio.gather(*(one() for _ in range(48)))
        returned = await wait_for(lambda: rss_kb(pid) < 1.3 * idle, 15.0)
        assert returned, f"RSS {rss_kb(pid)} kB after the burst, {idle} kB idle"


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
