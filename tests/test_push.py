"""UpstreamStream.push: reads of whole fast deltas go to a consumer inside aiohttp's read callback.

Driven against the scripted upstream over a real connection; the consumers here are the tests'
own functions (the pipeline's is `pipeline._taker`, exercised by every server test).
"""
from __future__ import annotations

from typing import Any

import pytest

from gateway.config import UpstreamConfig
from gateway.fast_path import FastDelta
from gateway.upstream import UpstreamClient

from .scripted_upstream import paced_reply


async def _batches(upstream: Any, consumer: Any, *, tap: Any = None) -> list[Any]:
    """Every batch `batches()` yields; `consumer` is armed after the first, as the pipeline does."""
    client = UpstreamClient(UpstreamConfig(base_url=upstream.url, retries=0, fast_path=True))
    await client.start()
    try:
        stream = await client.open({"model": "m", "stream": True, "messages": []}, request_id="req_push", tap=tap)
        seen = []
        async for batch in stream.batches():
            seen.append(batch)
            if len(seen) == 1:
                stream.push(consumer)
        assert stream.saw_done
        return seen
    finally:
        await client.close()


def _bodies(items: list[Any]) -> list[bytes]:
    return [item[1] for item in items if type(item) is FastDelta]


async def test_whole_fast_reads_go_to_the_consumer_and_the_rest_to_batches(upstream):
    upstream.enqueue(paced_reply("a", "b", "c", "d", gap=0.02))
    taken: list[Any] = []
    seen = await _batches(upstream, lambda items: taken.extend(items) or True)
    assert _bodies(taken) == [b"b", b"c", b"d"]
    # The role chunk, "a" (the full path learns the template from it), then the finish and usage.
    flat = [chunk for batch in seen for chunk in batch]
    assert [type(chunk) for chunk in flat] == [dict, dict, dict, dict]
    assert flat[1]["choices"][0]["delta"] == {"content": "a"}
    assert flat[2]["choices"][0]["finish_reason"] == "stop"


async def test_a_consumer_that_declines_leaves_the_reads_to_batches(upstream):
    upstream.enqueue(paced_reply("a", "b", "c", gap=0.02))
    offered: list[Any] = []
    seen = await _batches(upstream, lambda items: offered.extend(items) and False)
    assert _bodies(offered) == [b"b", b"c"]
    assert _bodies([chunk for batch in seen for chunk in batch]) == [b"b", b"c"]


async def test_a_consumer_that_raises_ends_the_read_with_its_error(upstream):
    upstream.enqueue(paced_reply("a", "b", "c", gap=0.02))

    def consumer(items: list[Any]) -> bool:
        raise ZeroDivisionError("a gateway bug")

    with pytest.raises(ZeroDivisionError, match="a gateway bug"):
        await _batches(upstream, consumer)


async def test_nothing_is_pushed_while_a_tap_sees_the_reads(upstream):
    upstream.enqueue(paced_reply("a", "b", "c", gap=0.02))
    reads: list[bytes] = []
    taken: list[Any] = []
    seen = await _batches(upstream, lambda items: taken.extend(items) or True, tap=reads.append)
    assert taken == []
    assert _bodies([chunk for batch in seen for chunk in batch]) == [b"b", b"c"]
    assert b"".join(reads).count(b"data: ") == 7  # role, a, b, c, finish, usage, [DONE]
