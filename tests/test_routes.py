"""HTTP routes over real servers: responses (streaming and not), errors, passthrough, probes, logs."""
from __future__ import annotations

import json
import re
from typing import Any

import pytest

from .conftest import assert_valid_stream, free_port, gateway_process
from .helpers import events_of, post, post_stream
from .scripted_upstream import Reply, chunk, error_reply, sse, text_reply, tool_reply, usage

ROOT_KEYS = ("id", "created_at", "completed_at")


def normalise(response: dict[str, Any]) -> dict[str, Any]:
    """Drop what legitimately differs between two runs: ids and timestamps."""
    out = {k: v for k, v in response.items() if k not in ROOT_KEYS}
    out["output"] = [{k: v for k, v in item.items() if k != "id"} for item in response["output"]]
    return out


def terminal_of(raw: bytes) -> dict[str, Any]:
    return events_of(raw)[-1]


def assert_error(response: Any, raw: bytes, status: int, err_type: str, param: str | None = None,
                 code: str | None = None, message: str | None = None) -> dict[str, Any]:
    assert response.status == status, raw
    assert response.content_type == "application/json"
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == err_type
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    if message is not None:
        assert error["message"] == message
    assert isinstance(error["message"], str) and error["message"]
    assert response.headers.get("X-Request-ID")
    return error


# ---------------------------------------------------------------------------------------- responses
async def test_non_streaming_returns_the_terminal_response(upstream, gateway, http):
    upstream.enqueue(text_reply("Hel", "lo"), text_reply("Hel", "lo"))
    body = {"model": "scripted", "input": "hi", "instructions": "Be nice.", "metadata": {"a": "b"},
            "temperature": 0.2}
    response, raw = await post(http, gateway, body)
    assert response.status == 200 and response.content_type == "application/json"
    final = json.loads(raw)
    _, streamed = await post_stream(http, gateway, body)
    assert_valid_stream(streamed)
    terminal = terminal_of(streamed)
    assert terminal["type"] == "response.completed"
    assert normalise(final) == normalise(terminal["response"])
    assert final["id"].startswith("resp_") and final["object"] == "response"
    assert final["status"] == "completed" and final["model"] == "scripted"
    assert final["instructions"] == "Be nice." and final["metadata"] == {"a": "b"} and final["temperature"] == 0.2
    assert [o["type"] for o in final["output"]] == ["message"]
    assert final["output"][0]["content"][0]["text"] == "Hello"
    assert final["usage"]["input_tokens"] == 5 and final["usage"]["output_tokens"] == 7
    assert final["usage"]["total_tokens"] == 12


async def test_non_streaming_tool_call(upstream, gateway, http):
    upstream.enqueue(tool_reply("get_weather", '{"city": "Paris"}', call_id="call_xyz"))
    response, raw = await post(http, gateway, {"model": "scripted", "input": "weather?",
                                               "tools": [{"type": "function", "name": "get_weather"}]})
    final = json.loads(raw)
    assert response.status == 200
    call = final["output"][0]
    assert call["type"] == "function_call" and call["name"] == "get_weather"
    assert call["arguments"] == '{"city": "Paris"}' and call["call_id"] == "call_xyz"
    assert call["status"] == "completed" and call["id"].startswith("fc_")


async def test_non_streaming_incomplete_is_200(upstream, gateway, http):
    upstream.enqueue(text_reply("trunc", finish="length"))
    response, raw = await post(http, gateway, {"model": "scripted", "input": "hi", "max_output_tokens": 1})
    final = json.loads(raw)
    assert response.status == 200
    assert final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["max_output_tokens"] == 1
    assert upstream.requests[0].body["max_tokens"] == 1


async def test_non_streaming_inband_error_is_an_error_envelope(upstream, gateway, http):
    upstream.enqueue(Reply([sse(chunk({"content": "x"}), {"error": {"message": "engine died", "code": 500}})]))
    response, raw = await post(http, gateway, {"model": "scripted", "input": "hi"})
    assert_error(response, raw, 502, "upstream_error", code="upstream_error", message="engine died")


async def test_streaming_inband_error_is_response_failed(upstream, gateway, http):
    upstream.enqueue(Reply([sse(chunk({"content": "x"}), {"error": {"message": "engine died"}})]))
    response, raw = await post_stream(http, gateway, {})
    assert response.status == 200
    result = assert_valid_stream(raw)
    assert result["status"] == "failed"
    assert result["error"] == {"code": "upstream_error", "message": "engine died"}
    assert result["text"] == "x"


async def test_upstream_receives_translated_request(upstream, gateway, http):
    await post(http, gateway, {"model": "scripted", "input": [{"role": "developer", "content": "D"},
                                                              {"role": "user", "content": "U"}]})
    body = upstream.requests[0].body
    assert body["messages"] == [{"role": "system", "content": "D"}, {"role": "user", "content": "U"}]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


# ---------------------------------------------------------------------------------------- client errors
async def test_invalid_json(gateway, http, upstream):
    response, raw = await post(http, gateway, b'{"model": "m", "input": ')
    assert_error(response, raw, 400, "invalid_request_error", None, code="invalid_json")
    assert upstream.requests == []


@pytest.mark.parametrize("body, param", [
    ({"input": "hi"}, "model"),
    ({"model": "scripted"}, "input"),
    ({"model": "scripted", "input": "hi", "temperature": "hot"}, "temperature"),
    ({"model": "scripted", "input": "hi", "max_output_tokens": "ten"}, "max_output_tokens"),
    ({"model": "scripted", "input": [{"role": "user", "content": 3}]}, "input[0].content"),
    ({"model": "scripted", "input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"model": "scripted", "input": "hi", "stream": "yes"}, "stream"),
])
async def test_bad_requests_name_the_param(gateway, http, upstream, body, param):
    response, raw = await post(http, gateway, body)
    assert_error(response, raw, 400, "invalid_request_error", param)
    assert upstream.requests == []


async def test_body_not_an_object(gateway, http):
    response, raw = await post(http, gateway, b"[1, 2]")
    assert_error(response, raw, 400, "invalid_request_error", None)


async def test_unknown_path_and_method_in_envelope(gateway, http):
    async with http.get(gateway.make_url("/v1/nope")) as response:
        assert_error(response, await response.read(), 404, "invalid_request_error")
    async with http.put(gateway.make_url("/v1/responses")) as response:
        error = assert_error(response, await response.read(), 405, "invalid_request_error")
        assert "POST" in error["message"]


async def test_hosted_tool_rejected_by_config(make_gateway, http, upstream):
    gateway = await make_gateway(upstream={"hosted_tools": "reject"})
    response, raw = await post(http, gateway, {"model": "scripted", "input": "hi", "tools": [{"type": "web_search"}]})
    assert_error(response, raw, 400, "invalid_request_error", "tools[0].type")


# ---------------------------------------------------------------------------------------- upstream errors
@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_http_error_keeps_status_and_message(upstream, gateway, http, stream):
    upstream.enqueue(error_reply(404, "The model `nope` does not exist.", code="model_not_found"))
    response, raw = await post(http, gateway, {"model": "nope", "input": "hi", "stream": stream})
    assert_error(response, raw, 404, "invalid_request_error", code="model_not_found",
                 message="The model `nope` does not exist.")


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_429_keeps_retry_after(upstream, gateway, http, stream):
    upstream.enqueue(error_reply(429, "Rate limit reached, try again in 7s.", **{"Retry-After": "7"}))
    response, raw = await post(http, gateway, {"model": "scripted", "input": "hi", "stream": stream})
    assert_error(response, raw, 429, "invalid_request_error", code="rate_limit_exceeded",
                 message="Rate limit reached, try again in 7s.")
    assert response.headers["Retry-After"] == "7"


async def test_upstream_500_with_text_body(upstream, gateway, http):
    upstream.enqueue(Reply([b"model runner crashed"], status=500, headers={"Content-Type": "text/plain"}))
    response, raw = await post(http, gateway, {"model": "scripted", "input": "hi", "stream": True})
    error = assert_error(response, raw, 500, "upstream_error")
    assert "model runner crashed" in error["message"]


async def test_upstream_unreachable_is_502(make_gateway, http):
    gateway = await make_gateway(upstream={"base_url": f"http://127.0.0.1:{free_port()}/v1"})
    for stream in (False, True):
        response, raw = await post(http, gateway, {"model": "scripted", "input": "hi", "stream": stream})
        error = assert_error(response, raw, 502, "upstream_error", code="upstream_unavailable")
        assert "127.0.0.1" not in error["message"]  # the address is for the log only
        assert response.headers["X-Request-ID"] in error["message"]


# ---------------------------------------------------------------------------------------- request ids
async def test_request_id_accepted_returned_and_forwarded(upstream, gateway, http):
    response, _ = await post(http, gateway, {"model": "scripted", "input": "hi"},
                             headers={"X-Request-ID": "client-req-42"})
    assert response.headers["X-Request-ID"] == "client-req-42"
    assert upstream.requests[0].headers["X-Request-ID"] == "client-req-42"
    response, raw = await post_stream(http, gateway, {}, headers={"X-Request-ID": "client-req-43"})
    assert response.headers["X-Request-ID"] == "client-req-43"
    assert upstream.requests[1].headers["X-Request-ID"] == "client-req-43"
    assert_valid_stream(raw)


async def test_request_id_generated_when_missing_or_invalid(upstream, gateway, http):
    response, _ = await post(http, gateway, {"model": "scripted", "input": "hi"})
    generated = response.headers["X-Request-ID"]
    assert re.fullmatch(r"req_[0-9a-f]{24}", generated)
    assert upstream.requests[0].headers["X-Request-ID"] == generated
    response, _ = await post(http, gateway, {"model": "scripted", "input": "hi"},
                             headers={"X-Request-ID": "bad id with spaces"})
    assert response.headers["X-Request-ID"] != "bad id with spaces"
    assert upstream.requests[1].headers["X-Request-ID"] == response.headers["X-Request-ID"]
    assert response.headers["X-Request-ID"] != generated


async def test_request_id_on_errors(gateway, http):
    response, raw = await post(http, gateway, {"input": "hi"}, headers={"X-Request-ID": "err-1"})
    assert response.headers["X-Request-ID"] == "err-1"


# ---------------------------------------------------------------------------------------- passthrough
async def test_chat_completions_passthrough_streaming_bytes_unchanged(upstream, gateway, http):
    wire = (b": ping\n\n" + sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}),
                                chunk({}, finish="stop"), chunk(choices=False, usage=usage()), eol="\r\n")
            + b"data: {\"weird\": true}\n\n")
    upstream.enqueue(Reply([wire[:30], wire[30:]]))
    client_body = {"model": "scripted", "stream": True, "messages": [{"role": "user", "content": "hi"}],
                   "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
                   "tool_choice": "auto", "vendor_extension": {"x": 1}}
    response, raw = await post(http, gateway, json.dumps(client_body), path="/v1/chat/completions",
                               headers={"X-Request-ID": "pt-1"})
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["X-Request-ID"] == "pt-1"
    assert raw == wire
    assert upstream.requests[0].body == client_body
    assert upstream.requests[0].headers["X-Request-ID"] == "pt-1"


async def test_chat_completions_passthrough_non_streaming(upstream, gateway, http):
    document = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":' \
               b'{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],  "usage":null}'
    upstream.enqueue(Reply([document], headers={"Content-Type": "application/json"}))
    response, raw = await post(http, gateway, {"model": "scripted", "messages": [{"role": "user", "content": "x"}]},
                               path="/v1/chat/completions")
    assert response.status == 200 and response.content_type == "application/json"
    assert raw == document


async def test_chat_completions_passthrough_upstream_error(upstream, gateway, http):
    upstream.enqueue(error_reply(429, "slow down", **{"Retry-After": "3"}))
    response, raw = await post(http, gateway, {"model": "scripted", "messages": []}, path="/v1/chat/completions")
    assert response.status == 429
    assert response.headers["Retry-After"] == "3"
    assert json.loads(raw)["error"]["message"] == "slow down"


async def test_chat_completions_upstream_unreachable(make_gateway, http):
    gateway = await make_gateway(upstream={"base_url": f"http://127.0.0.1:{free_port()}/v1"})
    response, raw = await post(http, gateway, {"model": "m", "messages": []}, path="/v1/chat/completions")
    assert_error(response, raw, 502, "upstream_error", code="upstream_unavailable")


# ---------------------------------------------------------------------------------------- probes
async def test_models(upstream, gateway, http):
    async with http.get(gateway.make_url("/v1/models"), headers={"X-Request-ID": "m-1"}) as response:
        assert response.status == 200
        assert await response.json() == upstream.model_list
        assert response.headers["X-Request-ID"] == "m-1"


async def test_healthz(gateway, http):
    async with http.get(gateway.make_url("/healthz")) as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}


async def test_readyz(upstream, gateway, http):
    async with http.get(gateway.make_url("/readyz")) as response:
        assert response.status == 200
        body = await response.json()
        assert body == {"status": "ready", "upstreams": {"default": {"status": "ready", "upstream_status": 200,
                                                                     "breaker": "closed"}}}


async def test_readyz_upstream_down(make_gateway, http):
    gateway = await make_gateway(upstream={"base_url": f"http://127.0.0.1:{free_port()}/v1"})
    async with http.get(gateway.make_url("/readyz")) as response:
        assert response.status == 503
        assert (await response.json())["status"] == "unavailable"
    async with http.get(gateway.make_url("/healthz")) as response:
        assert response.status == 200


async def test_readyz_upstream_5xx(aiohttp_server, make_gateway, http):
    from aiohttp import web

    async def models(request: web.Request) -> web.Response:
        return web.Response(status=500)
    broken = web.Application()
    broken.router.add_get("/v1/models", models)
    server = await aiohttp_server(broken, host="127.0.0.1")
    gateway = await make_gateway(upstream={"base_url": str(server.make_url("/v1"))})
    async with http.get(gateway.make_url("/readyz")) as response:
        assert response.status == 503
        assert (await response.json())["upstreams"]["default"]["upstream_status"] == 500


# ---------------------------------------------------------------------------------------- keys and logs
async def test_configured_api_key_goes_upstream(upstream, make_gateway, http):
    gateway = await make_gateway(upstream={"api_key": "sk-configured-1234"})
    await post(http, gateway, {"model": "scripted", "input": "hi"}, headers={"Authorization": "Bearer client-key"})
    assert upstream.requests[0].headers["Authorization"] == "Bearer sk-configured-1234"


async def test_client_key_forwarded_without_configured_key(upstream, gateway, http):
    await post(http, gateway, {"model": "scripted", "input": "hi"}, headers={"Authorization": "Bearer client-key"})
    assert upstream.requests[0].headers["Authorization"] == "Bearer client-key"
    await post(http, gateway, {"model": "scripted", "messages": []}, path="/v1/chat/completions",
               headers={"Authorization": "Bearer client-key-2"})
    assert upstream.requests[1].headers["Authorization"] == "Bearer client-key-2"


async def test_response_finished_log_line(upstream, make_gateway, http, log_capture):
    lines = log_capture("info")
    gateway = await make_gateway(log_level="info")
    prompt = "PROMPT-TEXT-must-not-be-logged"
    upstream.enqueue(text_reply("Hel", "lo", use=usage(13, 17)))
    response, raw = await post_stream(http, gateway, {"input": prompt, "instructions": "INSTRUCTIONS-secret"},
                                      headers={"X-Request-ID": "log-req-1"})
    result = assert_valid_stream(raw)
    finished = [line for line in lines() if line["event"] == "response.finished"]
    assert len(finished) == 1
    line = finished[0]
    assert line["level"] == "info"
    assert line["request_id"] == "log-req-1"
    assert line["model"] == "scripted"
    assert line["upstream"] == "default" and line["failed_first"] is None and line["key"] is None
    assert line["http_status"] == 200
    assert line["status"] == "completed"
    assert line["finish_reason"] == "stop"
    assert isinstance(line["ttft_ms"], (int, float)) and line["ttft_ms"] >= 0
    assert isinstance(line["duration_ms"], (int, float)) and line["duration_ms"] >= line["ttft_ms"]
    assert line["events"] == result["events"]
    assert line["input_tokens"] == 13 and line["output_tokens"] == 17
    assert line["client_disconnected"] is False
    text = lines.raw.getvalue().decode()
    assert prompt not in text and "INSTRUCTIONS-secret" not in text and "Hello" not in text


async def test_response_finished_for_upstream_error(upstream, make_gateway, http, log_capture):
    lines = log_capture("info")
    gateway = await make_gateway(log_level="info")
    upstream.enqueue(error_reply(429, "slow down", **{"Retry-After": "1"}))
    await post(http, gateway, {"model": "scripted", "input": "hi"}, headers={"X-Request-ID": "log-req-2"})
    finished = [line for line in lines() if line["event"] == "response.finished"]
    assert len(finished) == 1
    assert finished[0]["request_id"] == "log-req-2"
    assert finished[0]["http_status"] == 429
    assert finished[0]["error_code"] == "rate_limit_exceeded"


async def test_warnings_logged_without_prompt(upstream, make_gateway, http, log_capture):
    lines = log_capture("info")
    gateway = await make_gateway(log_level="info")
    upstream.enqueue(tool_reply("f", "{not json"))
    await post(http, gateway, {"model": "scripted", "input": "PROMPT-xyz",
                               "tools": [{"type": "function", "name": "f"}, {"type": "web_search"}]})
    warnings = [line["warning"] for line in lines() if line["event"] == "response.warning"]
    assert len(warnings) == 2
    assert "web_search" in warnings[0] and "not valid JSON" in warnings[1]
    assert "PROMPT-xyz" not in lines.raw.getvalue().decode()


async def test_api_key_never_logged_even_at_debug(upstream, http):
    """A real `gateway serve` at debug level: the configured and the client's keys never reach the log."""
    secret, client_secret = "sk-upstream-SECRET-9f8e7d", "sk-client-SECRET-1a2b3c"
    async with gateway_process("--config", "config.yaml", "--log-level", "debug",
                               env={"UPSTREAM_BASE_URL": upstream.url, "UPSTREAM_API_KEY": secret,
                                    "GATEWAY_STORE_URL": "memory:"}) as gw:
        upstream.enqueue(text_reply("Hi"))
        async with http.post(f"{gw.url}/v1/responses", json={"model": "scripted", "input": "hi", "stream": True},
                             headers={"Authorization": f"Bearer {client_secret}", "X-Request-ID": "dbg-1"}) as r:
            raw = await r.read()
        assert_valid_stream(raw)
        async with http.post(f"{gw.url}/v1/chat/completions", json={"model": "scripted", "messages": []},
                             headers={"Authorization": f"Bearer {client_secret}"}) as r:
            await r.read()
        async with http.get(f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {client_secret}"}) as r:
            await r.read()
    assert [rec.headers["Authorization"] for rec in upstream.requests] == [f"Bearer {secret}"] * 2
    output = gw.output
    assert "upstream.chunk" in output and "response.event" in output  # debug logging was on
    assert '"response.finished"' in output and '"dbg-1"' in output
    assert secret not in output and client_secret not in output
    assert "SECRET" not in output


async def test_internal_crash_after_stream_start_ends_with_response_failed(upstream, gateway, http, monkeypatch):
    """A gateway bug mid-stream must not leave the client waiting: response.failed, then the stream ends."""
    from gateway.stream_processor import ResponseStream

    def crash(self: Any, chunk: Any) -> Any:
        raise RuntimeError("simulated bug")
    monkeypatch.setattr(ResponseStream, "feed", crash)
    upstream.enqueue(text_reply("Hi"))
    response, raw = await post_stream(http, gateway, {})
    assert response.status == 200
    result = assert_valid_stream(raw)
    assert result["status"] == "failed" and result["error"]["code"] == "server_error"
    assert "simulated bug" not in raw.decode()


async def test_bug_in_the_processor_is_a_logged_server_error(upstream, make_gateway, http, log_capture, monkeypatch):
    """Not `upstream_protocol_error` without a trace: the crash handler logs the traceback, the client gets
    `server_error` and the request id to look it up."""
    from gateway.stream_processor import ResponseStream

    def bug(self: Any, text: str, part_type: str) -> None:
        raise KeyError("simulated bug")
    monkeypatch.setattr(ResponseStream, "_text_delta", bug)
    lines = log_capture("info")
    gateway = await make_gateway(log_level="info")
    upstream.enqueue(text_reply("Hi"))
    response, raw = await post_stream(http, gateway, {}, headers={"X-Request-ID": "bug-1"})
    result = assert_valid_stream(raw)
    assert result["status"] == "failed" and result["error"]["code"] == "server_error"
    assert "bug-1" in result["error"]["message"] and "simulated" not in result["error"]["message"]
    crashed = [line for line in lines() if line["event"] == "pipeline.crashed"]
    assert len(crashed) == 1 and crashed[0]["request_id"] == "bug-1"
    assert "KeyError: 'simulated bug'" in crashed[0]["exception"]


async def test_terminal_that_cannot_be_encoded_is_replaced_by_one_that_can(upstream, gateway, http, monkeypatch):
    """Whatever goes wrong while the terminal event is encoded, the client still gets a terminal event."""
    import gateway.stream_processor as processor

    real = processor.map_usage
    monkeypatch.setattr(processor, "map_usage", lambda usage, warnings=None: {**real(usage), "x": 2 ** 70})
    upstream.enqueue(text_reply("Hi"))
    response, raw = await post_stream(http, gateway, {})
    result = assert_valid_stream(raw)  # sequence numbers run on by one into the salvaged terminal
    assert result["status"] == "failed" and result["error"]["code"] == "server_error"
    assert result["text"] == "Hi"


async def test_rejected_request_still_leaves_one_log_line(gateway, http):
    import structlog
    with structlog.testing.capture_logs() as logs:
        async with http.post(gateway.make_url("/v1/responses"), json={"model": "m", "input": 5}) as response:
            assert response.status == 400
    finished = [entry for entry in logs if entry["event"] == "response.finished"]
    assert len(finished) == 1
    assert finished[0]["http_status"] == 400
    assert finished[0]["param"] == "input"
