"""A cheap Chat Completions upstream on raw asyncio, for benchmarking gateways.

The scenario is chosen by the request's `model`:

    bench-text-N        N content tokens, as fast as possible
    bench-text-N-rR     N content tokens at R tokens/s
    bench-tool-N        one tool call whose arguments arrive in N pieces, as fast as possible
    bench-tool-N-rR     the same at R pieces/s

Every stream is canonical OpenAI: a role chunk, the token chunks, a finish chunk, a usage chunk
(`choices: []`) and `data: [DONE]`. Chunks are encoded once per model and cached; fast streams
are written in a few large writes, paced streams are driven by one shared ticker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import cast

import orjson

from bench.common import LOOPBACK, Dechunker, raise_fd_limit, use_fast_loop

MODEL_RE = re.compile(r"bench-(text|tool)-(\d+)(?:-r(\d+(?:\.\d+)?))?$")
DEFAULT_MODEL = "bench-text-20"
MAX_TOKENS = 1_000_000
BATCH_BYTES = 64 * 1024
TICK = 0.002
WORDS = (" the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", ".")
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
CHUNK_END = b"0\r\n\r\n"


@dataclass(frozen=True)
class Scenario:
    kind: str  # "text" | "tool"
    tokens: int
    rate: float  # tokens per second; 0 = as fast as possible


def parse_model(model: str) -> Scenario:
    match = MODEL_RE.match(model)
    if not match:
        return parse_model(DEFAULT_MODEL)
    kind, tokens, rate = match.group(1), int(match.group(2)), float(match.group(3) or 0)
    return Scenario(kind, max(1, min(tokens, MAX_TOKENS)), rate)


def frame(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def sse(chunk: dict[str, object]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


# Each stream gets its own chunk id, as from a real upstream (a gateway that keys anything on the
# chunk text must pay for that per stream). Ids have one width, so the prebuilt HTTP chunk sizes hold.
STREAM_ID = b"chatcmpl-bench-0000000000000000"


def stream_id(number: int) -> bytes:
    return b"chatcmpl-bench-%016x" % number


def chunk(model: str, delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
    return {
        "id": STREAM_ID.decode(),
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def argument_pieces(count: int) -> list[str]:
    """A JSON arguments string cut into `count` non-empty pieces."""
    text = '{"text":"' + "lorem ipsum " * max(1, count // 2) + '"}'
    step = len(text) / count
    cuts = [round(i * step) for i in range(count + 1)]
    return [text[cuts[i] : cuts[i + 1]] for i in range(count)]


@lru_cache(maxsize=256)
def events(model: str) -> tuple[bytes, tuple[bytes, ...], bytes]:
    """(opening event, one event per token, closing events) for `model`."""
    scenario = parse_model(model)
    if scenario.kind == "text":
        opening = sse(chunk(model, {"role": "assistant", "content": ""}))
        tokens = [sse(chunk(model, {"content": WORDS[i % len(WORDS)]})) for i in range(scenario.tokens)]
        finish = "stop"
    else:
        call = {"index": 0, "id": "call_bench", "type": "function", "function": {"name": "f", "arguments": ""}}
        opening = sse(chunk(model, {"role": "assistant", "content": None, "tool_calls": [call]}))
        tokens = [
            sse(chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
            for piece in argument_pieces(scenario.tokens)
        ]
        finish = "tool_calls"
    usage = {"prompt_tokens": 1, "completion_tokens": scenario.tokens, "total_tokens": scenario.tokens + 1}
    closing = sse(chunk(model, {}, finish))
    closing += sse({**chunk(model, {}), "choices": [], "usage": usage}) + b"data: [DONE]\n\n"
    return opening, tuple(tokens), closing


@lru_cache(maxsize=256)
def fast_response(model: str) -> bytes:
    """The whole response for an unpaced scenario, framed in chunks of about BATCH_BYTES."""
    opening, tokens, closing = events(model)
    parts, batch = [STREAM_HEAD], [opening]
    size = len(opening)
    for event in tokens:
        batch.append(event)
        size += len(event)
        if size >= BATCH_BYTES:
            parts.append(frame(b"".join(batch)))
            batch, size = [], 0
    batch.append(closing)
    parts.append(frame(b"".join(batch)))
    parts.append(CHUNK_END)
    return b"".join(parts)


@lru_cache(maxsize=256)
def paced_frames(model: str) -> tuple[bytes, ...]:
    """Framed writes for a paced scenario: the first carries headers and token 1, the last the end."""
    opening, tokens, closing = events(model)
    writes = [STREAM_HEAD + frame(opening + tokens[0])]
    writes.extend(frame(event) for event in tokens[1:])
    writes[-1] += frame(closing) + CHUNK_END
    return tuple(writes)


class PacedStream:
    __slots__ = ("conn", "writes", "id", "start", "rate", "sent")

    def __init__(self, conn: UpstreamProtocol, writes: tuple[bytes, ...], id: bytes, start: float, rate: float):
        self.conn, self.writes, self.id, self.start, self.rate, self.sent = conn, writes, id, start, rate, 0

    def due(self) -> float:
        return self.start + self.sent / self.rate


class Pacer:
    """One ticker for all paced streams: every TICK it writes the frames that have come due."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.streams = 0  # numbers the streams' chunk ids
        self.buckets: dict[int, list[PacedStream]] = {}
        self.next_slot = 0
        self.timer: asyncio.TimerHandle | None = None

    def add(self, stream: PacedStream) -> None:
        self.schedule(stream)
        if self.timer is None:
            self.next_slot = int(self.loop.time() / TICK)
            self.timer = self.loop.call_at(self.next_slot * TICK, self.tick)

    def schedule(self, stream: PacedStream) -> None:
        slot = max(int(stream.due() / TICK), self.next_slot)
        self.buckets.setdefault(slot, []).append(stream)

    def tick(self) -> None:
        now_slot = int(self.loop.time() / TICK)
        while self.next_slot <= now_slot:
            due = self.buckets.pop(self.next_slot, ())
            self.next_slot += 1
            for stream in due:
                self.send(stream)
        self.timer = self.loop.call_at(self.next_slot * TICK, self.tick) if self.buckets else None

    def send(self, stream: PacedStream) -> None:
        conn = stream.conn
        if conn.transport is None or conn.transport.is_closing():
            return
        conn.transport.write(stream.writes[stream.sent].replace(STREAM_ID, stream.id))
        stream.sent += 1
        if stream.sent < len(stream.writes):
            self.schedule(stream)
        else:
            conn.response_done()


class UpstreamProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive connection; one request at a time (no pipelining needed)."""

    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self.next_request()

    def response_done(self) -> None:
        self.busy = False
        if self.buf:
            self.next_request()

    def next_request(self) -> None:
        request = take_request(self.buf)
        if request is None or self.transport is None:
            return
        method, path, body = request
        self.busy = True
        if method == "POST" and path.endswith("/chat/completions"):
            self.stream(body)
        elif method == "GET" and path.rstrip("/") in ("/v1/models", "/healthz"):
            self.send_json(200, {"object": "list", "data": [{"id": "bench", "object": "model", "owned_by": "bench"}]})
        else:
            self.send_json(404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}})

    def stream(self, body: bytes) -> None:
        try:
            model = str(orjson.loads(body).get("model") or DEFAULT_MODEL)
        except (orjson.JSONDecodeError, AttributeError):
            self.send_json(400, {"error": {"message": "body is not a JSON object", "type": "invalid_request_error"}})
            return
        scenario = parse_model(model)
        assert self.transport is not None
        self.pacer.streams += 1
        id = stream_id(self.pacer.streams)
        if scenario.rate <= 0:
            self.transport.write(fast_response(model).replace(STREAM_ID, id))
            self.response_done()
            return
        writes = paced_frames(model)
        self.transport.write(writes[0].replace(STREAM_ID, id))
        if len(writes) == 1:
            self.response_done()
            return
        stream = PacedStream(self, writes, id, self.pacer.loop.time(), scenario.rate)
        stream.sent = 1
        self.pacer.add(stream)

    def send_json(self, status: int, payload: dict[str, object]) -> None:
        body = orjson.dumps(payload)
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
        head = f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        assert self.transport is not None
        self.transport.write(head.encode() + body)
        self.response_done()


def take_request(buf: bytearray) -> tuple[str, str, bytes] | None:
    """Pop one complete request (method, path, body) off `buf`, or None if incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buf[:end]).split(b"\r\n")
    method, path = lines[0].decode("latin-1").split(" ")[:2]
    headers = dict(line.lower().split(b":", 1) for line in lines[1:] if b":" in line)
    start = end + 4
    if headers.get(b"transfer-encoding", b"").strip() == b"chunked":
        dechunker = Dechunker()
        body = dechunker.feed(bytes(buf[start:]))
        if not dechunker.finished:
            return None
        del buf[:]  # a chunked body ends the buffered data (clients do not pipeline)
        return method, path, body
    length = int(headers.get(b"content-length", b"0"))
    if len(buf) < start + length:
        return None
    body = bytes(buf[start : start + length])
    del buf[: start + length]
    return method, path, body


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    pacer = Pacer(loop)
    server = await loop.create_server(lambda: UpstreamProtocol(pacer), host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    raise_fd_limit()
    use_fast_loop()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
