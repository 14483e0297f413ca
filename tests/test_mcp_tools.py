"""Remote MCP tools run by the gateway inside one response (gateway/tools): a real MCP server
(tests/mcp_server.py) on 127.0.0.1, a scripted upstream that calls its tools and then answers with
their results, and the openai SDK (strict) streaming and not."""
from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import orjson
import pytest
from openai.types.responses import Response

from gateway.app import create_app
from gateway.config import McpConfig, ToolsConfig
from gateway.tools.egress import check_addresses, is_public

from .conftest import assert_valid_stream, gateway_config
from .helpers import events_of, post, post_stream, sdk
from .mcp_server import running_mcp_server
from .scripted_upstream import Reply, chunk, sse, text_reply, tool_reply, usage


@pytest.fixture
async def mcp_server() -> Any:
    async with running_mcp_server() as server:
        yield server


@pytest.fixture
def tools_gateway(aiohttp_server: Any, upstream: Any, mcp_server: Any) -> Any:
    async def start(allowed: tuple[str, ...] | None = None, store: str = "memory:", **tools: Any) -> Any:
        port = mcp_server.url.split(":")[2].split("/")[0]
        patterns = (f"http://127.0.0.1:{port}/*",) if allowed is None else allowed
        config = dataclasses.replace(gateway_config(upstream.url, store={"url": store}),
                                     tools=ToolsConfig(mcp=McpConfig(allowed_servers=patterns), **tools))
        return await aiohttp_server(create_app(config), host="127.0.0.1")
    return start


async def post_json(http: Any, gateway: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response, raw = await post(http, gateway, body)
    return response.status, orjson.loads(raw)


def mcp_tool(server: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "calc", "server_url": server.url, "require_approval": "never", **extra}


def calls_reply(*calls: tuple[str, str]) -> Reply:
    """One sample calling several tools at once (parallel tool calls)."""
    chunks = [chunk({"role": "assistant", "content": None, "tool_calls": [
        {"index": i, "id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
        for i, (name, arguments) in enumerate(calls)]}), chunk({}, finish="tool_calls"),
        chunk(choices=False, usage=usage())]
    return Reply([sse(*chunks)])


def answer_with_results(body: dict[str, Any]) -> Reply:
    """The second sample: the model answers with what the tools said."""
    results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
    return text_reply("results: " + " | ".join(results))


async def test_listed_then_called_streaming(tools_gateway: Any, upstream: Any, mcp_server: Any) -> None:
    gateway = await tools_gateway()
    upstream.enqueue(tool_reply("mcp__calc__add", '{"a": 2, "b": 3}'))
    upstream.responder = answer_with_results
    client = sdk(str(gateway.make_url("")))
    async with client.responses.stream(model="m", input="what is 2+3?", tools=[mcp_tool(mcp_server)]) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert [item.type for item in final.output] == ["mcp_list_tools", "mcp_call", "message"]
    listed, call, message = final.output
    assert {tool.name for tool in listed.tools} == {"add", "sleep", "fail", "big", "whoami"}
    assert (call.name, call.server_label, call.arguments, call.output, call.error) == \
        ("add", "calc", '{"a": 2, "b": 3}', "5", None)
    assert message.content[0].text == "results: 5"
    assert final.status == "completed"
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.total_tokens) == (10, 14, 24)
    for kind in ("response.mcp_list_tools.in_progress", "response.mcp_list_tools.completed",
                 "response.mcp_call_arguments.delta", "response.mcp_call_arguments.done",
                 "response.mcp_call.in_progress", "response.mcp_call.completed"):
        assert kind in kinds
    assert "response.function_call_arguments.delta" not in kinds
    assert kinds.count("response.completed") == 1 and kinds[-1] == "response.completed"
    first, second = (r.body for r in upstream.requests)
    assert "mcp__calc__add" in {t["function"]["name"] for t in first["tools"]}
    assert second["messages"][-2]["tool_calls"][0]["function"] == {"name": "mcp__calc__add",
                                                                   "arguments": '{"a": 2, "b": 3}'}
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": "call_abc123", "content": "5"}
    assert mcp_server.calls == [("add", 2, 3)]


async def test_stream_is_valid_and_numbered_on(tools_gateway: Any, upstream: Any, http: Any, mcp_server: Any) -> None:
    gateway = await tools_gateway()
    upstream.enqueue(tool_reply("mcp__calc__add", '{"a": 1, "b": 1}'))
    upstream.responder = answer_with_results
    response, raw = await post_stream(http, gateway, {"model": "m", "input": "hi", "tools": [mcp_tool(mcp_server)]})
    assert response.status == 200
    assert_valid_stream(raw)
    events = events_of(raw)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    added = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    assert added == [0, 1, 2]


async def test_not_streaming(tools_gateway: Any, upstream: Any, mcp_server: Any) -> None:
    gateway = await tools_gateway()
    upstream.enqueue(tool_reply("mcp__calc__add", '{"a": 20, "b": 22}'))
    upstream.responder = answer_with_results
    response = await sdk(str(gateway.make_url(""))).responses.create(
        model="m", input="sum", tools=[mcp_tool(mcp_server, headers={"X-Secret": "s3"}, authorization="tok")])
    assert response.output[1].output == "42"
    assert response.output[2].content[0].text == "results: 42"
    echoed = response.tools[0].model_dump()
    assert echoed.get("headers") is None and echoed.get("authorization") is None


async def test_authorization_reaches_the_server(tools_gateway: Any, upstream: Any, mcp_server: Any) -> None:
    gateway = await tools_gateway()
    upstream.enqueue(tool_reply("mcp__calc__whoami", "{}"))
    upstream.responder = answer_with_results
    response = await sdk(str(gateway.make_url(""))).responses.create(
        model="m", input="who", tools=[mcp_tool(mcp_server, authorization="tok-123")])
    assert response.output[1].output == "Bearer tok-123"


async def test_parallel_calls_run_concurrently(tools_gateway: Any, upstream: Any, mcp_server: Any) -> None:
    gateway = await tools_gateway()
    upstream.enqueue(calls_reply(("mcp__calc__sleep", '{"seconds": 0.6}'), ("mcp__calc__sleep", '{"seconds": 0.6}')))
    upstream.responder = answer_with_results
    began = time.monotonic()
    response = await sdk(str(gateway.make_url(""))).responses.create(
        model="m", input="nap twice", tools=[mcp_tool(mcp_server)])
    took = time.monotonic() - began
    assert [item.type for item in response.output] == ["mcp_list_tools", "mcp_call", "mcp_call", "message"]
    assert response.output[3].content[0].text == "results: slept 0.6 | slept 0.6"
    assert took < 1.15, f"two 0.6 s calls took {took:.2f} s: not concurrent"


async def test_failing_tool_is_told_to_the_model(tools_gateway: Any, upstream: Any, mcp_server: Any) -> None:
    gateway = await tools_gateway()
    upstream.enqueue(tool_reply("mcp__calc__fail", '{"reason": "because"}'))
    upstream.responder = answer_with_results
    response = await sdk(str(gateway.make_url(""))).responses.create(
        model="m", input="fail", tools=[mcp_tool(mcp_server)])
    call = response.output[1]
    assert call.status == "failed" and call.output is None
    assert call.error.type == "mcp_tool_execution_error"
    told = upstream.requests[1].body["messages"][-1]["content"]
    assert told.startswith("The tool call failed") and "fail" in told
    assert response.status == "completed"
    # Replayed from history, the failed call reads as the model was told it then.
    upstream.responder = None
    await sdk(str(gateway.make_url(""))).responses.create(model="m", input="and now?", previous_response_id=response.id,
                                                          tools=[mcp_tool(mcp_server)])
    replayed = [m for m in upstream.requests[-1].body["messages"] if m["role"] == "tool"]
    assert [m["content"] for m in replayed] == [told]


async def test_timeout_and_oversized_result(tools_gateway: Any, upstream: Any, mcp_server: Any) -> None:
    port = mcp_server.url.split(":")[2].split("/")[0]
    config = dataclasses.replace(gateway_config(upstream.url), tools=ToolsConfig(mcp=McpConfig(
        allowed_servers=(f"http://127.0.0.1:{port}/*",), call_timeout=0.3, max_result_bytes=1000)))
    upstream.enqueue(calls_reply(("mcp__calc__sleep", '{"seconds": 3}'), ("mcp__calc__big", '{"size": 5000}')))
    upstream.responder = answer_with_results
    async with _served(config) as url:
        began = time.monotonic()
        response = await sdk(url).responses.create(model="m", input="x", tools=[mcp_tool(mcp_server)])
    assert time.monotonic() - began < 2.5
    slow, big = response.output[1], response.output[2]
    assert slow.status == big.status == "failed"
    assert "did not answer within 0.3s" in slow.error.message
    assert "larger than 1000 bytes" in big.error.message


def assert_ended_by_bound(response: Any, statuses: list[str], said: str) -> None:
    """A response a bound ended (strict SDK model): `incomplete` for `max_messages`, its `mcp_call` items in
    `statuses`, the unrun ones with the error naming the bound."""
    assert (response.status, response.incomplete_details.reason) == ("incomplete", "max_messages")
    calls = [item for item in response.output if item.type == "mcp_call"]
    assert [call.status for call in calls] == statuses
    for call in calls:
        if call.status == "incomplete":
            assert call.output is None and call.error.message == f"Not run: {said}."
        else:
            assert call.output is not None and call.error is None


async def test_max_tool_calls_ends_the_response_streaming(tools_gateway: Any, upstream: Any, http: Any,
                                                          mcp_server: Any, log_capture: Any) -> None:
    lines = log_capture()
    gateway = await tools_gateway()
    upstream.enqueue(calls_reply(("mcp__calc__add", '{"a": 1, "b": 2}'), ("mcp__calc__add", '{"a": 3, "b": 4}')),
                     tool_reply("mcp__calc__add", '{"a": 5, "b": 6}'))
    client = sdk(str(gateway.make_url("")))
    stream = await client.responses.create(model="m", input="x", max_tool_calls=2, tools=[mcp_tool(mcp_server)],
                                           stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events].count("response.incomplete") == 1 and events[-1].type == "response.incomplete"
    final = events[-1].response
    assert [item.type for item in final.output] == ["mcp_list_tools", "mcp_call", "mcp_call", "mcp_call"]
    assert_ended_by_bound(final, ["completed", "completed", "incomplete"],
                          "the request's max_tool_calls (2) was reached")
    assert sorted(mcp_server.calls) == [("add", 1, 2), ("add", 3, 4)]  # run concurrently
    assert len(upstream.requests) == 2  # no sample after the bound
    finished = [line for line in lines() if line.get("event") == "response.finished"][-1]
    assert (finished["status"], finished["incomplete_reason"], finished["tool_calls"]) == \
        ("incomplete", "max_tool_calls", 2)
    stored = await client.responses.retrieve(final.id)  # the store keeps what the stream said
    assert stored.model_dump() == final.model_dump()
    # A continuation sends the unrun call as a call with an error output: the history stays valid.
    upstream.enqueue(text_reply("ok"))
    await client.responses.create(model="m", input="go on", previous_response_id=final.id,
                                  tools=[mcp_tool(mcp_server)])
    messages = upstream.requests[-1].body["messages"]
    unrun = final.output[3]
    call = next(m for m in messages if m.get("tool_calls") and m["tool_calls"][0]["id"] == unrun.id)
    assert call["tool_calls"][0]["function"] == {"name": "mcp__calc__add", "arguments": '{"a": 5, "b": 6}'}
    told = messages[messages.index(call) + 1]
    assert told["role"] == "tool" and told["tool_call_id"] == unrun.id
    assert told["content"].startswith("The tool call failed") and "max_tool_calls (2) was reached" in told["content"]


async def test_max_tool_calls_ends_the_response_not_streaming(tools_gateway: Any, upstream: Any,
                                                              mcp_server: Any) -> None:
    gateway = await tools_gateway()
    upstream.enqueue(calls_reply(("mcp__calc__add", '{"a": 1, "b": 2}'), ("mcp__calc__add", '{"a": 3, "b": 4}')))
    response = await sdk(str(gateway.make_url(""))).responses.create(
        model="m", input="x", max_tool_calls=1, tools=[mcp_tool(mcp_server)])
    assert_ended_by_bound(response, ["incomplete", "incomplete"], "the request's max_tool_calls (1) was reached")
    assert mcp_server.calls == [] and len(upstream.requests) == 1


async def test_max_rounds_ends_the_response(tools_gateway: Any, upstream: Any, http: Any, mcp_server: Any,
                                            log_capture: Any) -> None:
    """Background and streamed: the event log resumed, the stored response and the JSON answer agree."""
    lines = log_capture()
    gateway = await tools_gateway(max_rounds=1)
    upstream.enqueue(tool_reply("mcp__calc__add", '{"a": 1, "b": 2}'), tool_reply("mcp__calc__add", '{"a": 3, "b": 4}'))
    body = {"model": "m", "input": "x", "stream": True, "background": True, "tools": [mcp_tool(mcp_server)]}
    response, raw = await post_stream(http, gateway, body)
    assert response.status == 200
    assert_valid_stream(raw)
    events = events_of(raw)
    assert events[-1]["type"] == "response.incomplete"
    response_id, middle = events[0]["response"]["id"], len(events) // 2
    async with http.get(gateway.make_url(f"/v1/responses/{response_id}"),
                        params={"stream": "true", "starting_after": str(middle)}) as resumed:
        assert events_of(await resumed.read()) == events[middle + 1:]
    async with http.get(gateway.make_url(f"/v1/responses/{response_id}")) as stored:
        assert await stored.json() == events[-1]["response"]
    assert_ended_by_bound(Response.model_validate(events[-1]["response"]), ["completed", "incomplete"],
                          "the gateway's tools.max_rounds (1) was reached")
    assert mcp_server.calls == [("add", 1, 2)] and len(upstream.requests) == 2
    finished = [line for line in lines() if line.get("event") == "response.finished"]
    assert any(line.get("incomplete_reason") == "max_rounds" for line in finished)


async def test_client_function_ends_the_response(tools_gateway: Any, upstream: Any, mcp_server: Any) -> None:
    gateway = await tools_gateway()
    upstream.enqueue(calls_reply(("mcp__calc__add", '{"a": 1, "b": 2}'), ("lookup", '{"q": "x"}')))
    response = await sdk(str(gateway.make_url(""))).responses.create(
        model="m", input="x", tools=[mcp_tool(mcp_server), {"type": "function", "name": "lookup",
                                                            "parameters": {"type": "object"}}])
    assert [item.type for item in response.output] == ["mcp_list_tools", "mcp_call", "function_call"]
    assert response.output[1].output == "3" and response.status == "completed"
    assert len(upstream.requests) == 1


async def test_names_cannot_collide_with_the_clients(tools_gateway: Any, upstream: Any, mcp_server: Any) -> None:
    gateway = await tools_gateway()
    upstream.enqueue(tool_reply("mcp__calc__add", '{"q": 1}'))
    response = await sdk(str(gateway.make_url(""))).responses.create(
        model="m", input="x", tools=[mcp_tool(mcp_server), {"type": "function", "name": "mcp__calc__add",
                                                            "parameters": {"type": "object"}}])
    names = [t["function"]["name"] for t in upstream.requests[0].body["tools"]]
    assert len(names) == len(set(names)) and names.count("mcp__calc__add") == 1
    assert [item.type for item in response.output] == ["mcp_list_tools", "function_call"]  # the client's own


async def test_allowed_tools_filter(tools_gateway: Any, upstream: Any, mcp_server: Any) -> None:
    gateway = await tools_gateway()
    client = sdk(str(gateway.make_url("")))
    response = await client.responses.create(model="m", input="x",
                                             tools=[mcp_tool(mcp_server, allowed_tools=["add", "big"])])
    assert {t.name for t in response.output[0].tools} == {"add", "big"}
    offered = {t["function"]["name"] for t in upstream.requests[0].body["tools"]}
    assert offered == {"mcp__calc__add", "mcp__calc__big"}
    await client.responses.create(model="m", input="x",
                                  tools=[mcp_tool(mcp_server, allowed_tools={"read_only": True})])
    assert {t["function"]["name"] for t in upstream.requests[1].body["tools"]} == {"mcp__calc__add"}


@pytest.mark.parametrize(("tool", "param", "words"), [
    ({"connector_id": "connector_gmail"}, "tools[0].connector_id", "connector"),
    ({"require_approval": "sometimes"}, "tools[0].require_approval", "expected 'always'"),
    ({"server_label": "9bad"}, "tools[0].server_label", "letters"),
])
async def test_bad_mcp_tools_are_400(tools_gateway: Any, http: Any, mcp_server: Any, tool: dict[str, Any],
                                     param: str, words: str) -> None:
    gateway = await tools_gateway()
    status, body = await post_json(http, gateway, {"model": "m", "input": "x", "tools": [mcp_tool(mcp_server, **tool)]})
    assert status == 400, body
    assert body["error"]["param"] == param and words in body["error"]["message"]


async def test_no_allowed_servers_refuses_every_mcp_tool(tools_gateway: Any, http: Any, upstream: Any,
                                                          mcp_server: Any) -> None:
    gateway = await tools_gateway(allowed=())
    status, body = await post_json(http, gateway, {"model": "m", "input": "x", "tools": [mcp_tool(mcp_server)]})
    assert status == 400 and "tools.mcp.allowed_servers" in body["error"]["message"]
    assert body["error"]["param"] == "tools[0].server_url" and not upstream.requests


async def test_server_outside_the_allow_list_is_refused(tools_gateway: Any, http: Any, upstream: Any,
                                                        mcp_server: Any) -> None:
    gateway = await tools_gateway()
    other = {"type": "mcp", "server_label": "x", "server_url": "http://127.0.0.2:9/mcp", "require_approval": "never"}
    status, body = await post_json(http, gateway, {"model": "m", "input": "x", "tools": [other]})
    assert status == 400 and "tools.mcp.allowed_servers" in body["error"]["message"]
    wildcard = await tools_gateway(allowed=("http://*",))  # a wildcard host never reaches loopback
    status, body = await post_json(http, wildcard, {"model": "m", "input": "x", "tools": [mcp_tool(mcp_server)]})
    assert status == 400 and "loopback" in body["error"]["message"] and not upstream.requests


# Past its threshold, a request would compact first: a token count, then a summary, both upstream calls.
_COMPACTING = {"context_management": [{"type": "compaction", "compact_threshold": 100}]}
_LONG = {"role": "user", "content": "plan the trip" + " lorem ipsum" * 200}


@pytest.mark.parametrize("compaction", [[], [{"type": "compaction_trigger"}]], ids=["threshold", "trigger"])
@pytest.mark.parametrize(("allowed", "extra", "words"), [
    ((), {}, "allows no MCP server"),
    (("http://*",), {}, "loopback"),  # refused on the server's address (egress.check_addresses)
    (None, {"input": [{"type": "mcp_approval_response", "approval_request_id": "mcpr_nope", "approve": True}]},
     "No MCP approval request"),
    (None, {"background": True, "store": False}, "store=true"),
], ids=["allow-list", "address", "approval", "background"])
async def test_refusals_come_before_any_upstream_call(tools_gateway: Any, http: Any, upstream: Any, mcp_server: Any,
                                                      compaction: list[Any], allowed: Any, extra: dict[str, Any],
                                                      words: str) -> None:
    """A request that compacts first is still refused before it: no summary is paid for."""
    gateway = await tools_gateway(allowed=allowed)
    body = {"model": "m", "tools": [mcp_tool(mcp_server)], **_COMPACTING, **extra,
            "input": [_LONG, *extra.get("input", ()), *compaction]}
    status, answer = await post_json(http, gateway, body)
    assert status == 400 and words in answer["error"]["message"], answer
    assert not upstream.requests


async def unlistable(tools_gateway: Any, upstream: Any, stream: bool, tool: dict[str, Any]) -> Any:
    """A response naming a server whose tools cannot be listed, through the strict SDK: its final response."""
    gateway = await tools_gateway(allowed=(tool["server_url"].rsplit("/", 1)[0] + "/*",))
    client = sdk(str(gateway.make_url("")))
    if not stream:
        return await client.responses.create(model="m", input="x", tools=[tool])
    async with client.responses.stream(model="m", input="x", tools=[tool]) as events:
        kinds = [event.type async for event in events]
        final = await events.get_final_response()
    assert "response.mcp_list_tools.failed" in kinds and "response.mcp_list_tools.completed" not in kinds
    assert kinds[-1] == "response.completed"
    return final


@pytest.mark.parametrize("stream", [False, True])
async def test_an_unlistable_server_is_an_item_error_told_to_the_model(tools_gateway: Any, upstream: Any,
                                                                       stream: bool) -> None:
    from .conftest import free_port
    port = free_port()
    tool = {"type": "mcp", "server_label": "gone", "server_url": f"http://127.0.0.1:{port}/mcp?token=s3cret",
            "require_approval": "never"}
    final = await unlistable(tools_gateway, upstream, stream, tool)
    listed, message = final.output
    assert (listed.type, listed.server_label, listed.tools) == ("mcp_list_tools", "gone", [])
    assert "Error retrieving tool list from MCP server: 'gone'" in listed.error and "s3cret" not in listed.error
    assert final.status == "completed" and message.content[0].text == "Hello"
    sent = upstream.requests[0].body
    assert "tools" not in sent
    assert sent["messages"][0]["role"] == "system" and "'gone' are unavailable" in sent["messages"][0]["content"]
    assert sent["messages"][-1]["role"] == "user"


async def test_history_mcp_call_reaches_the_model(tools_gateway: Any, upstream: Any, mcp_server: Any) -> None:
    gateway = await tools_gateway()
    upstream.enqueue(tool_reply("mcp__calc__add", '{"a": 2, "b": 2}'))
    upstream.responder = answer_with_results
    client = sdk(str(gateway.make_url("")))
    first = await client.responses.create(model="m", input="2+2", tools=[mcp_tool(mcp_server)])
    upstream.responder = None
    await client.responses.create(model="m", input="and again?", previous_response_id=first.id,
                                  tools=[mcp_tool(mcp_server)])
    messages = upstream.requests[-1].body["messages"]
    assert any(m.get("tool_calls") for m in messages)
    assert {"role": "tool", "tool_call_id": first.output[1].id, "content": "4"} in messages


async def test_an_earlier_listing_is_reused(tools_gateway: Any, upstream: Any, mcp_server: Any) -> None:
    gateway = await tools_gateway()
    client = sdk(str(gateway.make_url("")))
    first = await client.responses.create(model="m", input="hi", tools=[mcp_tool(mcp_server)])
    assert [item.type for item in first.output] == ["mcp_list_tools", "message"]
    second = await client.responses.create(model="m", input="again", previous_response_id=first.id,
                                           tools=[mcp_tool(mcp_server)])
    assert [item.type for item in second.output] == ["message"]  # not listed again
    offered = {t["function"]["name"] for t in upstream.requests[1].body["tools"]}
    assert "mcp__calc__add" in offered
    # A listing the client sends back (stateless, no store) counts too; one with an error does not.
    listed = first.output[0].model_dump()
    third = await client.responses.create(model="m", input=[listed, {"role": "user", "content": "x"}], store=False,
                                          tools=[mcp_tool(mcp_server)])
    assert [item.type for item in third.output] == ["message"]
    fourth = await client.responses.create(model="m", input=[{**listed, "error": "boom"}], store=False,
                                           tools=[mcp_tool(mcp_server)])
    assert [item.type for item in fourth.output] == ["mcp_list_tools", "message"]


# ---------------------------------------------------------------------- egress rules, in-process
def stub(addresses: dict[str, list[str]]) -> Any:
    async def resolve(host: str) -> list[str]:
        if host not in addresses:
            raise OSError("no such host")
        return addresses[host]
    return resolve


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                                     "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "0.0.0.0",
                                     "100.64.0.1", "224.0.0.1"])
def test_non_public_addresses(address: str) -> None:
    assert not is_public(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::1111", "::ffff:93.184.216.34"])
def test_public_addresses(address: str) -> None:
    assert is_public(address)


async def test_resolved_names_are_checked() -> None:
    patterns = ("https://*",)
    resolver = stub({"good.example": ["93.184.216.34"], "sneaky.example": ["93.184.216.34", "10.0.0.5"],
                     "metadata.example": ["169.254.169.254"]})
    await check_addresses("https://good.example/mcp", patterns, "p", resolver)
    for host in ("sneaky.example", "metadata.example", "missing.example"):
        with pytest.raises(Exception) as refused:
            await check_addresses(f"https://{host}/mcp", patterns, "p", resolver)
        assert "tools.mcp.allowed_servers" in refused.value.message  # type: ignore[attr-defined]
    for literal in ("https://[::1]/mcp", "https://10.0.0.1/mcp", "https://[::ffff:127.0.0.1]/mcp"):
        with pytest.raises(Exception):
            await check_addresses(literal, patterns, "p", resolver)


async def test_a_pattern_naming_a_private_host_allows_it() -> None:
    resolver = stub({"tools.internal": ["10.0.0.7"]})
    await check_addresses("http://tools.internal/mcp", ("http://tools.internal/*",), "p", resolver)
    with pytest.raises(Exception):
        await check_addresses("http://tools.internal/mcp", ("http://*.internal/*",), "p", resolver)


class _served:
    """A gateway with `config` on 127.0.0.1 for one block (aiohttp's own runner)."""

    def __init__(self, config: Any) -> None:
        self.config = config

    async def __aenter__(self) -> str:
        from aiohttp import web
        self.runner = web.AppRunner(create_app(self.config))
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.wait_for(self.runner.cleanup(), 10)


async def test_metrics_and_log_line(tools_gateway: Any, upstream: Any, http: Any, mcp_server: Any,
                                    log_capture: Any) -> None:
    lines = log_capture()
    gateway = await tools_gateway()
    upstream.enqueue(calls_reply(("mcp__calc__add", '{"a": 1, "b": 2}'), ("mcp__calc__fail", '{"reason": "r"}')))
    upstream.responder = answer_with_results
    await sdk(str(gateway.make_url(""))).responses.create(
        model="m", input="x", tools=[mcp_tool(mcp_server, authorization="very-secret-token")])
    async with http.get(gateway.make_url("/metrics")) as response:
        text = await response.text()
    assert 'gateway_tool_calls_total{outcome="completed",server="127.0.0.1"} 1.0' in text
    assert 'gateway_tool_calls_total{outcome="mcp_tool_execution_error",server="127.0.0.1"} 1.0' in text
    assert "gateway_tool_rounds_count 1.0" in text
    finished = [line for line in lines() if line.get("event") == "response.finished"]
    assert finished[-1]["tool_rounds"] == 1 and finished[-1]["tool_calls"] == 2
    assert b"very-secret-token" not in lines.raw.getvalue()


async def run_calc_agent(tools_gateway: Any, upstream: Any, mcp_server: Any, arguments: str, question: str,
                         max_turns: int, require_approval: str, **hosted: Any) -> Any:
    """The Agents SDK's HostedMCPTool for the test server through the gateway, the model calling `add` with
    `arguments` then answering with the results: the run's result."""
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)
    gateway = await tools_gateway()
    upstream.enqueue(tool_reply("mcp__calc__add", arguments))
    upstream.responder = answer_with_results
    model = agents.OpenAIResponsesModel(model="m", openai_client=sdk(str(gateway.make_url(""))))
    tool = agents.HostedMCPTool(tool_config={"type": "mcp", "server_label": "calc", "server_url": mcp_server.url,
                                             "require_approval": require_approval}, **hosted)
    agent = agents.Agent(name="calc", instructions="Add with the tools.", model=model, tools=[tool])
    return await agents.Runner.run(agent, question, max_turns=max_turns)


async def test_agents_sdk_hosted_mcp_tool(tools_gateway: Any, upstream: Any, mcp_server: Any) -> None:
    result = await run_calc_agent(tools_gateway, upstream, mcp_server, '{"a": 40, "b": 2}', "What is 40 + 2?",
                                  max_turns=3, require_approval="never")
    assert result.final_output == "results: 42"
    kinds = [item.type for item in result.new_items]
    assert "mcp_list_tools_item" in kinds and "tool_call_item" in kinds
    assert mcp_server.calls == [("add", 40, 2)]


async def test_background_cancel_mid_call(tools_gateway: Any, upstream: Any, http: Any, mcp_server: Any) -> None:
    gateway = await tools_gateway()
    upstream.enqueue(tool_reply("mcp__calc__sleep", '{"seconds": 20}'))
    status, queued = await post_json(http, gateway, {"model": "m", "input": "x", "background": True,
                                                     "tools": [mcp_tool(mcp_server)]})
    assert status == 200 and queued["status"] == "queued"
    for _ in range(200):
        if mcp_server.calls:
            break
        await asyncio.sleep(0.02)
    assert mcp_server.calls == [("sleep", 20)]
    began = time.monotonic()
    async with http.post(gateway.make_url(f"/v1/responses/{queued['id']}/cancel")) as response:
        cancelled = await response.json()
    assert response.status == 200 and cancelled["status"] == "cancelled"
    assert time.monotonic() - began < 2
    call = cancelled["output"][1]
    assert (call["type"], call["name"], call["status"]) == ("mcp_call", "sleep", "incomplete")
    assert len(upstream.requests) == 1  # no second sample after the cancel


async def disconnect_mid_call(http: Any, gateway: Any, upstream: Any, server: Any, seconds: float) -> None:
    """A streaming response whose model calls `sleep`; the client goes away once the call runs."""
    upstream.enqueue(tool_reply("mcp__calc__sleep", f'{{"seconds": {seconds}}}'))
    body = {"model": "m", "input": "x", "stream": True, "tools": [mcp_tool(server)]}
    async with http.post(gateway.make_url("/v1/responses"), json=body) as response:
        async for line in response.content:
            if b"response.mcp_call.in_progress" in line:
                break


async def test_client_disconnect_mid_call_stops_the_loop(tools_gateway: Any, upstream: Any, http: Any,
                                                         mcp_server: Any) -> None:
    gateway = await tools_gateway()
    await disconnect_mid_call(http, gateway, upstream, mcp_server, 1)
    await asyncio.sleep(1.5)  # past the call's end: a loop still running would sample again
    assert len(upstream.requests) == 1


async def test_redirect_to_an_unlisted_port_is_not_followed(tools_gateway: Any, upstream: Any, http: Any,
                                                            mcp_server: Any, aiohttp_server: Any) -> None:
    from aiohttp import web
    hits: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.method)
        raise web.HTTPTemporaryRedirect(mcp_server.url)

    app = web.Application()
    app.router.add_route("*", "/mcp", redirect)
    redirector = await aiohttp_server(app, host="127.0.0.1")
    gateway = await tools_gateway(allowed=(f"http://127.0.0.1:{redirector.port}/*",))
    tool = {"type": "mcp", "server_label": "calc", "server_url": str(redirector.make_url("/mcp")),
            "require_approval": "never"}
    response = await sdk(str(gateway.make_url(""))).responses.create(model="m", input="x", tools=[tool])
    assert hits and response.output[0].error and [item.type for item in response.output] == ["mcp_list_tools",
                                                                                            "message"]
    assert mcp_server.handshakes == []  # the redirect was not followed
    assert "tools" not in upstream.requests[0].body


async def approval_round(tools_gateway: Any, upstream: Any, mcp_server: Any, approve: bool,
                         stream: bool) -> tuple[Any, Any]:
    """A call that needs approval, then the next request answering it by previous_response_id."""
    gateway = await tools_gateway()
    upstream.enqueue(tool_reply("mcp__calc__add", '{"a": 5, "b": 6}'))
    client = sdk(str(gateway.make_url("")))
    tool = mcp_tool(mcp_server, require_approval={"always": {"tool_names": ["add"]}})
    first = await client.responses.create(model="m", input="5+6", tools=[tool])
    upstream.responder = answer_with_results
    answer = [{"type": "mcp_approval_response", "approval_request_id": first.output[1].id, "approve": approve}]
    if stream:
        async with client.responses.stream(model="m", input=answer, previous_response_id=first.id,
                                           tools=[tool]) as events:
            [event async for event in events]
            second = await events.get_final_response()
    else:
        second = await client.responses.create(model="m", input=answer, previous_response_id=first.id, tools=[tool])
    return first, second


@pytest.mark.parametrize("stream", [False, True])
async def test_approval_round_trip(tools_gateway: Any, upstream: Any, mcp_server: Any, stream: bool) -> None:
    first, second = await approval_round(tools_gateway, upstream, mcp_server, True, stream)
    assert [item.type for item in first.output] == ["mcp_list_tools", "mcp_approval_request"]
    request = first.output[1]
    assert (request.name, request.server_label, request.arguments) == ("add", "calc", '{"a": 5, "b": 6}')
    assert first.status == "completed" and len(upstream.requests) == 2  # one sample per response
    told = upstream.requests[1].body["messages"]
    assert told[-2]["tool_calls"][0] == {"id": request.id, "type": "function",
                                         "function": {"name": "mcp__calc__add", "arguments": '{"a": 5, "b": 6}'}}
    assert told[-1] == {"role": "tool", "tool_call_id": request.id, "content": "11"}
    assert [item.type for item in second.output] == ["mcp_call", "message"]  # the chain's listing is reused
    call = second.output[0]
    assert (call.approval_request_id, call.output, call.status) == (request.id, "11", "completed")
    assert second.output[1].content[0].text == "results: 11"
    assert mcp_server.calls == [("add", 5, 6)]


async def test_denied_approval_is_told_to_the_model(tools_gateway: Any, upstream: Any, mcp_server: Any) -> None:
    first, second = await approval_round(tools_gateway, upstream, mcp_server, False, False)
    assert [item.type for item in second.output] == ["message"]
    assert second.output[0].content[0].text == "results: The user denied this call: it was not run."
    assert mcp_server.calls == []


async def test_approval_for_an_unknown_request_is_400(tools_gateway: Any, http: Any, mcp_server: Any) -> None:
    gateway = await tools_gateway()
    answer = [{"type": "mcp_approval_response", "approval_request_id": "mcpr_nope", "approve": True}]
    status, body = await post_json(http, gateway, {"model": "m", "input": answer, "tools": [mcp_tool(mcp_server)]})
    assert status == 400 and body["error"]["param"] == "input[0].approval_request_id"


@pytest.mark.parametrize("stream", [False, True])
async def test_approved_calls_count_toward_max_tool_calls(tools_gateway: Any, upstream: Any, http: Any,
                                                          mcp_server: Any, stream: bool) -> None:
    """Approved, a call is a tool call of the response that runs it: past that response's max_tool_calls it is not
    run, and the response ends incomplete like at any bound, with no sample. Within it, it runs and counts."""
    gateway = await tools_gateway()
    upstream.enqueue(calls_reply(("mcp__calc__add", '{"a": 1, "b": 2}'), ("mcp__calc__add", '{"a": 3, "b": 4}')))
    client = sdk(str(gateway.make_url("")))
    tool = mcp_tool(mcp_server, require_approval={"always": {"tool_names": ["add"]}})
    first = await client.responses.create(model="m", input="two sums", tools=[tool])
    asked = [item for item in first.output if item.type == "mcp_approval_request"]
    assert len(asked) == 2 and len(upstream.requests) == 1
    answers = [{"type": "mcp_approval_response", "approval_request_id": item.id, "approve": True} for item in asked]
    request = {"model": "m", "input": answers, "previous_response_id": first.id, "tools": [tool], "max_tool_calls": 1}
    if stream:
        events = [event async for event in await client.responses.create(**request, stream=True)]
        assert [e.type for e in events].count("response.incomplete") == 1 and events[-1].type == "response.incomplete"
        second = events[-1].response
        response, raw = await post_stream(http, gateway, request, headers={"Authorization": "Bearer sk-alice"})
        assert response.status == 200 and assert_valid_stream(raw)["status"] == "incomplete"
    else:
        second = await client.responses.create(**request)
    assert [item.type for item in second.output] == ["mcp_call", "mcp_call"]
    assert [call.approval_request_id for call in second.output] == [item.id for item in asked]
    assert_ended_by_bound(second, ["incomplete", "incomplete"], "the request's max_tool_calls (1) was reached")
    assert mcp_server.calls == [] and len(upstream.requests) == 1  # neither run, no sample
    assert (await client.responses.retrieve(second.id)).model_dump() == second.model_dump()
    # Within the bound they run, and count: the model's next call (one needing no approval) is past it.
    upstream.enqueue(tool_reply("mcp__calc__whoami", "{}"))
    third = await client.responses.create(**{**request, "max_tool_calls": 2, "previous_response_id": first.id})
    assert_ended_by_bound(third, ["completed", "completed", "incomplete"],
                          "the request's max_tool_calls (2) was reached")
    assert sorted(mcp_server.calls) == [("add", 1, 2), ("add", 3, 4)] and len(upstream.requests) == 2


async def test_agents_sdk_on_approval_request(tools_gateway: Any, upstream: Any, mcp_server: Any) -> None:
    asked: list[str] = []

    def on_approval(request: Any) -> dict[str, Any]:
        asked.append(request.data.name)
        return {"approve": True}

    result = await run_calc_agent(tools_gateway, upstream, mcp_server, '{"a": 7, "b": 8}', "What is 7 + 8?",
                                  max_turns=4, require_approval="always", on_approval_request=on_approval)
    assert asked == ["add"]
    assert result.final_output == "results: 15"
    assert mcp_server.calls == [("add", 7, 8)]


async def test_approval_answered_on_another_instance(tools_gateway: Any, upstream: Any, mcp_server: Any,
                                                     redis_url: str) -> None:
    """Two gateways sharing Redis: the approval request made by one is answered through the other."""
    first_gateway, second_gateway = await tools_gateway(store=redis_url), await tools_gateway(store=redis_url)
    tool = mcp_tool(mcp_server, require_approval="always")
    upstream.enqueue(tool_reply("mcp__calc__add", '{"a": 1, "b": 41}'))
    first = await sdk(str(first_gateway.make_url(""))).responses.create(model="m", input="1+41", tools=[tool])
    assert first.output[1].type == "mcp_approval_request"
    upstream.responder = answer_with_results
    answer = [{"type": "mcp_approval_response", "approval_request_id": first.output[1].id, "approve": True}]
    second = await sdk(str(second_gateway.make_url(""))).responses.create(
        model="m", input=answer, previous_response_id=first.id, tools=[tool])
    assert second.output[0].approval_request_id == first.output[1].id and second.output[0].output == "42"
    assert mcp_server.calls == [("add", 1, 41)]


async def test_background_resumed_across_a_tool_call(tools_gateway: Any, upstream: Any, http: Any,
                                                     mcp_server: Any) -> None:
    gateway = await tools_gateway()
    upstream.enqueue(tool_reply("mcp__calc__sleep", '{"seconds": 0.5}'))
    upstream.responder = answer_with_results
    body = {"model": "m", "input": "x", "stream": True, "background": True, "tools": [mcp_tool(mcp_server)]}
    seen: list[dict[str, Any]] = []
    async with http.post(gateway.make_url("/v1/responses"), json=body) as response:
        async for line in response.content:
            if line.startswith(b"data: {"):
                seen.append(orjson.loads(line[6:]))
                if seen[-1]["type"] == "response.mcp_call.in_progress":
                    break
    response_id, last = seen[0]["response"]["id"], seen[-1]["sequence_number"]
    async with http.get(gateway.make_url(f"/v1/responses/{response_id}"),
                        params={"stream": "true", "starting_after": str(last)}) as response:
        rest = events_of(await response.read())
    assert rest[0]["sequence_number"] == last + 1
    assert [e["sequence_number"] for e in rest] == list(range(last + 1, last + 1 + len(rest)))
    assert rest[-1]["type"] == "response.completed"
    output = rest[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["mcp_list_tools", "mcp_call", "message"]
    assert output[1]["output"] == "slept 0.5"


def test_capture_scrubs_an_mcp_tools_credentials() -> None:
    from gateway.capture import scrub
    tool = {"type": "mcp", "server_label": "x", "headers": {"X-Token": "t0ken"}, "authorization": "a-secret"}
    assert scrub({"tools": [tool]}, ()) == {"tools": [{**tool, "headers": "[redacted]", "authorization": "[redacted]"}]}


def test_tools_config() -> None:
    from gateway.config import ConfigError, parse_config
    tools = parse_config({"tools": {"max_rounds": 3, "mcp": {"allowed_servers": ["https://mcp.example.com/*"],
                                                              "call_timeout": 5}}}).tools
    assert (tools.max_rounds, tools.mcp.allowed_servers, tools.mcp.call_timeout, tools.mcp.idle_timeout) == \
        (3, ("https://mcp.example.com/*",), 5.0, 60.0)
    assert parse_config({}).tools.mcp.allowed_servers == ()
    for bad, words in (({"max_rounds": 0}, "tools.max_rounds"), ({"mcp": {"nope": 1}}, "tools.mcp.nope"),
                       ({"mcp": {"call_timeout": 0}}, "tools.mcp.call_timeout"), ({"rounds": 1}, "tools.rounds"),
                       ({"mcp": {"idle_timeout": 0}}, "tools.mcp.idle_timeout"),
                       ({"mcp": {"max_sessions": 0}}, "tools.mcp.max_sessions")):
        with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
            parse_config({"tools": bad})


async def test_over_the_websocket_transport(tools_gateway: Any, upstream: Any, http: Any, mcp_server: Any) -> None:
    from .test_websocket import assert_valid_turn, create, turn_events
    gateway = await tools_gateway()
    upstream.enqueue(tool_reply("mcp__calc__add", '{"a": 9, "b": 9}'))
    upstream.responder = answer_with_results
    async with http.ws_connect(gateway.make_url("/v1/responses")) as ws:
        await ws.send_str(orjson.dumps(create(tools=[mcp_tool(mcp_server)])).decode())
        events = await turn_events(ws)
    result = assert_valid_turn(events)
    assert result["status"] == "completed" and result["text"] == "results: 18"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    output = events[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["mcp_list_tools", "mcp_call", "message"]


async def test_gateway_keys_need_the_mcp_permission(aiohttp_server: Any, upstream: Any, http: Any,
                                                    mcp_server: Any) -> None:
    from gateway.config import AuthConfig, KeyConfig
    from gateway.keys import hash_key
    port = mcp_server.url.split(":")[2].split("/")[0]
    keys = (KeyConfig(name="plain", sha256=hash_key("k-plain")), KeyConfig(name="tools", sha256=hash_key("k-tools"),
                                                                            mcp=True))
    config = dataclasses.replace(gateway_config(upstream.url), auth=AuthConfig(keys=keys), tools=ToolsConfig(
        mcp=McpConfig(allowed_servers=(f"http://127.0.0.1:{port}/*",))))
    gateway = await aiohttp_server(create_app(config), host="127.0.0.1")
    body = {"model": "m", "input": "x", "tools": [mcp_tool(mcp_server)]}
    response, raw = await post(http, gateway, body, headers={"Authorization": "Bearer k-plain"})
    error = orjson.loads(raw)["error"]
    assert response.status == 403 and error["code"] == "mcp_not_allowed" and error["param"] == "tools[0]"
    for compacting in ({**body, **_COMPACTING, "input": [_LONG]}, {**body, "input": [_LONG, {"type": "compaction_trigger"}]}):
        response, raw = await post(http, gateway, compacting, headers={"Authorization": "Bearer k-plain"})
        assert response.status == 403 and orjson.loads(raw)["error"]["code"] == "mcp_not_allowed"
    assert not upstream.requests  # refused before a compaction's summary too
    response, raw = await post(http, gateway, body, headers={"Authorization": "Bearer k-tools"})
    assert response.status == 200 and orjson.loads(raw)["output"][0]["type"] == "mcp_list_tools"


async def test_operator_servers_by_label_alone(aiohttp_server: Any, upstream: Any, http: Any, mcp_server: Any,
                                               monkeypatch: Any) -> None:
    from gateway.config import parse_config
    monkeypatch.setenv("OPS_MCP_TOKEN", "from-the-environment")
    config = parse_config({"upstream": {"base_url": upstream.url, "retries": 0},
                           "mcp_servers": [{"label": "ops", "url": mcp_server.url,
                                            "headers": {"Authorization": "Bearer ${OPS_MCP_TOKEN}"}}]})
    gateway = await aiohttp_server(create_app(config), host="127.0.0.1")  # no allowed_servers: only the operator's
    upstream.enqueue(tool_reply("mcp__ops__whoami", "{}"))
    upstream.responder = answer_with_results
    tool = {"type": "mcp", "server_label": "ops", "require_approval": "never"}
    response = await sdk(str(gateway.make_url(""))).responses.create(model="m", input="who", tools=[tool])
    assert response.output[1].output == "Bearer from-the-environment"
    assert response.tools[0].model_dump(exclude_none=True) == {"type": "mcp", "server_label": "ops",
                                                               "require_approval": "never"}
    status, body = await post_json(http, gateway, {"model": "m", "input": "x",
                                                   "tools": [{**tool, "server_url": mcp_server.url}]})
    assert status == 400 and body["error"]["param"] == "tools[0].server_url"


def test_a_pattern_host_wildcard_stays_in_the_host() -> None:
    from gateway.tools.egress import matching_patterns
    patterns = ("https://*.example.com/*",)
    assert matching_patterns("https://mcp.example.com/mcp", patterns) == list(patterns)
    for url in ("https://evil.org/.example.com/mcp", "http://mcp.example.com/mcp", "https://example.com.evil.org/x"):
        assert matching_patterns(url, patterns) == [], url
    assert matching_patterns("http://127.0.0.1:8123/mcp", ("http://127.0.0.1:8123/*",))
    assert not matching_patterns("http://127.0.0.1:8124/mcp", ("http://127.0.0.1:8123/*",))
    assert matching_patterns("https://a.example/mcp", ("https://*",)) == ["https://*"]


async def test_approval_request_named_after_its_first_arguments(tools_gateway: Any, upstream: Any, mcp_server: Any,
                                                                http: Any) -> None:
    """A call whose name comes after its first fragment is still one whole approval request at its index."""
    gateway = await tools_gateway()
    upstream.enqueue(Reply([sse(
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"arguments": '{"a": 5, '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"name": "mcp__calc__add", "arguments": '"b": 6}'}}]}),
        chunk({}, finish="tool_calls"), chunk(choices=False, usage=usage()))]))
    tool = mcp_tool(mcp_server, require_approval={"always": {"tool_names": ["add"]}})
    response, raw = await post_stream(http, gateway, {"model": "m", "input": "5+6", "tools": [tool]})
    result = assert_valid_stream(raw)
    output = events_of(raw)[-1]["response"]["output"]
    assert result["status"] == "completed" and [item["type"] for item in output] == ["mcp_list_tools",
                                                                                    "mcp_approval_request"]
    assert output[1]["id"].startswith("mcpr") and output[1]["arguments"] == '{"a": 5, "b": 6}'
    assert not any(event.get("output_index") == -1 for event in events_of(raw))
