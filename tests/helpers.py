"""Helpers the test files share: requests to a running gateway, and driving the sans-I/O core."""
from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from gateway.ids import new_id
from gateway.sse import encode_events
from gateway.stream_processor import ResponseStream, StreamOptions

from .conftest import assert_valid_stream
from .scripted_upstream import Reply

RESPONSE_ID = "resp_test0001"
CREATED_AT = 1764000000


# ---------------------------------------------------------------------------------- over HTTP
async def post(http: aiohttp.ClientSession, gateway: Any, body: Any, path: str = "/v1/responses",
               **kwargs: Any) -> tuple[aiohttp.ClientResponse, bytes]:
    """POST `body` (an object, or bytes/str sent as they are) as JSON; the response and its whole body."""
    data = body if isinstance(body, (bytes, str)) else orjson.dumps(body)
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    async with http.post(gateway.make_url(path), data=data, headers=headers, **kwargs) as response:
        return response, await response.read()


async def post_stream(http: aiohttp.ClientSession, gateway: Any, body: dict[str, Any],
                      headers: dict[str, str] | None = None) -> tuple[aiohttp.ClientResponse, bytes]:
    """A streamed `/v1/responses` request; `body` adds to (or overrides) model, input and stream."""
    return await post(http, gateway, {"model": "scripted", "input": "hi", "stream": True, **body},
                      headers=headers or {})


async def stream_reply(upstream: Any, gateway: Any, http: aiohttp.ClientSession, *replies: Reply,
                       body: dict[str, Any] | None = None) -> tuple[dict[str, Any], bytes]:
    """Script the upstream's replies, stream one request; the validator's folded result and the raw bytes."""
    upstream.enqueue(*replies)
    response, raw = await post_stream(http, gateway, body or {})
    assert response.status == 200, raw
    return assert_valid_stream(raw), raw


DONE_LINE = b"data: [DONE]"


def sdk(url: str, strict: bool = True) -> Any:
    """The openai SDK's async client on a gateway's base URL (`http://host:port`), as owner sk-alice."""
    import openai
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-alice", max_retries=0, timeout=30,
                              _strict_response_validation=strict)


def events_of(raw: bytes) -> list[dict[str, Any]]:
    """The events of an SSE body, without the `data: [DONE]` end marker (`server.sse_done`)."""
    return [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ") and line != DONE_LINE]


async def read_stream(http: Any, url: str, *, limit: int | None = None, **kwargs: Any) -> tuple[int, bytes]:
    """GET or POST an event stream; the status and the bytes of its first `limit` events (all by default)."""
    method = http.post if "json" in kwargs else http.get
    async with method(url, headers={"Authorization": "Bearer sk-alice"}, **kwargs) as response:
        if response.status != 200 or limit is None:
            return response.status, await response.read()
        raw = b""
        while raw.count(b"\n\n") < limit:
            raw += await response.content.readany()
        return response.status, raw[:_nth(raw, b"\n\n", limit) + 2]


def _nth(data: bytes, sep: bytes, n: int) -> int:
    at = -1
    for _ in range(n):
        at = data.index(sep, at + 1)
    return at


# ---------------------------------------------------------------------------------- the core
def new_stream(*, model: str = "test-model", response_id: str = RESPONSE_ID, created_at: int = CREATED_AT,
               **options: Any) -> ResponseStream:
    """A ResponseStream whose clock stands at `created_at`; `options` are StreamOptions fields."""
    return ResponseStream(StreamOptions(model=model, **options), response_id=response_id,
                          clock=lambda: created_at, new_id=new_id)


def drive(chunks: list[Any], *, saw_done: bool = True, **options: Any) -> tuple[ResponseStream,
                                                                               list[dict[str, Any]], dict[str, Any]]:
    """Feed chunks through a new ResponseStream; the stream, its events and the validator's folded result.

    Also checks what holds for every stream: the terminal event comes last, its response's output
    is exactly the output_item.done items in output order, and sequence numbers count from 0.
    """
    stream = new_stream(**options)
    events = stream.start()
    for chunk in chunks:
        events += stream.feed(chunk)
    events += stream.finish(saw_done)
    result = assert_valid_stream(encode_events(events))
    assert events[-1] is stream.terminal
    done = [e for e in events if e["type"] == "response.output_item.done"]
    assert stream.terminal["response"]["output"] == [e["item"] for e in sorted(done, key=lambda e: e["output_index"])]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return stream, events, result
