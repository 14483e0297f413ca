"""The memory scenario: does the gateway's RSS come back down after a burst of hostile streams?

A hostile Chat Completions upstream (an aiohttp app in the harness process) answers by the
request's `model`:

    hostile-big        two content deltas of 1 MB each, each event one 1 MB write
    hostile-split      one 1 MB content delta written in 4 kB pieces (many reads of one event)
    hostile-tool       one tool call whose arguments are a single 1 MB piece
    hostile-tiny       2,000 deltas of one or two characters, each its own write
    hostile-deep       300-level nesting in a delta's extra field and a tool call's extra_content,
                       and every other stream a 300-level `finish_reason` (a protocol error)
    anything else      bench/upstream.py's stream for that model (the warm-up's `bench-text-50`)

`run_memory` drives a started gateway: its RSS idle (after the warm-up), after burst 1 and
after burst 2 (each `streams` streams, `concurrency` at a time, a fifth of them non-streaming),
read once the gateway has been quiet for `SETTLE` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from bench.common import LOOPBACK, rss_bytes
from bench.upstream import chunk, events

MB = 1024 * 1024
DEPTH = 300  # past orjson's 255 levels: the gateway must measure before it re-encodes
TINY_EVENTS = 2000
SPLIT_WRITE = 4096
# The burst's streams cycle through these (3 in 8 carry 1 MB pieces).
KINDS = ("big", "tiny", "deep", "split", "tiny", "tool", "deep", "tiny")
# The gateway has been quiet this long when RSS is read after a burst.
SETTLE = 3.0
Result = dict[str, object]
TERMINALS = (b"event: response.completed", b"event: response.failed", b"event: response.incomplete")


def _sse(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def _event(model: str, delta: dict[str, object], finish: str | None = None) -> bytes:
    return _sse(orjson.dumps(chunk(model, delta, finish)))


def _deep() -> bytes:
    """A JSON object nested DEPTH levels (by hand: orjson will not encode it)."""
    return b'{"a":' * DEPTH + b'{"x":1}' + b"}" * DEPTH


def _with(event: bytes, marker: bytes, value: bytes) -> bytes:
    """`event` with the JSON string `"<marker>"` replaced by raw JSON `value`."""
    return event.replace(b'"' + marker + b'"', value, 1)


def _closing(model: str, finish: str) -> bytes:
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    return _event(model, {}, finish) + _sse(orjson.dumps({**chunk(model, {}), "choices": [], "usage": usage})) \
        + b"data: [DONE]\n\n"


def writes(model: str, index: int) -> list[bytes]:
    """The network writes of one hostile stream."""
    role = _event(model, {"role": "assistant", "content": ""})
    if model == "hostile-big":
        piece = _event(model, {"content": "x" * MB})
        return [role, piece, piece, _closing(model, "stop")]
    if model == "hostile-split":
        piece = _event(model, {"content": "y" * MB})
        return [role, *(piece[i:i + SPLIT_WRITE] for i in range(0, len(piece), SPLIT_WRITE)), _closing(model, "stop")]
    if model == "hostile-tool":
        call = {"index": 0, "id": f"call_{index}", "type": "function", "function": {"name": "f", "arguments": ""}}
        arguments = '{"text":"' + "z" * MB + '"}'
        return [_event(model, {"role": "assistant", "content": None, "tool_calls": [call]}),
                _event(model, {"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}),
                _closing(model, "tool_calls")]
    if model == "hostile-tiny":
        return [role, *(_event(model, {"content": "ab"[: 1 + i % 2]}) for i in range(TINY_EVENTS)),
                _closing(model, "stop")]
    if model == "hostile-deep":
        deep = _deep()
        call = {"index": 0, "id": f"call_{index}", "type": "function", "extra_content": "DEEP",
                "function": {"name": "f", "arguments": "{}"}}
        out = [role, _with(_event(model, {"content": "deep", "extra": "DEEP"}), b"DEEP", deep),
               _with(_event(model, {"tool_calls": [call]}), b"DEEP", deep)]
        if index % 2:
            return [*out, _with(_event(model, {}, "DEEP"), b"DEEP", deep)]
        return [*out, _closing(model, "tool_calls")]
    opening, tokens, closing = events(model)
    return [opening + b"".join(tokens) + closing]


async def _completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    tail = request.headers.get("X-Request-ID", "").rsplit("-", 1)[-1]
    index = int(tail) if tail.isdigit() else 0  # the warm-up's ids are the gateway's own
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    with contextlib.suppress(ConnectionError):
        await response.prepare(request)
        for data in writes(str(body.get("model")), index):
            await response.write(data)
        await response.write_eof()
    return response


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "hostile-big", "object": "model"}]})


@contextlib.asynccontextmanager
async def hostile_upstream() -> AsyncIterator[int]:
    """The hostile upstream on a free loopback port (yielded) while the context is open."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _completions)
    app.router.add_get("/v1/models", _models)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def _one(http: aiohttp.ClientSession, url: str, index: int) -> str | None:
    """One request; None when it ended as it should (a terminal event, or a final Response / error JSON)."""
    model = f"hostile-{KINDS[index % len(KINDS)]}"
    stream = index % 5 != 0
    body = {"model": model, "input": "hi", "stream": stream, "store": False}
    try:
        async with asyncio.timeout(60):
            async with http.post(url, json=body, headers={"X-Request-ID": f"memory-{index}"}) as response:
                raw = await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"{model}: {type(exc).__name__}"
    if stream and response.status == 200:
        last = raw[raw.rfind(b"event: ", 0, len(raw) - 1):].split(b"\n", 1)[0]  # the last event's type line
        return None if last in TERMINALS else f"{model}: cut"
    return None if response.status in (200, 502) and raw.startswith(b"{") else f"{model}: HTTP {response.status}"


async def burst(url: str, streams: int, concurrency: int, first: int) -> tuple[int, dict[str, int]]:
    """`streams` hostile requests, `concurrency` at a time; (errors, error kinds)."""
    gate = asyncio.Semaphore(concurrency)
    kinds: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        async def one(index: int) -> None:
            async with gate:
                problem = await _one(http, url, index)
            if problem is not None:
                kinds[problem] = kinds.get(problem, 0) + 1
        await asyncio.gather(*(one(first + i) for i in range(streams)))
    return sum(kinds.values()), kinds


def peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


async def run_memory(host: str, port: int, pid: int, streams: int, concurrency: int) -> Result:
    """Idle RSS, then two bursts, each followed by SETTLE quiet seconds; MB figures and ratios."""
    url = f"http://{host}:{port}/v1/responses"
    await asyncio.sleep(SETTLE)
    idle = rss_bytes(pid)
    started = time.perf_counter()
    errors1, kinds1 = await burst(url, streams, concurrency, 0)
    seconds = time.perf_counter() - started
    await asyncio.sleep(SETTLE)
    after1 = rss_bytes(pid)
    errors2, kinds2 = await burst(url, streams, concurrency, streams)
    await asyncio.sleep(SETTLE)
    after2 = rss_bytes(pid)
    kinds = {key: kinds1.get(key, 0) + kinds2.get(key, 0) for key in {*kinds1, *kinds2}}
    return {"streams": streams, "concurrency": concurrency, "burst_s": round(seconds, 1),
            "errors": errors1 + errors2, "error_kinds": kinds, "rss_idle_mb": round(idle / MB, 1),
            "rss_burst1_mb": round(after1 / MB, 1), "rss_burst2_mb": round(after2 / MB, 1),
            "rss_peak_mb": round(peak_kb(pid) / 1024, 1), "burst1_ratio": round(after1 / idle, 2),
            "burst2_ratio": round(after2 / idle, 2), "burst2_growth_mb": round((after2 - after1) / MB, 1)}
