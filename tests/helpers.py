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
