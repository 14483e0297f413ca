"""WebSocket mode: GET /v1/responses upgraded, driven by the openai SDK's `responses.connect()` and raw
aiohttp clients, over a real gateway and the scripted upstream."""
from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.check import check_events
from gateway.websocket import MAX_QUEUED

from .conftest import gateway_config
from .helpers import sdk
from .scripted_upstream import Reply, chunk, paced_reply, sse, text_reply, tool_reply
from .test_keys import ALICE, BOB, bearer, keyed_config

TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
TERMINAL = ("response.completed", "response.incomplete", "response.failed")


def ws_url(gateway: Any, path: str = "/v1/responses") -> Any:
    return gateway.make_url(path)


async def receive_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5) -> dict[str, Any]:
    message = await ws.receive(timeout=timeout)
    assert message.type is aiohttp.WSMsgType.TEXT, message
    return orjson.loads(message.data)


async def turn_events(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    """One turn's messages, to its terminal event or its error envelope."""
    events = []
    while True:
        event = await receive_json(ws)
        events.append(event)
        if event["type"] in TERMINAL or event["type"] == "error":
            return events


def assert_valid_turn(events: list[dict[str, Any]]) -> dict[str, Any]:
    """A turn's events pass the project's validator (as the SSE tests' streams do); its folded result."""
    violations, _, result = check_events(events)
    assert not violations, "\n".join(violations)
    return result


def create(**body: Any) -> dict[str, Any]:
    return {"type": "response.create", "model": "scripted", "input": "hi", "store": False, **body}


def assert_envelope(event: dict[str, Any], status: int, code: str, param: str | None = None) -> None:
    assert event["type"] == "error", event
    assert event["status"] == status, event
    assert event["error"]["code"] == code, event
    assert event["error"]["param"] == param, event
    assert event["error"]["message"] and "Traceback" not in event["error"]["message"]


# ---------------------------------------------------------------------------------- the openai SDK
async def test_sdk_tool_round_trip_then_reconnect(upstream, gateway):
    """store: false over one connection: the tool output continues the chain with only the new item;
    a new connection does not know the id (previous_response_not_found) and recovers with the full input."""
    import openai
    client = sdk(str(gateway.make_url("")).rstrip("/"))
    upstream.enqueue(tool_reply("get_weather", '{"city": "Paris"}'), text_reply("Sunny", " in Paris."))
    user = {"type": "message", "role": "user", "content": "Weather in Paris?"}
    async with client.responses.connect() as connection:
        await connection.response.create(model="scripted", store=False, tools=TOOLS, input=[user])
        events = [event async for event in _until_terminal(connection)]
        result = assert_valid_turn([event.model_dump(exclude_unset=True) for event in events])
        first = events[-1].response
        assert first.status == "completed" and result["status"] == "completed"
        call = next(item for item in first.output if item.type == "function_call")
        assert call.name == "get_weather" and call.arguments == '{"city": "Paris"}'
        output = {"type": "function_call_output", "call_id": call.call_id, "output": "22C, sunny"}
        await connection.response.create(model="scripted", store=False, tools=TOOLS, previous_response_id=first.id,
                                         input=[output])
        events = [event async for event in _until_terminal(connection)]
        assert [e.sequence_number for e in events] == list(range(len(events)))  # restarts at 0
        second = events[-1].response
        assert second.output_text == "Sunny in Paris." and second.previous_response_id == first.id
    messages = upstream.requests[1].body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]   # the whole chain went upstream
    assert messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"

    upstream.enqueue(text_reply("Still sunny."))
    async with client.responses.connect() as connection:
        await connection.response.create(model="scripted", store=False, previous_response_id=second.id,
                                         input=[{"type": "message", "role": "user", "content": "And tomorrow?"}])
        error = await connection.recv()
        assert error.type == "error" and error.status == 400
        assert error.error.code == "previous_response_not_found" and error.error.param == "previous_response_id"
        history = [user, call.model_dump(exclude_none=True), output,
                   {"type": "message", "role": "user", "content": "And tomorrow?"}]
        await connection.response.create(model="scripted", store=False, input=history)
        events = [event async for event in _until_terminal(connection)]
        assert events[-1].response.output_text == "Still sunny."
    assert [m["role"] for m in upstream.requests[2].body["messages"]] == ["user", "assistant", "tool", "user"]
    assert len(upstream.requests) == 3 and isinstance(openai.__version__, str)


async def _until_terminal(connection: Any) -> Any:
    async for event in connection:
        yield event
        if event.type in TERMINAL or event.type == "error":
            return


# ---------------------------------------------------------------------------------- raw clients
async def test_events_match_sse_and_validate(upstream, gateway, http):
    upstream.enqueue(text_reply("Hello", " world"))
    async with http.ws_connect(ws_url(gateway)) as ws:
        await ws.send_str(orjson.dumps(create()).decode())
        events = await turn_events(ws)
    result = assert_valid_turn(events)
    assert result["text"] == "Hello world" and result["status"] == "completed"
    assert events[0]["type"] == "response.created" and events[0]["sequence_number"] == 0
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


async def test_both_paths_and_long_messages_are_framed(upstream, make_gateway, http):
    """Fast-path batches, full-path events and frames past 125 and 65535 bytes arrive as valid JSON."""
    gateway = await make_gateway()
    long = "x" * 70000
    upstream.enqueue(paced_reply("a", "b" * 200, "c", gap=0.01), text_reply(long, "é" * 100))
    async with http.ws_connect(ws_url(gateway)) as ws:
        await ws.send_str(orjson.dumps(create()).decode())
        first = assert_valid_turn(await turn_events(ws))
        await ws.send_str(orjson.dumps(create()).decode())
        second = assert_valid_turn(await turn_events(ws))
    assert first["text"] == "a" + "b" * 200 + "c"
    assert second["text"] == long + "é" * 100


@pytest.mark.parametrize("send, status, code, param", [
    (lambda ws: ws.send_str("{not json"), 400, "invalid_json", None),
    (lambda ws: ws.send_bytes(orjson.dumps(create())), 400, "unsupported_message_type", None),
    (lambda ws: ws.send_str('{"type": "response.cancel"}'), 400, "unknown_message_type", "type"),
    (lambda ws: ws.send_str("[1, 2]"), 400, "unknown_message_type", "type"),
    (lambda ws: ws.send_str(orjson.dumps(create(stream=False)).decode()), 400, "unsupported_parameter", "stream"),
    (lambda ws: ws.send_str(orjson.dumps(create(stream="yes")).decode()), 400, "unsupported_parameter", "stream"),
    (lambda ws: ws.send_str(orjson.dumps(create(background=False)).decode()), 400, "unsupported_parameter",
     "background"),
    (lambda ws: ws.send_str(orjson.dumps(create(stream_options={"include_obfuscation": False})).decode()), 400,
     "unsupported_parameter", "stream_options"),
    (lambda ws: ws.send_str(orjson.dumps(create(generate="no")).decode()), 400, "invalid_request_error", "generate"),
    (lambda ws: ws.send_str(orjson.dumps(create(model=None)).decode()), 400, None, "model"),
])
async def test_bad_messages_get_an_envelope_and_the_connection_goes_on(upstream, gateway, http, send, status,
                                                                       code, param):
    upstream.enqueue(text_reply("fine"))
    async with http.ws_connect(ws_url(gateway)) as ws:
        await send(ws)
        error = await receive_json(ws)
        assert error["type"] == "error" and error["status"] == status and error["error"]["param"] == param, error
        if code != "invalid_request_error":
            assert error["error"]["code"] == code, error
        await ws.send_str(orjson.dumps(create()).decode())   # the same connection still works
        assert assert_valid_turn(await turn_events(ws))["text"] == "fine"


async def test_huge_message_gets_an_envelope_before_the_close(upstream, make_gateway, http):
    gateway = await make_gateway(max_body_bytes=4096)
    async with http.ws_connect(ws_url(gateway)) as ws:
        await ws.send_str(orjson.dumps(create(input="x" * 5000)).decode())
        assert_envelope(await receive_json(ws), 413, "request_too_large")
        closing = await ws.receive(timeout=5)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    assert not upstream.requests


async def test_turn_sent_while_another_runs_waits_its_turn(upstream, gateway, http):
    upstream.enqueue(paced_reply("one", "two", gap=0.1), text_reply("three"))
    async with http.ws_connect(ws_url(gateway)) as ws:
        await ws.send_str(orjson.dumps(create()).decode())
        await ws.send_str(orjson.dumps(create()).decode())
        first = await turn_events(ws)
        second = await turn_events(ws)
    assert assert_valid_turn(first)["text"] == "onetwo"
    assert assert_valid_turn(second)["text"] == "three"
    assert first[-1]["response"]["id"] != second[-1]["response"]["id"]


async def test_waiting_turns_are_bounded(upstream, gateway, http):
    """Past MAX_QUEUED waiting turns a message is refused (429) at once; the waiting ones still run."""
    upstream.enqueue(paced_reply("slow", gap=0.3))
    async with http.ws_connect(ws_url(gateway)) as ws:
        await ws.send_str(orjson.dumps(create()).decode())
        assert (await receive_json(ws))["type"] == "response.created"  # running: off the queue
        for _ in range(MAX_QUEUED + 1):  # MAX_QUEUED wait, one too many
            await ws.send_str(orjson.dumps(create()).decode())
        errors, completed = [], 0
        while completed < MAX_QUEUED + 1:
            message = await receive_json(ws)
            if message["type"] == "error":
                assert completed == 0  # refused at once, not when its turn would have come
                errors.append(message)
            completed += message["type"] == "response.completed"
    assert len(errors) == 1
    assert_envelope(errors[0], 429, "rate_limit_exceeded")
    assert len(upstream.requests) == MAX_QUEUED + 1


async def test_client_vanishing_mid_turn_closes_the_upstream(upstream, gateway, http, log_capture):
    lines = log_capture("info")
    upstream.enqueue(Reply([sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "x"}), done=False)],
                           end="hang"))
    async with http.ws_connect(ws_url(gateway)) as ws:
        await ws.send_str(orjson.dumps(create()).decode())
        while (await receive_json(ws))["type"] != "response.output_text.delta":
            pass
    for _ in range(100):
        if upstream.disconnects:
            break
        await asyncio.sleep(0.02)
    assert upstream.disconnects == 1
    for _ in range(100):
        finished = [line for line in lines() if line["event"] == "response.finished"]
        if finished:
            break
        await asyncio.sleep(0.02)
    assert finished[0]["client_disconnected"] is True and finished[0]["transport"] == "websocket"
    assert not [line for line in lines() if line.get("level") == "error"]


async def test_store_false_miss_and_eviction(upstream, gateway, http):
    """A continuation that fails (here the upstream's 400) evicts the id it continued: a retry misses."""
    upstream.enqueue(text_reply("first"), Reply([b'{"error": {"message": "bad", "type": "invalid_request_error"}}'],
                                                status=400, headers={"Content-Type": "application/json"}))
    async with http.ws_connect(ws_url(gateway)) as ws:
        await ws.send_str(orjson.dumps(create(previous_response_id="resp_unknown")).decode())
        assert_envelope(await receive_json(ws), 400, "previous_response_not_found", "previous_response_id")
        await ws.send_str(orjson.dumps(create()).decode())
        first = (await turn_events(ws))[-1]["response"]["id"]
        await ws.send_str(orjson.dumps(create(previous_response_id=first, input="more")).decode())
        failed = await receive_json(ws)
        assert failed["type"] == "error" and failed["status"] == 400
        await ws.send_str(orjson.dumps(create(previous_response_id=first, input="again")).decode())
        assert_envelope(await receive_json(ws), 400, "previous_response_not_found", "previous_response_id")
    assert len(upstream.requests) == 2


async def test_store_true_reads_older_ids_from_the_store(upstream, gateway, http):
    """Stored responses continue on another connection (the cache holds only this connection's latest)."""
    upstream.enqueue(text_reply("one"), text_reply("two"))
    async with http.ws_connect(ws_url(gateway)) as ws:
        await ws.send_str(orjson.dumps(create(store=True, input="first")).decode())
        first = (await turn_events(ws))[-1]["response"]["id"]
    async with http.ws_connect(ws_url(gateway)) as ws:
        await ws.send_str(orjson.dumps(create(store=True, previous_response_id=first, input="second")).decode())
        assert (await turn_events(ws))[-1]["response"]["status"] == "completed"
    contents = [m["content"] for m in upstream.requests[1].body["messages"]]
    assert contents == ["first", "one", "second"]


async def test_item_reference_into_the_connections_cache(upstream, gateway, http):
    """store: false: an `item_reference` names an item of the cached context, as a stored chain's would be."""
    upstream.enqueue(text_reply("Paris."), text_reply("ok"))
    async with http.ws_connect(ws_url(gateway)) as ws:
        await ws.send_str(orjson.dumps(create(input="capital of France?")).decode())
        first = (await turn_events(ws))[-1]["response"]
        reference = {"type": "item_reference", "id": first["output"][0]["id"]}
        await ws.send_str(orjson.dumps(create(previous_response_id=first["id"],
                                              input=[{"role": "user", "content": "again?"}, reference])).decode())
        second = (await turn_events(ws))[-1]["response"]
        assert second["status"] == "completed"
        await ws.send_str(orjson.dumps(create(previous_response_id=second["id"],
                                              input=[{"type": "item_reference", "id": "msg_nope"}])).decode())
        assert_envelope(await receive_json(ws), 404, None, "input[0].id")
    contents = [m["content"] for m in upstream.requests[1].body["messages"]]
    assert contents == ["capital of France?", "Paris.", "again?", "Paris."]


async def test_generate_false_warms_up_without_sampling(upstream, gateway, http):
    upstream.enqueue(text_reply("answer"))
    async with http.ws_connect(ws_url(gateway)) as ws:
        await ws.send_str(orjson.dumps(create(generate=False, instructions="Be brief.", input="context")).decode())
        events = await turn_events(ws)
        assert_valid_turn(events)
        warm = events[-1]["response"]
        assert warm["status"] == "completed" and warm["output"] == [] and warm["id"].startswith("resp_")
        assert not upstream.requests
        await ws.send_str(orjson.dumps(create(previous_response_id=warm["id"], instructions="Be brief.",
                                              input="question")).decode())
        assert (await turn_events(ws))[-1]["response"]["output"][0]["content"][0]["text"] == "answer"
    assert [m["content"] for m in upstream.requests[0].body["messages"]] == ["Be brief.", "context", "question"]


async def test_codex_turns_with_stream_true_run(upstream, gateway, http):
    # Codex CLI 0.169 with `supports_websockets = true`: a warm-up, then the turn, both with `stream: true`
    # (the specification says a client must not send it; OpenAI's endpoint and this gateway accept it).
    upstream.enqueue(text_reply("pong"))
    async with http.ws_connect(ws_url(gateway)) as ws:
        await ws.send_str(orjson.dumps(create(stream=True, generate=False, include=["reasoning.encrypted_content"],
                                              input=[{"type": "message", "role": "user", "content": "hi"}])).decode())
        warm = assert_valid_turn(await turn_events(ws))
        await ws.send_str(orjson.dumps(create(stream=True, previous_response_id=warm["id"], input=[])).decode())
        assert assert_valid_turn(await turn_events(ws))["text"] == "pong"
    assert "stream" in upstream.requests[0].body and len(upstream.requests) == 1


async def test_connection_age_limit(upstream, make_gateway, http):
    gateway = await make_gateway(websocket_max_age=0.3)
    upstream.enqueue(text_reply("in time"))
    async with http.ws_connect(ws_url(gateway)) as ws:
        await ws.send_str(orjson.dumps(create()).decode())
        assert (await turn_events(ws))[-1]["type"] == "response.completed"
        assert_envelope(await receive_json(ws, timeout=2), 400, "websocket_connection_limit_reached")
        closing = await ws.receive(timeout=2)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_plain_get_is_426_upgrade_required(gateway, http):
    async with http.get(gateway.make_url("/v1/responses")) as response:
        assert response.status == 426 and response.headers["Upgrade"] == "websocket"
        error = (await response.json())["error"]
        assert error["code"] == "upgrade_required" and error["type"] == "invalid_request_error"


async def test_log_line_per_turn(upstream, gateway, http, log_capture):
    lines = log_capture("info")
    upstream.enqueue(text_reply("logged"))
    async with http.ws_connect(ws_url(gateway)) as ws:
        await ws.send_str(orjson.dumps(create()).decode())
        response = (await turn_events(ws))[-1]["response"]
        await ws.send_str("nope")
        await receive_json(ws)
    finished = [line for line in lines() if line["event"] == "response.finished"]
    assert len(finished) == 2
    done, refused = finished
    assert done["transport"] == "websocket" and done["response_id"] == response["id"]
    assert done["status"] == "completed" and done["http_status"] == 200 and done["output_tokens"] == 7
    assert refused["transport"] == "websocket" and refused["error_code"] == "invalid_json"
    assert done["request_id"] != refused["request_id"]
    assert "logged" not in lines.raw.getvalue().decode()   # no output text at info level


# ---------------------------------------------------------------------------------- keys and slots
async def test_upgrade_needs_a_key_and_turns_check_its_models(upstream, start_gateway, http):
    gateway = await start_gateway(keyed_config(upstream.url))
    for headers in ({}, bearer("sk-wrong")):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws_url(gateway), headers=headers)
        assert refused.value.status == 401
    upstream.enqueue(text_reply("ok"))
    async with http.ws_connect(ws_url(gateway), headers=bearer(BOB)) as ws:
        await ws.send_str(orjson.dumps(create(model="big-1")).decode())
        assert_envelope(await receive_json(ws), 403, "model_not_allowed", "model")
        await ws.send_str(orjson.dumps(create(model="small-1")).decode())
        assert (await turn_events(ws))[-1]["type"] == "response.completed"
    assert upstream.requests[0].headers.get("Authorization") != bearer(BOB)["Authorization"]


async def test_connections_hold_stream_slots(upstream, start_gateway, http):
    """A connection holds one of its key's streams (bob: 1) and one of the gateway's, for its life."""
    gateway = await start_gateway(keyed_config(upstream.url))
    async with http.ws_connect(ws_url(gateway), headers=bearer(BOB)) as ws:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws_url(gateway), headers=bearer(BOB))
        assert refused.value.status == 429
        async with http.post(gateway.make_url("/v1/responses"), json={"model": "small-1", "input": "hi"},
                             headers=bearer(BOB)) as response:
            assert response.status == 429
        upstream.enqueue(text_reply("inside the slot"))
        await ws.send_str(orjson.dumps(create(model="small-1")).decode())
        assert (await turn_events(ws))[-1]["type"] == "response.completed"
    for _ in range(50):  # the slot comes back once the connection closed
        async with http.post(gateway.make_url("/v1/responses"), json={"model": "small-1", "input": "hi"},
                             headers=bearer(ALICE)) as response:
            if response.status == 200:
                break
    upstream.enqueue(text_reply("again"))
    async with http.ws_connect(ws_url(gateway), headers=bearer(BOB)) as ws:
        await ws.send_str(orjson.dumps(create(model="small-1")).decode())
        assert (await turn_events(ws))[-1]["type"] == "response.completed"


async def test_gateway_wide_limit_counts_connections(upstream, make_gateway, http):
    gateway = await make_gateway(max_concurrent_streams=1)
    async with http.ws_connect(ws_url(gateway)):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws_url(gateway))
        assert refused.value.status == 429
        async with http.post(gateway.make_url("/v1/responses"), json={"model": "scripted", "input": "hi"}) as response:
            assert response.status == 429


def test_config_key(upstream_url: str = "http://127.0.0.1:1/v1"):
    assert gateway_config(upstream_url).server.websocket_max_age == 3600
