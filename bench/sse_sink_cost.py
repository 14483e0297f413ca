"""What an open SSE stream costs the server: the gateway's sink vs aiohttp-sse's EventSourceResponse.

    python -m bench.sse_sink_cost [--streams 1000] [--interval 1] [--window 10]

For each sink a server process is started on 127.0.0.1 whose `/stream` handler sends one event
and then holds the stream open, as the gateway does while the upstream is silent:
- `event_stream`: the gateway's `EventStream`, pinged by the one shared `KeepAlive` ticker;
- `aiohttp_sse`: aiohttp-sse's `EventSourceResponse`, which runs one ping task per stream.
Both handlers wait on the same kind of future, so the difference is the sink alone. This process
opens `--streams` streams against it, keeps reading them, and asks the server's `/stats` for its
RSS, the Python heap (tracemalloc, in a second run of each server, since tracing slows it), its
task count, its CPU time and its event-loop wake-ups (calls to the selector) while the streams sit
idle for `--window` seconds with a ping every `--interval` seconds.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from .common import LOOPBACK, free_port, raise_fd_limit, rss_bytes, wait_ready

SINKS = ("event_stream", "aiohttp_sse")
ROOT = Path(__file__).resolve().parents[1]
EVENT = {"type": "response.created", "sequence_number": 0,
         "response": {"id": "resp_bench", "object": "response", "status": "in_progress", "output": []}}


# ---------------------------------------------------------------------------------- the server
class Stats:
    def __init__(self) -> None:
        self.wakeups = 0

    def count_wakeups(self, loop: asyncio.AbstractEventLoop) -> None:
        """Count the loop's selector calls: one per event-loop iteration (the default asyncio loop)."""
        selector = getattr(loop, "_selector", None)
        if selector is None:
            return
        select = selector.select

        def counting(timeout: float | None = None) -> Any:
            self.wakeups += 1
            return select(timeout)

        selector.select = counting

    def snapshot(self) -> dict[str, Any]:
        return {"rss": rss_bytes(os.getpid()), "traced": tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing()
                else None, "tasks": len(asyncio.all_tasks()), "wakeups": self.wakeups, "cpu": time.process_time()}


def server_app(sink: str, interval: float, stats: Stats) -> web.Application:
    from gateway.event_stream import EventStream, KeepAlive
    from aiohttp_sse import EventSourceResponse

    keepalive = KeepAlive(interval)
    held = asyncio.Event()  # never set: every stream stays open until its client leaves

    async def event_stream(request: web.Request) -> web.StreamResponse:
        stream = EventStream(request, {}, keepalive, done=False)
        try:
            await stream.start([EVENT])
            await held.wait()
        finally:
            stream.abandon()
        assert stream.response is not None
        return stream.response

    async def aiohttp_sse(request: web.Request) -> web.StreamResponse:
        response = EventSourceResponse(ping_interval=interval)
        await response.prepare(request)
        try:
            await response.send(orjson.dumps(EVENT).decode(), event=EVENT["type"])
            await held.wait()
        finally:
            response.stop_streaming()
        return response

    async def snapshot(request: web.Request) -> web.Response:
        return web.json_response(stats.snapshot())

    async def on_startup(app: web.Application) -> None:
        stats.count_wakeups(asyncio.get_running_loop())

    async def on_cleanup(app: web.Application) -> None:
        await keepalive.close()

    app = web.Application()
    app.router.add_get("/stream", event_stream if sink == "event_stream" else aiohttp_sse)
    app.router.add_get("/stats", snapshot)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def serve(sink: str, port: int, interval: float, trace: bool) -> None:
    if trace:
        tracemalloc.start()
    web.run_app(server_app(sink, interval, Stats()), host=LOOPBACK, port=port, print=None, access_log=None,
                backlog=4096)


# ---------------------------------------------------------------------------------- the driver
async def get_stats(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with http.get(f"{base}/stats") as response:
        return await response.json()


async def hold(http: aiohttp.ClientSession, url: str, opened: asyncio.Queue[bool], pings: list[int]) -> None:
    """Open one stream, report when its first event arrived, then read (and count pings) until cancelled."""
    async with http.get(url) as response:
        seen = b""
        while b"\n\n" not in seen.replace(b"\r\n", b"\n"):
            seen += await response.content.readany()
        await opened.put(True)
        async for data in response.content.iter_any():
            pings[0] += data.count(b": ping")


async def measure(sink: str, streams: int, interval: float, window: float, trace: bool) -> dict[str, Any]:
    port = free_port()
    argv = [sys.executable, "-m", "bench.sse_sink_cost", "--serve", sink, "--port", str(port),
            "--interval", str(interval), *(["--trace"] if trace else [])]
    server = subprocess.Popen(argv, cwd=ROOT)
    base = f"http://{LOOPBACK}:{port}"
    tasks: list[asyncio.Task[None]] = []
    try:
        if not await wait_ready(port, "/stats", 15, lambda: server.poll() is None):
            raise RuntimeError(f"the {sink} server did not start")
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as http:
            before = await get_stats(http, base)
            opened: asyncio.Queue[bool] = asyncio.Queue()
            pings = [0]
            tasks = [asyncio.create_task(hold(http, f"{base}/stream", opened, pings)) for _ in range(streams)]
            for _ in range(streams):
                await asyncio.wait_for(opened.get(), 60)
            await asyncio.sleep(min(1.0, interval))  # let the opening burst settle
            start = await get_stats(http, base)
            pings_start = pings[0]
            await asyncio.sleep(window)
            end = await get_stats(http, base)
            pings_seen = pings[0] - pings_start
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for task in tasks:
            task.cancel()
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(10)
        if server.poll() is None:
            server.kill()
    elapsed = window
    result = {
        "sink": sink, "streams": streams, "interval_s": interval, "window_s": window,
        "server_tasks_open": start["tasks"] - before["tasks"],
        "rss_kb_per_stream": (start["rss"] - before["rss"]) / streams / 1024,
        "wakeups_per_s": (end["wakeups"] - start["wakeups"]) / elapsed,
        "cpu_ms_per_s": (end["cpu"] - start["cpu"]) * 1000 / elapsed,
        "pings_per_s": pings_seen / elapsed,
    }
    if trace:
        result["heap_kb_per_stream"] = (start["traced"] - before["traced"]) / streams / 1024
    return result


def table(rows: list[dict[str, Any]], streams: int, interval: float) -> str:
    ping_rate = streams / interval
    lines = [f"{streams} open streams, a ping every {interval:g} s each ({ping_rate:g} pings/s expected)", "",
             "| sink | RSS kB / stream | Python heap kB / stream | server tasks / stream | loop wake-ups / s "
             "| wake-ups / ping | server CPU ms / s | CPU µs / ping |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        pings = row["pings_per_s"] or 1
        lines.append(f"| {row['sink']} | {row['rss_kb_per_stream']:.1f} | {row.get('heap_kb_per_stream', 0):.2f} "
                     f"| {row['server_tasks_open'] / row['streams']:.2f} | {row['wakeups_per_s']:.1f} "
                     f"| {row['wakeups_per_s'] / pings:.3f} | {row['cpu_ms_per_s']:.1f} "
                     f"| {row['cpu_ms_per_s'] * 1000 / pings:.1f} |")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    raise_fd_limit()
    rows = []
    for sink in SINKS:
        plain = await measure(sink, args.streams, args.interval, args.window, trace=False)
        traced = await measure(sink, args.streams, args.interval, min(args.window, 2.0), trace=True)
        plain["heap_kb_per_stream"] = traced["heap_kb_per_stream"]
        rows.append(plain)
        print(orjson.dumps(plain).decode(), file=sys.stderr)
    print(table(rows, args.streams, args.interval))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between pings of a stream")
    parser.add_argument("--window", type=float, default=10.0, help="seconds the open streams are watched idle")
    parser.add_argument("--serve", choices=SINKS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.interval, args.trace)
        return
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
