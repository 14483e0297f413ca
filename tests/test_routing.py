"""Several upstreams: the routing table end to end with the openai SDK, /v1/models, passthrough, failover, breaker."""
from __future__ import annotations

import asyncio
import json

import openai
import pytest

from .conftest import assert_valid_stream, free_port, routed_config, upstream_entry
from .helpers import post_stream
from .scripted_upstream import Reply, chunk, error_reply, sse
from .test_routes import assert_error, post


def table_config(alpha, beta, gamma, **routing):
    """alpha: exact names and an alias; beta: a glob, falls back to gamma; gamma: the default."""
    return routed_config([
        upstream_entry("alpha", alpha.url, models=["exact-a", "shared-name"], aliases={"smart": "alpha-model"}),
        upstream_entry("beta", beta.url, models=["beta-*"], fallbacks=["gamma"]),
        upstream_entry("gamma", gamma.url, aliases={"shared-alias": "gamma-big"}),
    ], routing={"default": "gamma", **routing})


@pytest.fixture
async def routed_gateway(three_upstreams, start_gateway):
    return await start_gateway(table_config(*three_upstreams))


@pytest.fixture
async def sdk(routed_gateway):
    async with openai.AsyncOpenAI(base_url=str(routed_gateway.make_url("/v1")), api_key="x", max_retries=0,
                                  timeout=30, _strict_response_validation=True) as client:
        yield client


@pytest.mark.parametrize("model, upstream, sent_as", [
    ("exact-a", 0, "exact-a"),                 # 1. exact
    ("smart", 0, "alpha-model"),               # 2. alias
    ("beta/anything:7b", 1, "anything:7b"),    # 3. name/model prefix
    ("beta-large", 1, "beta-large"),           # 4. glob
    ("qwen3:8b", 2, "qwen3:8b"),               # 5. default
    ("shared-alias", 2, "gamma-big"),
])
async def test_routing_order_end_to_end_with_the_sdk(three_upstreams, sdk, model, upstream, sent_as):
    response = await sdk.responses.create(model=model, input="hi")
    assert response.output_text == "Hello"
    assert response.model == model  # the client sees its own name for the model
    seen = [len(u.requests) for u in three_upstreams]
    assert seen == [1 if i == upstream else 0 for i in range(3)]
    assert three_upstreams[upstream].requests[0].body["model"] == sent_as
    async with sdk.responses.stream(model=model, input="hi") as stream:
        final = await stream.get_final_response()
    assert final.output_text == "Hello" and len(three_upstreams[upstream].requests) == 2


async def test_exact_wins_over_prefix_and_glob(three_upstreams, start_gateway, http):
    alpha, beta, _ = three_upstreams
    config = routed_config([upstream_entry("alpha", alpha.url, models=["beta/x", "z*"]),
                            upstream_entry("beta", beta.url, models=["beta/*"])])
    gateway = await start_gateway(config)
    for model in ("beta/x", "beta/y", "zeta"):
        await post(http, gateway, {"model": model, "input": "hi"})
    assert [r.body["model"] for r in alpha.requests] == ["beta/x", "zeta"]
    assert [r.body["model"] for r in beta.requests] == ["y"]


async def test_unknown_model_is_404_naming_the_models(three_upstreams, start_gateway, http):
    alpha, beta, _ = three_upstreams
    gateway = await start_gateway(routed_config([upstream_entry("alpha", alpha.url, models=["exact-a"],
                                                                aliases={"smart": "alpha-model"}),
                                                 upstream_entry("beta", beta.url, models=["beta-*"])]))
    async with openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key="x", max_retries=0) as client:
        with pytest.raises(openai.NotFoundError) as info:
            await client.responses.create(model="gpt-unknown", input="hi")
    error = info.value.body
    assert error["code"] == "model_not_found" and error["param"] == "model"
    for name in ("exact-a", "smart", "beta-*", "alpha/…", "beta/…"):
        assert name in error["message"]
    assert not alpha.requests and not beta.requests


async def test_models_merges_upstreams_and_leaves_a_down_one_out(three_upstreams, start_gateway, http,
                                                                 log_capture):
    lines = log_capture("info")
    alpha, beta, gamma = three_upstreams
    config = routed_config([
        upstream_entry("alpha", alpha.url, aliases={"smart": "alpha-model"}),
        upstream_entry("beta", beta.url, models=["beta-*"]),
        upstream_entry("gamma", gamma.url),
        upstream_entry("down", f"http://127.0.0.1:{free_port()}/v1", models=["down-model"]),
    ], routing={"default": "gamma", "models_cache_ttl": 60})
    gateway = await start_gateway(config)
    async with openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key="x", max_retries=0) as client:
        ids = [model.id async for model in client.models.list()]
    # alpha-model is not routed to alpha by name (gamma is the default): it is listed with its prefix.
    assert ids == ["alpha/alpha-model", "smart", "beta-model", "gamma-model"]
    warnings = [line for line in lines() if line["event"] == "models.upstream_left_out"]
    assert [w["upstream"] for w in warnings] == ["down"]
    gamma.model_list = {"object": "list", "data": []}
    async with http.get(gateway.make_url("/v1/models"), headers={"Authorization": "Bearer x"}) as response:  # cached
        assert [m["id"] for m in (await response.json())["data"]] == ids


async def test_passthrough_routes_the_same_way(three_upstreams, routed_gateway, http):
    alpha, beta, gamma = three_upstreams
    body = json.dumps({"model": "smart", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    response, raw = await post(http, routed_gateway, body, path="/v1/chat/completions")
    assert response.status == 200 and b"[DONE]" in raw
    assert alpha.requests[0].body["model"] == "alpha-model"
    body = json.dumps({"model": "qwen3:8b", "messages": []})
    await post(http, routed_gateway, body, path="/v1/chat/completions")
    assert gamma.requests[0].body == {"model": "qwen3:8b", "messages": []}
    response, raw = await post(http, routed_gateway, {"model": "beta-x", "messages": []}, path="/chat/completions")
    assert response.status == 200 and beta.requests[0].body["model"] == "beta-x"


# ---------------------------------------------------------------------------------------- failover
async def test_failover_past_a_refusing_and_a_503_upstream(three_upstreams, start_gateway, http, log_capture):
    lines = log_capture("info")
    _, busy, good = three_upstreams
    config = routed_config([
        upstream_entry("refusing", f"http://127.0.0.1:{free_port()}/v1", models=["m"],
                       fallbacks=["busy", "good"]),
        upstream_entry("busy", busy.url),
        upstream_entry("good", good.url),
    ])
    gateway = await start_gateway(config)
    busy.responder = lambda body: error_reply(503, "overloaded")
    response, raw = await post_stream(http, gateway, {"model": "m"}, headers={"X-Request-ID": "fo-1"})
    assert response.status == 200
    assert assert_valid_stream(raw)["status"] == "completed"
    assert len(busy.requests) == 1 and good.requests[0].body["model"] == "m"
    finished = [line for line in lines() if line["event"] == "response.finished"]
    assert finished[-1]["upstream"] == "good" and finished[-1]["failed_first"] == "refusing"
    # The passthrough fails over the same way.
    response, raw = await post(http, gateway, {"model": "m", "messages": []}, path="/v1/chat/completions")
    assert response.status == 200 and len(good.requests) == 2


async def test_last_upstream_error_reaches_the_client(three_upstreams, start_gateway, http):
    _, busy, _ = three_upstreams
    refusing = f"http://127.0.0.1:{free_port()}/v1"
    gateway = await start_gateway(routed_config([
        upstream_entry("busy", busy.url, models=["m"], fallbacks=["refusing"]),
        upstream_entry("refusing", refusing)]))
    busy.responder = lambda body: error_reply(503, "overloaded")
    response, raw = await post(http, gateway, {"model": "m", "input": "hi"})
    assert_error(response, raw, 502, "upstream_error", code="upstream_unavailable")
    assert len(busy.requests) == 1


async def test_no_failover_after_the_first_byte(three_upstreams, start_gateway, http):
    first, second, _ = three_upstreams
    gateway = await start_gateway(routed_config([upstream_entry("first", first.url, models=["m"],
                                                                fallbacks=["second"]),
                                                 upstream_entry("second", second.url)]))
    first.enqueue(Reply([sse(chunk({"role": "assistant", "content": "Hal"}), done=False)], end="abort"))
    response, raw = await post_stream(http, gateway, {"model": "m"})
    result = assert_valid_stream(raw)
    assert result["status"] == "failed" and not second.requests


async def test_client_errors_do_not_fail_over(three_upstreams, start_gateway, http):
    first, second, _ = three_upstreams
    gateway = await start_gateway(routed_config([upstream_entry("first", first.url, models=["m"],
                                                                fallbacks=["second"]),
                                                 upstream_entry("second", second.url)]))
    first.enqueue(error_reply(400, "bad request"))
    response, raw = await post(http, gateway, {"model": "m", "input": "hi"})
    assert response.status == 400 and not second.requests


async def test_breaker_opens_then_one_probe_closes_it(three_upstreams, start_gateway, http):
    flaky, backup, _ = three_upstreams
    gateway = await start_gateway(routed_config(
        [upstream_entry("flaky", flaky.url, models=["m"], fallbacks=["backup"]),
         upstream_entry("backup", backup.url)],
        routing={"breaker_failures": 2, "breaker_cooldown": 0.5}))
    flaky.responder = lambda body: error_reply(500, "broken")

    async def breaker_state() -> str:
        async with http.get(gateway.make_url("/readyz")) as response:
            return (await response.json())["upstreams"]["flaky"]["breaker"]

    for _ in range(2):
        response, _ = await post(http, gateway, {"model": "m", "input": "hi"})
        assert response.status == 200
    assert len(flaky.requests) == 2 and await breaker_state() == "open"
    for _ in range(3):  # skipped while open: straight to the backup
        await post(http, gateway, {"model": "m", "input": "hi"})
    assert len(flaky.requests) == 2 and len(backup.requests) == 5
    await asyncio.sleep(0.6)
    assert await breaker_state() == "half_open"
    flaky.responder = None  # healthy again: the probe succeeds
    await post(http, gateway, {"model": "m", "input": "hi"})
    assert len(flaky.requests) == 3 and await breaker_state() == "closed"
    await post(http, gateway, {"model": "m", "input": "hi"})
    assert len(flaky.requests) == 4 and len(backup.requests) == 5


async def test_readyz_reports_each_upstream(three_upstreams, start_gateway, http):
    alpha = three_upstreams[0]
    down = f"http://127.0.0.1:{free_port()}/v1"
    gateway = await start_gateway(routed_config([upstream_entry("alpha", alpha.url),
                                                 upstream_entry("down", down)]))
    async with http.get(gateway.make_url("/readyz")) as response:
        body = await response.json()
    assert response.status == 200 and body["status"] == "ready"
    assert body["upstreams"]["alpha"] == {"status": "ready", "upstream_status": 200, "breaker": "closed"}
    assert body["upstreams"]["down"]["status"] == "unavailable" and down not in json.dumps(body)


async def test_single_upstream_block_is_the_one_entry_case(upstream, gateway, http):
    """The classic config: every model goes to the one upstream, under its own name."""
    for model in ("anything", "vendor/model"):
        await post(http, gateway, {"model": model, "input": "hi"})
    assert [r.body["model"] for r in upstream.requests] == ["anything", "vendor/model"]
