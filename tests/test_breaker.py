"""Breakers that protect and never cause harm: rate limits, loading upstreams, panic mode, evidence,
per-attempt deadlines, fallbacks of another kind, and what a retried 503 becomes. Real gateways over
real scripted upstreams; the shipped config.yaml where the issue tried it as a new user would."""
from __future__ import annotations

import asyncio
import email.utils
import gc
import time
import weakref

import openai
import pytest

from gateway.config import load_config
from gateway.routing import RoutingTable, retry_after_seconds

from .conftest import ROOT, assert_valid_stream, routed_config, upstream_entry
from .helpers import post, post_stream
from .scripted_upstream import Reply, chunk, error_reply, sse, text_reply, usage
from .test_routes import assert_error


def shipped_config(upstream_url: str, tmp_path):
    """The repository's own config.yaml, as `make run` starts it, pointed at a scripted upstream."""
    return load_config(ROOT / "config.yaml", {"upstream": {"base_url": upstream_url},
                                              "store": {"url": f"sqlite:{tmp_path}/gateway.db"},
                                              "server": {"log_level": "warning"}})


async def readyz(http, gateway) -> dict:
    async with http.get(gateway.make_url("/readyz")) as response:
        return await response.json()


async def metric(http, gateway, name: str, **labels: str) -> float:
    async with http.get(gateway.make_url("/metrics")) as response:
        text = await response.text()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ------------------------------------------------------------------------------ the shipped config
async def test_a_short_rate_limit_is_the_upstreams_own_429_and_ends_when_it_does(upstream, start_gateway, http,
                                                                              tmp_path):
    gateway = await start_gateway(shipped_config(upstream.url, tmp_path))
    limited_until = time.monotonic() + 1.0

    def responder(body):
        if time.monotonic() < limited_until:
            return error_reply(429, "Rate limit reached, slow down", "rate_limit_exceeded", **{"Retry-After": "1"})
        return text_reply("Hello")
    upstream.responder = responder
    for _ in range(3):
        response, raw = await post(http, gateway, {"model": "m", "input": "hi"})
        error = assert_error(response, raw, 429, "invalid_request_error", code="rate_limit_exceeded")
        assert error["message"] == "Rate limit reached, slow down" and response.headers["Retry-After"] == "1"
    assert len(upstream.requests) == 3  # every one reached the upstream: nothing refused in its name
    assert (await readyz(http, gateway))["upstreams"]["default"]["breaker"] == "closed"
    await asyncio.sleep(max(0.0, limited_until - time.monotonic()) + 0.05)
    async with openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key="x", max_retries=0,
                                  _strict_response_validation=True) as client:
        answer = await client.responses.create(model="m", input="hi")
    assert answer.output_text == "Hello" and len(upstream.requests) == 4


async def test_a_loading_upstream_answers_as_soon_as_it_is_up_even_with_its_breaker_open(upstream, start_gateway,
                                                                                         http, tmp_path):
    """vLLM/Ollama answer 503 while they load a model; with no other upstream the breaker only reports it."""
    gateway = await start_gateway(shipped_config(upstream.url, tmp_path))
    loading = {"left": 18}  # 6 requests of 3 attempts each (the shipped `retries: 2`)

    def responder(body):
        if loading["left"]:
            loading["left"] -= 1
            return error_reply(503, "Loading model", **{"Retry-After": "1"})
        return text_reply("Hello")
    upstream.responder = responder
    for _ in range(6):
        response, raw = await post(http, gateway, {"model": "m", "input": "hi"})
        assert_error(response, raw, 503, "invalid_request_error")  # the upstream's own status and message
    assert len(upstream.requests) == 18
    assert (await readyz(http, gateway))["upstreams"]["default"]["breaker"] == "open"  # 6 of 6 failed
    response, raw = await post_stream(http, gateway, {"model": "m"})
    assert response.status == 200 and assert_valid_stream(raw)["text"] == "Hello"
    assert (await readyz(http, gateway))["upstreams"]["default"]["breaker"] == "closed"
    # the 5th failure opened it: the 6th and 7th requests went anyway
    assert await metric(http, gateway, "gateway_upstream_panic_total", upstream="default") == 2


# ----------------------------------------------------------------------------------- with fallbacks
def two(first, second, routing=None, **first_options):
    return routed_config([upstream_entry("first", first.url, models=["m"], fallbacks=["second"], **first_options),
                          upstream_entry("second", second.url)], routing=routing or {})


async def test_a_rate_limited_upstream_is_set_aside_for_its_retry_after(three_upstreams, start_gateway, http):
    first, second, _ = three_upstreams
    gateway = await start_gateway(two(first, second))
    first.enqueue(error_reply(429, "slow down", **{"Retry-After": "1"}))
    for _ in range(3):
        response, raw = await post(http, gateway, {"model": "m", "input": "hi"})
        assert response.status == 200
    assert len(first.requests) == 1 and len(second.requests) == 3  # asked once, then left alone
    report = (await readyz(http, gateway))["upstreams"]["first"]
    assert report["breaker"] == "closed" and 0 < report["rate_limited_for"] <= 1
    assert await metric(http, gateway, "gateway_upstream_rate_limited_total", upstream="first") == 1
    await asyncio.sleep(1.05)
    await post(http, gateway, {"model": "m", "input": "hi"})
    assert len(first.requests) == 2 and len(second.requests) == 3


async def test_retry_after_is_bounded_and_an_http_date_is_read():
    assert retry_after_seconds("2") == 2 and retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds("-3") == 0 and retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= retry_after_seconds(later) <= 30


async def test_a_huge_retry_after_is_capped(three_upstreams, start_gateway, http):
    first, second, _ = three_upstreams
    gateway = await start_gateway(two(first, second, routing={"rate_limit_max_pause": 0.3}))
    first.enqueue(error_reply(429, "come back tomorrow", **{"Retry-After": "86400"}))
    await post(http, gateway, {"model": "m", "input": "hi"})
    await asyncio.sleep(0.35)
    await post(http, gateway, {"model": "m", "input": "hi"})
    assert len(first.requests) == 2


async def test_sparse_failures_do_not_open_the_breaker(three_upstreams, start_gateway, http):
    """Opening needs a failure ratio over the window, not a count of failures across unrelated requests."""
    first, second, _ = three_upstreams
    gateway = await start_gateway(two(first, second, routing={"breaker_failures": 2}))
    for _ in range(4):  # one failure in three: 4 failures in all, a third of the outcomes
        first.enqueue(text_reply("a"), text_reply("b"), error_reply(500, "bad luck"))
        for _ in range(3):
            response, _ = await post(http, gateway, {"model": "m", "input": "hi"})
            assert response.status == 200
    assert len(first.requests) == 12 and len(second.requests) == 4
    assert (await readyz(http, gateway))["upstreams"]["first"]["breaker"] == "closed"


async def test_every_upstream_open_is_panic_not_refusal(three_upstreams, start_gateway, http):
    first, second, _ = three_upstreams
    gateway = await start_gateway(two(first, second, routing={"breaker_failures": 1, "breaker_cooldown": 30}))
    first.enqueue(error_reply(502, "down"))
    second.enqueue(error_reply(502, "down too"))
    response, raw = await post(http, gateway, {"model": "m", "input": "hi"})
    assert_error(response, raw, 502, "invalid_request_error")
    report = await readyz(http, gateway)
    assert [report["upstreams"][n]["breaker"] for n in ("first", "second")] == ["open", "open"]
    response, raw = await post(http, gateway, {"model": "m", "input": "hi"})  # both recovered meanwhile
    assert response.status == 200 and len(first.requests) == 2 and len(second.requests) == 1
    assert (await readyz(http, gateway))["upstreams"]["first"]["breaker"] == "closed"


# ------------------------------------------------------------------------------------- deadlines
async def test_a_hanging_upstream_fails_over_after_its_own_first_byte_timeout(three_upstreams, start_gateway, http):
    first, second, _ = three_upstreams
    gateway = await start_gateway(two(first, second, first_byte_timeout=0.3))
    first.enqueue(Reply(delay_headers=3))
    response, raw = await post_stream(http, gateway, {"model": "m"})
    assert response.status == 200 and assert_valid_stream(raw)["status"] == "completed"
    assert len(second.requests) == 1


async def test_the_overall_deadline_bounds_all_attempts(three_upstreams, start_gateway, http):
    first, second, _ = three_upstreams
    gateway = await start_gateway(two(first, second, routing={"first_byte_deadline": 0.5}))
    first.enqueue(Reply(delay_headers=3))
    second.enqueue(Reply(delay_headers=3))
    response, raw = await post(http, gateway, {"model": "m", "input": "hi"})
    error = assert_error(response, raw, 504, "upstream_error", code="upstream_timeout")
    assert "0.5s" in error["message"] and not second.requests  # the first attempt used the whole budget


# ------------------------------------------------------------------------- fallbacks of another kind
async def test_a_fallback_is_translated_and_read_with_its_own_options(three_upstreams, start_gateway, http):
    first, second, _ = three_upstreams
    config = routed_config([
        upstream_entry("first", first.url, models=["m"], fallbacks=["second"], think_tags="off"),
        upstream_entry("second", second.url, max_tokens_param="max_completion_tokens", think_tags="on")])
    gateway = await start_gateway(config)
    first.enqueue(error_reply(503, "busy"))
    second.enqueue(Reply([sse(chunk({"role": "assistant", "content": "<think>plan</think>Hi"}),
                              chunk({}, finish="stop"), chunk(choices=False, usage=usage()))]))
    response, raw = await post_stream(http, gateway, {"model": "m", "max_output_tokens": 50})
    result = assert_valid_stream(raw)
    assert first.requests[0].body["max_tokens"] == 50 and "max_completion_tokens" not in first.requests[0].body
    assert second.requests[0].body["max_completion_tokens"] == 50 and "max_tokens" not in second.requests[0].body
    assert result["text"] == "Hi" and b"plan" in raw and b"<think>" not in raw  # second's think_tags read it


# --------------------------------------------------------------------------- a retried 503 stays 503
async def test_a_503_then_a_lost_connection_on_retry_is_still_the_upstreams_503(make_gateway, http):
    """The upstream answers 503 and keeps the connection; the retry goes out on that pooled connection,
    which the upstream closes unanswered (a keep-alive race). The client must see the 503, not a 502."""
    requests = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            requests += 1
            if requests > 1:
                writer.close()
                return
            body = b'{"error": {"message": "Model is loading", "type": "server_error", "code": null}}'
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gateway = await make_gateway(upstream={"base_url": f"http://127.0.0.1:{port}/v1", "retries": 1})
        response, raw = await post(http, gateway, {"model": "m", "input": "hi"})
    finally:
        server.close()
    assert requests == 2
    error = assert_error(response, raw, 503, "server_error")
    assert error["message"] == "Model is loading"


# ------------------------------------------------------------------------------------ reload
async def test_a_retired_table_is_released_when_its_last_request_ends(upstream):
    config = routed_config([upstream_entry("a", upstream.url)])
    first = RoutingTable(config)
    second = RoutingTable(config, previous=first)
    with first.hold():
        first.retire(second)
        assert first in second.retiring
    third = RoutingTable(config, previous=second)
    second.retire(third)
    gone = weakref.ref(first), weakref.ref(second)
    del first, second
    gc.collect()
    assert [ref() for ref in gone] == [None, None] and not third.retiring


@pytest.mark.parametrize("key, value", [("breaker_failure_ratio", 0), ("breaker_failure_ratio", 1.5),
                                        ("breaker_window", 0)])
def test_breaker_settings_are_checked(key, value):
    from gateway.errors import ConfigError
    with pytest.raises(ConfigError, match=f"routing.{key}"):
        routed_config([upstream_entry("a", "http://127.0.0.1:9/v1")], routing={key: value})
