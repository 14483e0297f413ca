"""Low-overhead load driver for Chat Completions and Responses SSE streams.

A raw asyncio HTTP/1.1 client: bodies are de-chunked and scanned with two compiled regexes per
read, never parsed as JSON. Tokens are counted as content/arguments chunks for Chat Completions
(`chat`) and as `response.output_text.delta` / `response.function_call_arguments.delta` events
for Responses (`responses`). Every stream must end with its terminal event (`data: [DONE]`, or
exactly one `response.completed`) and carry the expected number of tokens (one extra, empty,
delta is tolerated) or it counts as an error.

Standalone use, e.g. against the floor proxy:

    python -m bench.driver --url http://127.0.0.1:8091/v1/responses --format chat --pid PID \
        fast --model bench-text-1000 --concurrency 8 --duration 5
    python -m bench.driver --url http://127.0.0.1:8091/v1/responses --format chat --pid PID \
        paced --tokens 200 --rate 20 --concurrency 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import orjson

from bench.common import Dechunker, cpu_seconds, percentile, raise_fd_limit, rss_bytes, use_fast_loop

TOOLS = [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}]
CHAT_TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
RSS_SAMPLE_EVERY = 0.2


@dataclass(frozen=True)
class Format:
    name: str
    tokens: re.Pattern[bytes]
    terminal: re.Pattern[bytes]  # group 1 is the terminal's kind
    good: bytes


FORMATS = {
    "chat": Format(
        "chat",
        re.compile(rb'"delta":\{"content":"|"function":\{"arguments":"'),
        re.compile(rb"^data: ?\[(DONE)\]", re.MULTILINE),
        b"DONE",
    ),
    "responses": Format(
        "responses",
        re.compile(rb'"type": ?"response\.(?:output_text|function_call_arguments)\.delta"'),
        re.compile(rb'"type": ?"response\.(completed|incomplete|failed)"'),
        b"completed",
    ),
}


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    path: str
    fmt: Format
    store: bool | None = None  # the Responses body's `store` (None: not sent)
    background: bool = False  # send `background: true` (the stream follows the response's event log)

    @classmethod
    def from_url(cls, url: str, fmt: str) -> Endpoint:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/", FORMATS[fmt])

    def request(self, model: str, tools: bool, stream: bool = True) -> bytes:
        """The POST for `model`: a chat body for /chat/completions, a Responses body otherwise."""
        body: dict[str, object]
        if self.path.endswith("/chat/completions"):
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
            if tools:
                body["tools"] = CHAT_TOOLS
        else:
            body = {"model": model, "input": "hi", "stream": stream}
            if tools:
                body["tools"] = TOOLS
            if self.store is not None:
                body["store"] = self.store
            if self.background:
                body["background"] = True
        data = orjson.dumps(body)
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        return head.encode() + data


@dataclass
class StreamResult:
    error: str | None
    tokens: int
    ttft: float | None
    gaps: list[float] = field(default_factory=list)
    reusable: bool = False


class StreamProtocol(asyncio.Protocol):
    """One keep-alive connection; `send` runs one request/stream at a time."""

    def __init__(self, fmt: Format, record_gaps: bool) -> None:
        self.fmt, self.record_gaps = fmt, record_gaps
        self.transport: asyncio.Transport | None = None
        self.future: asyncio.Future[StreamResult] | None = None
        self.reset(0)

    def reset(self, expected: int) -> None:
        self.expected, self.head, self.rem = expected, b"", b""
        self.mode, self.left, self.dechunker = "", 0, Dechunker()
        self.tokens, self.keep_alive = 0, True
        self.kinds: list[bytes] = []
        self.ttft: float | None = None
        self.gaps: list[float] = []
        self.started = self.last = time.perf_counter()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def send(self, request: bytes, expected: int) -> asyncio.Future[StreamResult]:
        assert self.transport is not None and self.future is None
        self.future = asyncio.get_running_loop().create_future()
        self.reset(expected)
        self.transport.write(request)
        return self.future

    def data_received(self, data: bytes) -> None:
        if self.future is None:
            return
        if not self.mode:
            data = self.read_head(data)
            if not data or self.future is None:
                return
        if self.mode == "chunked":
            self.scan(self.dechunker.feed(data))
            if self.dechunker.finished:
                self.finish()
        elif self.mode == "length":
            self.left -= len(data)
            self.scan(data)
            if self.left <= 0:
                self.finish()
        else:
            self.scan(data)

    def read_head(self, data: bytes) -> bytes:
        """Consume the response head; returns the body bytes that followed it."""
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return b""
        lines = self.head[:end].split(b"\r\n")
        body, status = self.head[end + 4 :], lines[0].split(b" ", 2)[1]
        headers = dict(line.lower().split(b":", 1) for line in lines[1:] if b":" in line)
        headers = {key: value.strip() for key, value in headers.items()}
        self.keep_alive = headers.get(b"connection") != b"close"
        if status != b"200":
            self.keep_alive = False
            self.complete(f"http {status.decode()}")
        elif headers.get(b"transfer-encoding") == b"chunked":
            self.mode = "chunked"
        elif b"content-length" in headers:
            self.mode, self.left = "length", int(headers[b"content-length"])
        else:
            self.mode, self.keep_alive = "close", False
        return body

    def scan(self, payload: bytes) -> None:
        """Count tokens and terminals in the complete lines received so far."""
        data = self.rem + payload
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            self.rem = data
            return
        self.rem = data[cut:]
        lines = data[:cut]
        count = len(self.fmt.tokens.findall(lines))
        if count:
            now = time.perf_counter()
            if self.ttft is None:
                self.ttft = now - self.started
            elif self.record_gaps:
                self.gaps.append(now - self.last)
            self.last = now
            self.tokens += count
        self.kinds.extend(self.fmt.terminal.findall(lines))

    def finish(self) -> None:
        self.scan(b"\n")
        if self.kinds != [self.fmt.good]:
            kinds = b",".join(self.kinds).decode() or "none"
            self.complete(f"terminal {kinds}")
        elif not self.expected <= self.tokens <= self.expected + 1:
            self.complete(f"tokens {self.tokens}/{self.expected}")
        else:
            self.complete(None)

    def complete(self, error: str | None) -> None:
        future, self.future = self.future, None
        if future is not None and not future.done():
            result = StreamResult(error, self.tokens, self.ttft, self.gaps, self.keep_alive and error is None)
            future.set_result(result)
        if error is not None and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.future is not None:
            if self.mode == "close":
                self.finish()
            else:
                self.complete("closed early")


class Client:
    """A connection slot that reconnects when the previous stream left no reusable connection."""

    def __init__(self, endpoint: Endpoint, record_gaps: bool, keep_alive: bool) -> None:
        self.endpoint, self.record_gaps, self.keep_alive = endpoint, record_gaps, keep_alive
        self.protocol: StreamProtocol | None = None

    async def stream(self, request: bytes, expected: int, timeout: float) -> StreamResult:
        started = time.perf_counter()
        try:
            protocol = await self.connect(timeout)
        except (TimeoutError, OSError) as exc:
            return StreamResult(f"connect {type(exc).__name__}", 0, None)
        try:
            result: StreamResult = await asyncio.wait_for(protocol.send(request, expected), timeout)
        except TimeoutError:
            result = StreamResult("timeout", protocol.tokens, protocol.ttft)
        if result.ttft is not None:
            result.ttft += protocol.started - started  # count the connect time too
        if not (result.reusable and self.keep_alive):
            self.close()
        return result

    async def connect(self, timeout: float) -> StreamProtocol:
        if self.protocol is None or self.protocol.transport is None:
            loop = asyncio.get_running_loop()
            make = lambda: StreamProtocol(self.endpoint.fmt, self.record_gaps)  # noqa: E731
            connecting = loop.create_connection(make, self.endpoint.host, self.endpoint.port)
            _, self.protocol = await asyncio.wait_for(connecting, timeout)
        assert self.protocol is not None
        return self.protocol

    def close(self) -> None:
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.close()
        self.protocol = None


def model_name(kind: str, tokens: int, rate: float = 0) -> str:
    return f"bench-{kind}-{tokens}" + (f"-r{rate:g}" if rate else "")


async def run_fast(
    endpoint: Endpoint, kind: str, tokens: int, concurrency: int, duration: float, pid: int | None
) -> dict[str, object]:
    """Back-to-back unpaced streams on `concurrency` keep-alive connections for `duration` s."""
    request = endpoint.request(model_name(kind, tokens), kind == "tool")
    errors: Counter[str] = Counter()
    counted = [0, 0]  # tokens, streams

    async def worker(deadline: float) -> None:
        client = Client(endpoint, record_gaps=False, keep_alive=True)
        while time.perf_counter() < deadline:
            result = await client.stream(request, tokens, timeout=60)
            counted[0] += min(result.tokens, tokens)
            counted[1] += 1
            if result.error:
                errors[result.error] += 1
        client.close()

    cpu_before, started = cpu_seconds(pid) if pid else 0.0, time.perf_counter()
    await asyncio.gather(*(worker(started + duration) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu_before if pid else None
    return {
        "kind": kind,
        "tokens_per_stream": tokens,
        "concurrency": concurrency,
        "streams": counted[1],
        "tokens": counted[0],
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "wall_s": round(wall, 3),
        "tokens_per_s": round(counted[0] / wall),
        "target_cpu_s": cpu,
        "cpu_s_per_mtok": round(cpu / counted[0] * 1e6, 3) if cpu is not None and counted[0] else None,
        "target_cpu_util": round(cpu / wall, 3) if cpu is not None else None,
    }


async def sample_rss(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_bytes(pid))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), RSS_SAMPLE_EVERY)


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


async def run_paced(
    endpoint: Endpoint,
    kind: str,
    tokens: int,
    rate: float,
    concurrency: int,
    rounds: int = 1,
    ramp: float = 1.0,
    pid: int | None = None,
) -> dict[str, object]:
    """`concurrency` clients, started evenly over `ramp` s, each running `rounds` paced streams,
    each on a new connection."""
    request = endpoint.request(model_name(kind, tokens, rate), kind == "tool")
    timeout = tokens / rate * 3 + 30
    results: list[StreamResult] = []

    async def worker(delay: float) -> None:
        await asyncio.sleep(delay)
        client = Client(endpoint, record_gaps=True, keep_alive=False)
        for _ in range(rounds):
            results.append(await client.stream(request, tokens, timeout))

    rss_before, peak, stop = (rss_bytes(pid) if pid else 0), [0], asyncio.Event()
    sampler = asyncio.create_task(sample_rss(pid, peak, stop)) if pid else None
    cpu_before, self_before = cpu_seconds(pid) if pid else 0.0, cpu_seconds(os.getpid(), tree=False)
    started = time.perf_counter()
    await asyncio.gather(*(worker(i * ramp / concurrency) for i in range(concurrency)))
    wall = time.perf_counter() - started
    stop.set()
    if sampler:
        await sampler
    errors = Counter(result.error for result in results if result.error)
    ttfts = [result.ttft for result in results if result.ttft is not None and not result.error]
    gaps = [gap for result in results if not result.error for gap in result.gaps]
    return {
        "kind": kind,
        "tokens_per_stream": tokens,
        "rate": rate,
        "concurrency": concurrency,
        "rounds": rounds,
        "streams": len(results),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "ttft_p50_ms": ms(percentile(ttfts, 50)),
        "ttft_p99_ms": ms(percentile(ttfts, 99)),
        "gap_p50_ms": ms(percentile(gaps, 50)),
        "gap_p99_ms": ms(percentile(gaps, 99)),
        "gap_max_ms": ms(max(gaps, default=None)),
        "rss_per_stream_kb": round((peak[0] - rss_before) / concurrency / 1024, 1) if pid else None,
        "rss_before_mb": round(rss_before / 2**20, 1) if pid else None,
        "wall_s": round(wall, 3),
        "target_cpu_util": round((cpu_seconds(pid) - cpu_before) / wall, 3) if pid else None,
        "driver_cpu_util": round((cpu_seconds(os.getpid(), tree=False) - self_before) / wall, 3),
    }


async def run_creates(
    endpoint: Endpoint, model: str, count: int, spread: float, pid: int | None = None
) -> dict[str, object]:
    """`count` non-streaming background creates, started evenly over `spread` s, each on a new connection.

    Each must be answered 200 with the queued Response; the time to the whole answer (connect included)
    is its TTFT."""
    request = endpoint.request(model, False, stream=False)
    answered: list[float] = []
    errors: Counter[str] = Counter()

    async def create(delay: float) -> None:
        await asyncio.sleep(delay)
        started = time.perf_counter()
        try:
            error = await asyncio.wait_for(answer(endpoint, request), 60)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            error = type(exc).__name__
        if error:
            errors[error] += 1
        else:
            answered.append(time.perf_counter() - started)

    cpu_before, started = cpu_seconds(pid) if pid else 0.0, time.perf_counter()
    await asyncio.gather(*(create(i * spread / count) for i in range(count)))
    wall = time.perf_counter() - started
    return {
        "creates": count,
        "spread_s": spread,
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "ttft_p50_ms": ms(percentile(answered, 50)),
        "ttft_p99_ms": ms(percentile(answered, 99)),
        "wall_s": round(wall, 3),
        "target_cpu_util": round((cpu_seconds(pid) - cpu_before) / wall, 3) if pid else None,
    }


async def answer(endpoint: Endpoint, request: bytes) -> str | None:
    """Send one request with a Content-Length answer on a new connection; what was wrong with it, or None."""
    reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        body = await reader.readexactly(int(length.group(1))) if length else b""
    finally:
        writer.close()
    status = head.split(b" ", 2)[1].decode()
    if status != "200":
        return f"http {status}"
    return None if re.search(rb'"status": ?"queued"', body) else "not queued"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8080/v1/responses")
    parser.add_argument("--format", choices=sorted(FORMATS), required=True, help="what the target streams back")
    parser.add_argument("--pid", type=int, help="target process, for CPU and RSS figures")
    parser.add_argument("--kind", choices=("text", "tool"), default="text")
    sub = parser.add_subparsers(dest="mode", required=True)
    fast = sub.add_parser("fast", help="unpaced streams back to back: tokens/s and CPU per token")
    fast.add_argument("--tokens", type=int, default=1000)
    fast.add_argument("--concurrency", type=int, default=8)
    fast.add_argument("--duration", type=float, default=5.0)
    paced = sub.add_parser("paced", help="concurrent paced streams: errors, TTFT, gaps, RSS")
    paced.add_argument("--tokens", type=int, default=200)
    paced.add_argument("--rate", type=float, default=20.0)
    paced.add_argument("--concurrency", type=int, default=100)
    paced.add_argument("--rounds", type=int, default=1)
    paced.add_argument("--ramp", type=float, default=1.0)
    args = parser.parse_args()
    raise_fd_limit()
    use_fast_loop()
    endpoint = Endpoint.from_url(args.url, args.format)
    if args.mode == "fast":
        run = run_fast(endpoint, args.kind, args.tokens, args.concurrency, args.duration, args.pid)
    else:
        run = run_paced(endpoint, args.kind, args.tokens, args.rate, args.concurrency, args.rounds, args.ramp, args.pid)
    print(json.dumps(asyncio.run(run), indent=2))


if __name__ == "__main__":
    main()
