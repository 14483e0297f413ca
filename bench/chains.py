"""The `chains` scenario: what a `previous_response_id` chain of D turns costs each new request.

Against a gateway with a store: a chain of D stored turns is built (each a 200-character user turn and a
20-token answer), then `requests` streaming requests continue from its tip one at a time (`store: false`,
so the depth stays D). Per request: the gateway's CPU (utime+stime of its process from /proc) and the
time to the first text delta; the same request's time sent straight to the upstream is subtracted to
give the added TTFT. Grown step by step: 10, then 100, then 1,000 turns, on one gateway. The µs per
history item is the marginal cost: the CPU per request over the first depth's, per item added since.
"""
from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson

from bench.common import cpu_seconds, percentile

TURN = "x" * 190  # a 200-character user turn with its number
MODEL = "bench-text-20"


async def _create(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    async with http.post(url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}) as response:
        document = orjson.loads(await response.read())
    if response.status != 200:
        raise RuntimeError(f"chain turn refused: {response.status} {document}")
    return document["id"]


async def _first_delta(http: aiohttp.ClientSession, url: str, body: bytes) -> float:
    """Seconds to the first text delta of a streaming request; the stream is read to its end."""
    started = time.perf_counter()
    first = None
    async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
        async for line in response.content:
            if first is None and (b"output_text.delta" in line or b'"content":"' in line):
                first = time.perf_counter() - started
    if response.status != 200 or first is None:
        raise RuntimeError(f"chain request failed: HTTP {response.status}")
    return first


async def run_chains(host: str, port: int, pid: int, direct_url: str, depths: tuple[int, ...],
                     requests: int) -> list[dict[str, Any]]:
    """For each depth (ascending): CPU per request and TTFT p50 of `requests` requests at that depth."""
    url = f"http://{host}:{port}/v1/responses"
    results: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        tip, built = None, 0
        for depth in depths:
            while built < depth:
                body: dict[str, Any] = {"model": MODEL, "input": f"{built:>9} {TURN}", "store": True}
                if tip is not None:
                    body["previous_response_id"] = tip
                tip = await _create(http, url, body)
                built += 1
            ask = orjson.dumps({"model": MODEL, "input": f"next {TURN}", "stream": True, "store": False,
                                "previous_response_id": tip})
            direct = orjson.dumps({"model": MODEL, "stream": True,
                                   "messages": [{"role": "user", "content": f"next {TURN}"}]})
            await _first_delta(http, url, ask)  # warm: the chain's records are read once before measuring
            cpu_before = cpu_seconds(pid)
            times = [await _first_delta(http, url, ask) for _ in range(requests)]
            cpu = cpu_seconds(pid) - cpu_before
            straight = [await _first_delta(http, direct_url, direct) for _ in range(requests)]
            per_request = cpu / requests
            # What each further history item (a turn is two: its input and its answer) adds, over the first depth.
            base = results[0] if results else None
            marginal = (round((per_request - base["cpu_ms_per_request"] / 1000) / (2 * (depth - base["depth"])) * 1e6, 2)
                        if base else None)
            results.append({
                "depth": depth, "requests": requests,
                "cpu_ms_per_request": round(per_request * 1000, 3),
                "ttft_p50_ms": round(percentile(times, 50) * 1000, 2),
                "added_ttft_p50_ms": round((percentile(times, 50) - percentile(straight, 50)) * 1000, 2),
                "us_per_history_item": marginal,
            })
    return results
