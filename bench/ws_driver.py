"""Load driver for the gateway's WebSocket mode (GET /v1/responses upgraded; see gateway/websocket.py).

The same loads as `driver.run_fast` and `driver.run_paced`, over WebSocket turns instead of SSE
requests, with the same result keys, so `run.py`'s `websocket` scenario compares the two on one
gateway process: fast turns back to back on `concurrency` open connections (CPU per token), and
paced turns each on a new connection, timed from before the connect to the first delta (TTFT).
A message is one event: tokens are counted with the `responses` format's pattern, and every turn
must end with one `response.completed` carrying the expected number of tokens.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import orjson

from bench.common import cpu_seconds, percentile
from bench.driver import FORMATS, Endpoint, model_name

_TOKENS = FORMATS["responses"].tokens
_TERMINAL = FORMATS["responses"].terminal


def _url(endpoint: Endpoint) -> str:
    return f"http://{endpoint.host}:{endpoint.port}{endpoint.path}"


def _create(model: str) -> str:
    return orjson.dumps({"type": "response.create", "model": model, "input": "hi", "store": False}).decode()


async def _turn(ws: aiohttp.ClientWebSocketResponse, message: str, expected: int,
                started: float, timeout: float) -> tuple[int, float | None, str | None]:
    """Send one turn and read it to its terminal: (tokens, seconds to the first token, error)."""
    await ws.send_str(message)
    tokens, first = 0, None
    async with asyncio.timeout(timeout):
        while True:
            received = await ws.receive()
            if received.type is not aiohttp.WSMsgType.TEXT:
                return tokens, first, f"closed:{received.type.name}"
            data = received.data.encode()
            if _TOKENS.search(data):
                tokens += 1
                if first is None:
                    first = time.perf_counter() - started
                continue
            terminal = _TERMINAL.search(data)
            if terminal is not None:
                kind = terminal.group(1).decode()
                if kind != "completed":
                    return tokens, first, kind
                return tokens, first, None if expected <= tokens <= expected + 1 else "token_count"
            if data.startswith(b'{"type":"error"'):
                return tokens, first, "error_envelope"


async def run_ws_fast(endpoint: Endpoint, tokens: int, concurrency: int, duration: float,
                      pid: int | None) -> dict[str, object]:
    """Back-to-back unpaced text turns on `concurrency` open connections for `duration` s."""
    message = _create(model_name("text", tokens))
    errors: Counter[str] = Counter()
    counted = [0, 0]

    async def worker(session: aiohttp.ClientSession, deadline: float) -> None:
        async with session.ws_connect(_url(endpoint), max_msg_size=0) as ws:
            while time.perf_counter() < deadline:
                got, _, error = await _turn(ws, message, tokens, time.perf_counter(), 60)
                counted[0] += min(got, tokens)
                counted[1] += 1
                if error:
                    errors[error] += 1
                    return

    async with aiohttp.ClientSession() as session:
        cpu_before, started = cpu_seconds(pid) if pid else 0.0, time.perf_counter()
        await asyncio.gather(*(worker(session, started + duration) for _ in range(concurrency)))
        wall = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu_before if pid else None
    return {"kind": "text", "transport": "websocket", "tokens_per_stream": tokens, "concurrency": concurrency,
            "streams": counted[1], "tokens": counted[0], "errors": sum(errors.values()), "error_kinds": dict(errors),
            "wall_s": round(wall, 3), "tokens_per_s": round(counted[0] / wall), "target_cpu_s": cpu,
            "cpu_s_per_mtok": round(cpu / counted[0] * 1e6, 3) if cpu is not None and counted[0] else None}


async def run_ws_paced(endpoint: Endpoint, tokens: int, rate: float, concurrency: int, rounds: int,
                       ramp: float) -> dict[str, object]:
    """`concurrency` clients started over `ramp` s, each running `rounds` paced turns, each on a new connection."""
    message = _create(model_name("text", tokens, rate))
    timeout = tokens / rate * 3 + 30
    ttfts: list[float] = []
    errors: Counter[str] = Counter()

    async def worker(session: aiohttp.ClientSession, delay: float) -> None:
        await asyncio.sleep(delay)
        for _ in range(rounds):
            started = time.perf_counter()
            try:
                async with session.ws_connect(_url(endpoint)) as ws:
                    _, first, error = await _turn(ws, message, tokens, started, timeout)
            except (aiohttp.ClientError, TimeoutError) as exc:
                first, error = None, type(exc).__name__
            if error:
                errors[error] += 1
            elif first is not None:
                ttfts.append(first)

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session, i * ramp / concurrency) for i in range(concurrency)))
        wall = time.perf_counter() - started
    p50, p99 = percentile(ttfts, 50), percentile(ttfts, 99)
    return {"kind": "text", "transport": "websocket", "tokens_per_stream": tokens, "rate": rate,
            "concurrency": concurrency, "rounds": rounds, "streams": concurrency * rounds,
            "errors": sum(errors.values()), "error_kinds": dict(errors),
            "ttft_p50_ms": None if p50 is None else round(p50 * 1000, 3),
            "ttft_p99_ms": None if p99 is None else round(p99 * 1000, 3), "wall_s": round(wall, 3)}
