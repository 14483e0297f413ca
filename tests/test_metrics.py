"""GET /metrics scraped and parsed with prometheus_client's own parser: counts match the requests made."""
from __future__ import annotations

import hashlib

from prometheus_client.parser import text_string_to_metric_families

from .conftest import assert_valid_stream, free_port, routed_config, upstream_entry
from .helpers import post_stream
from .scripted_upstream import error_reply, text_reply, usage
from .test_routes import post

KEY = "sk-gw-metrics-key-123"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def scrape(http, gateway) -> dict[tuple[str, frozenset], float]:
    async with http.get(gateway.make_url("/metrics")) as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels: str) -> float:
    """The sum over samples of `name` whose labels include `labels` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


async def test_metrics_count_the_requests_made(three_upstreams, start_gateway, http):
    alpha, beta, _ = three_upstreams
    config = routed_config([
        upstream_entry("alpha", alpha.url, models=["a-model"]),
        upstream_entry("beta", beta.url, models=["b-model"]),
        upstream_entry("down", f"http://127.0.0.1:{free_port()}/v1", models=["d-model"], fallbacks=["alpha"]),
    ], routing={"breaker_failures": 1},
        auth={"keys": [{"name": "team", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]})
    gateway = await start_gateway(config)
    auth = {"Authorization": f"Bearer {KEY}"}
    for _ in range(3):
        alpha.enqueue(text_reply("Hi", use=usage(5, 7)))
        response, raw = await post_stream(http, gateway, {"model": "a-model"}, headers=auth)
        assert_valid_stream(raw)
    beta.enqueue(error_reply(500, "boom"))
    response, _ = await post(http, gateway, {"model": "b-model", "input": "hi"}, headers=auth)
    assert response.status == 500
    response, _ = await post(http, gateway, {"model": "nope", "input": "hi"}, headers=auth)
    assert response.status == 404
    response, _ = await post(http, gateway, {"model": "a-model", "input": "hi"})
    assert response.status == 401
    alpha.enqueue(text_reply("Hi", use=usage(1, 2)))
    response, _ = await post(http, gateway, {"model": "d-model", "input": "hi"}, headers=auth)
    assert response.status == 200
    response, _ = await post(http, gateway, {"model": "a-model", "messages": []}, path="/v1/chat/completions",
                             headers=auth)
    assert response.status == 200
    response, _ = await post(http, gateway, {"model": "nope", "messages": []}, path="/v1/chat/completions",
                             headers=auth)
    assert response.status == 404

    samples = await scrape(http, gateway)
    requests = "gateway_requests_total"
    route = "/v1/responses"
    assert value(samples, requests, route=route, gen_ai_request_model="a-model", upstream="alpha", key="team",
                 http_status="200", outcome="completed") == 3
    assert value(samples, requests, route=route, gen_ai_request_model="b-model", upstream="beta",
                 http_status="500", outcome="error") == 1
    assert value(samples, requests, route=route, http_status="404", outcome="rejected") == 1
    assert value(samples, requests, http_status="401", outcome="rejected") == 1
    assert value(samples, requests, gen_ai_request_model="d-model", upstream="alpha", outcome="completed") == 1
    assert value(samples, requests, route="/v1/chat/completions", upstream="alpha", http_status="200") == 1
    assert value(samples, requests, route="/v1/chat/completions", http_status="404", outcome="rejected") == 1
    assert value(samples, requests) == 9

    tokens = "gen_ai_client_token_usage"
    assert value(samples, f"{tokens}_sum", gen_ai_request_model="a-model", gen_ai_token_type="input") == 15
    assert value(samples, f"{tokens}_sum", gen_ai_request_model="a-model", gen_ai_token_type="output") == 21
    assert value(samples, f"{tokens}_count", gen_ai_token_type="output") == 4
    assert value(samples, "gen_ai_server_time_to_first_token_seconds_count", gen_ai_request_model="a-model") == 3
    assert value(samples, "gen_ai_server_time_to_first_token_seconds_bucket", le="+Inf") == 4
    assert value(samples, "gen_ai_server_time_to_first_token_seconds_bucket", le="600.0") == 4
    assert value(samples, "gen_ai_server_request_duration_seconds_count", route=route) == 5
    assert value(samples, "gateway_upstream_errors_total", upstream="beta", error_type="upstream_error") == 1
    assert value(samples, "gateway_upstream_errors_total", upstream="down", error_type="upstream_unavailable") == 1
    assert value(samples, "gateway_failovers_total", from_upstream="down", to_upstream="alpha") == 1
    assert value(samples, "gateway_upstream_breaker_state", upstream="down", state="open") == 1
    assert value(samples, "gateway_upstream_breaker_state", upstream="alpha", state="closed") == 1
    assert value(samples, "gateway_upstream_breaker_opened_total", upstream="down") == 1
    assert value(samples, "gateway_open_streams") == 0


async def test_open_streams_gauge_while_a_stream_runs(upstream, gateway, http):
    import asyncio

    from .scripted_upstream import Reply, chunk, sse
    upstream.enqueue(Reply([sse(chunk({"role": "assistant", "content": "a"}), done=False), 0.5,
                            sse(chunk({}, finish="stop"))]))
    running = asyncio.ensure_future(post_stream(http, gateway, {}))
    while not upstream.requests:
        await asyncio.sleep(0.01)
    assert value(await scrape(http, gateway), "gateway_open_streams") == 1
    assert_valid_stream((await running)[1])
    assert value(await scrape(http, gateway), "gateway_open_streams") == 0


async def test_traceparent_and_request_id_go_upstream(upstream, gateway, http):
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=1", "X-Request-ID": "trace-req-1"}
    response, _ = await post(http, gateway, {"model": "m", "input": "hi"}, headers=headers)
    assert response.headers["X-Request-ID"] == "trace-req-1"
    response, _ = await post(http, gateway, {"model": "m", "messages": []}, path="/v1/chat/completions",
                             headers=headers)
    assert response.headers["X-Request-ID"] == "trace-req-1"
    for recorded in upstream.requests:
        assert recorded.headers["traceparent"] == TRACEPARENT and recorded.headers["tracestate"] == "vendor=1"
        assert recorded.headers["X-Request-ID"] == "trace-req-1"


async def test_metrics_off(upstream, make_gateway, http):
    gateway = await make_gateway(metrics=False)
    response, _ = await post(http, gateway, {"model": "m", "input": "hi"})
    assert response.status == 200
    async with http.get(gateway.make_url("/metrics")) as response:
        assert response.status == 404
