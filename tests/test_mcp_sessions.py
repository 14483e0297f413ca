"""MCP sessions across calls and responses (gateway/tools/mcp_pool.py), the SSE transport fallback, the
connections pinned to the addresses egress.py checked, and a fallback upstream of another kind getting the
listed tools: a real MCP server (tests/mcp_server.py) on 127.0.0.1, the gateway, the openai SDK (strict)."""
from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from typing import Any

import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.config import McpConfig, ToolsConfig
from gateway.state import STATE

from .conftest import gateway_config, routed_config, upstream_entry
from .helpers import sdk
from .mcp_server import running_mcp_server
from .scripted_upstream import error_reply, text_reply, tool_reply
from .test_mcp_tools import (answer_with_results, calls_reply, disconnect_mid_call, mcp_server,  # noqa: F401 (a fixture)
                             mcp_tool)


def tools_config(upstream: Any, *allowed: str, **mcp: Any) -> Any:
    return dataclasses.replace(gateway_config(upstream.url), tools=ToolsConfig(mcp=McpConfig(
        allowed_servers=allowed, **mcp)))


def allowing(server: Any) -> str:
    return f"http://127.0.0.1:{server.port}/*"


async def test_one_session_per_server_until_idle(aiohttp_server: Any, upstream: Any, mcp_server: Any) -> None:
    gateway = await aiohttp_server(create_app(tools_config(upstream, allowing(mcp_server), idle_timeout=0.6)),
                                   host="127.0.0.1")
    client = sdk(str(gateway.make_url("")))
    upstream.enqueue(tool_reply("mcp__calc__add", '{"a": 1, "b": 2}'), tool_reply("mcp__calc__add", '{"a": 3, "b": 4}'),
                     text_reply("done"), tool_reply("mcp__calc__add", '{"a": 5, "b": 6}'))
    upstream.responder = answer_with_results
    first = await client.responses.create(model="m", input="x", tools=[mcp_tool(mcp_server)])
    assert [item.type for item in first.output] == ["mcp_list_tools", "mcp_call", "mcp_call", "message"]
    second = await client.responses.create(model="m", input="y", tools=[mcp_tool(mcp_server)])
    assert second.output[1].output == "11"
    assert mcp_server.handshakes == ["server/discover"]  # two rounds and two responses: one session
    await asyncio.sleep(1.0)  # past the idle timeout: closed
    assert not STATE.get(gateway.app).mcp_sessions.sessions
    await client.responses.create(model="m", input="z", tools=[mcp_tool(mcp_server)])
    assert mcp_server.handshakes == ["server/discover"] * 2
    # Other headers are another session (never mixed: they may be another user's credentials).
    await client.responses.create(model="m", input="z", tools=[mcp_tool(mcp_server, authorization="t")])
    assert len(mcp_server.handshakes) == 3


async def test_a_full_pool_closes_the_session_idle_longest(aiohttp_server: Any, upstream: Any,
                                                           mcp_server: Any) -> None:
    gateway = await aiohttp_server(create_app(tools_config(upstream, allowing(mcp_server), max_sessions=1)),
                                   host="127.0.0.1")
    client, pool = sdk(str(gateway.make_url(""))), STATE.get(gateway.app).mcp_sessions
    await client.responses.create(model="m", input="x", tools=[mcp_tool(mcp_server, authorization="a")])
    [first] = pool.sessions.values()
    await client.responses.create(model="m", input="x", tools=[mcp_tool(mcp_server, authorization="b")])
    [second] = pool.sessions.values()
    await asyncio.wait_for(first.task, 5)  # closed to make room
    assert second is not first and not second.task.done()


async def test_parallel_calls_share_the_session_concurrently(aiohttp_server: Any, upstream: Any,
                                                             mcp_server: Any) -> None:
    gateway = await aiohttp_server(create_app(tools_config(upstream, allowing(mcp_server))), host="127.0.0.1")
    upstream.enqueue(calls_reply(*[("mcp__calc__sleep", '{"seconds": 0.6}')] * 3))
    upstream.responder = answer_with_results
    began = time.monotonic()
    response = await sdk(str(gateway.make_url(""))).responses.create(model="m", input="x",
                                                                      tools=[mcp_tool(mcp_server)])
    took = time.monotonic() - began
    assert [item.output for item in response.output[1:4]] == ["slept 0.6"] * 3
    assert took < 1.15, f"three 0.6 s calls took {took:.2f} s: not concurrent"
    assert mcp_server.handshakes == ["server/discover"]


async def test_a_call_cancelled_by_a_disconnect_leaves_the_session_usable(aiohttp_server: Any, upstream: Any,
                                                                           http: Any, mcp_server: Any) -> None:
    gateway = await aiohttp_server(create_app(tools_config(upstream, allowing(mcp_server))), host="127.0.0.1")
    await disconnect_mid_call(http, gateway, upstream, mcp_server, 5)
    await asyncio.sleep(0.2)
    upstream.enqueue(tool_reply("mcp__calc__add", '{"a": 2, "b": 2}'))
    upstream.responder = answer_with_results
    began = time.monotonic()
    after = await sdk(str(gateway.make_url(""))).responses.create(model="m", input="y", tools=[mcp_tool(mcp_server)])
    assert after.output[1].output == "4" and time.monotonic() - began < 2  # not queued behind the cancelled call
    assert mcp_server.handshakes == ["server/discover"]


async def test_sessions_close_with_the_app(upstream: Any, mcp_server: Any) -> None:
    from aiohttp.test_utils import TestServer
    app = create_app(tools_config(upstream, allowing(mcp_server)))
    async with TestServer(app, host="127.0.0.1") as gateway:
        await sdk(str(gateway.make_url(""))).responses.create(model="m", input="x", tools=[mcp_tool(mcp_server)])
        owners = [session.task for session in STATE.get(app).mcp_sessions.sessions.values()]
        assert len(owners) == 1 and not owners[0].done()
    assert owners[0].done() and not STATE.get(app).mcp_sessions.sessions


# ------------------------------------------------------------------------- the SSE transport fallback
async def test_a_legacy_sse_server_is_reached_over_sse(aiohttp_server: Any, upstream: Any) -> None:
    async with running_mcp_server(sse=True) as legacy:
        config = tools_config(upstream, allowing(legacy), idle_timeout=0.3)
        gateway = await aiohttp_server(create_app(config), host="127.0.0.1")
        client = sdk(str(gateway.make_url("")))
        for a in (1, 2):
            upstream.enqueue(tool_reply("mcp__calc__add", f'{{"a": {a}, "b": 40}}'))
            upstream.responder = answer_with_results
            response = await client.responses.create(model="m", input="x", tools=[mcp_tool(legacy)])
            assert response.output[0].error is None and response.output[1].output == str(a + 40)
            await asyncio.sleep(0.6)  # the session closes: the second response opens another
        assert legacy.calls == [("add", 1, 40), ("add", 2, 40)]
        assert legacy.requests.count(("GET", "/sse")) == 2  # two sessions
        opened = legacy.requests.index(("GET", "/sse"))
        assert ("POST", "/sse") in legacy.requests[:opened]  # streamable HTTP was tried first
        assert ("POST", "/sse") not in legacy.requests[opened:]  # then SSE was remembered


async def test_an_sse_endpoint_on_another_origin_is_not_posted_to(aiohttp_server: Any, upstream: Any) -> None:
    hits: list[str] = []

    async def decoy(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=202)

    async def events(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            raise web.HTTPMethodNotAllowed("POST", ["GET"])
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"event: endpoint\ndata: {elsewhere.make_url('/messages/?session_id=1')}\n\n".encode())
        await asyncio.sleep(2)
        return response

    decoy_app, sse_app = web.Application(), web.Application()
    decoy_app.router.add_route("*", "/{tail:.*}", decoy)
    sse_app.router.add_route("*", "/sse", events)
    elsewhere = await aiohttp_server(decoy_app, host="127.0.0.1")
    legacy = await aiohttp_server(sse_app, host="127.0.0.1")
    config = tools_config(upstream, f"http://127.0.0.1:{legacy.port}/*", connect_timeout=1)
    gateway = await aiohttp_server(create_app(config), host="127.0.0.1")
    tool = {"type": "mcp", "server_label": "calc", "server_url": str(legacy.make_url("/sse")),
            "require_approval": "never"}
    response = await sdk(str(gateway.make_url(""))).responses.create(model="m", input="x", tools=[tool])
    assert response.output[0].type == "mcp_list_tools" and "calc" in response.output[0].error
    assert hits == []


# ------------------------------------------------------------------------- DNS rebinding
async def test_connections_go_to_the_checked_address(aiohttp_server: Any, upstream: Any, monkeypatch: Any) -> None:
    """`rebind.test` resolves to 127.0.0.1 when checked and to 127.0.0.2 (a decoy on the same port) after:
    the connection must go to the checked address, never to the name resolved again."""
    hits: list[str] = []

    async def decoy(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=404)

    real = socket.getaddrinfo
    answers = iter(["127.0.0.1"])

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":
            return real(next(answers, "127.0.0.2"), *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    async with running_mcp_server(hosts=("rebind.test",)) as server:
        decoy_app = web.Application()
        decoy_app.router.add_route("*", "/{tail:.*}", decoy)
        await aiohttp_server(decoy_app, host="127.0.0.2", port=server.port)
        url = f"http://rebind.test:{server.port}/mcp"
        gateway = await aiohttp_server(create_app(tools_config(upstream, f"http://rebind.test:{server.port}/*")),
                                       host="127.0.0.1")
        upstream.enqueue(tool_reply("mcp__calc__add", '{"a": 20, "b": 22}'))
        upstream.responder = answer_with_results
        response = await sdk(str(gateway.make_url(""))).responses.create(
            model="m", input="x", tools=[{**mcp_tool(server), "server_url": url}])
    assert response.output[0].error is None and response.output[1].output == "42"
    assert hits == []


async def test_a_pinned_client_refuses_other_hosts() -> None:
    import httpx2

    from gateway.tools.egress import pinned_client
    async with pinned_client("http://rebind.test:9/mcp", ("127.0.0.1",), headers=None,
                             timeout=httpx2.Timeout(2)) as http:
        with pytest.raises(httpx2.ConnectError, match="not checked"):
            await http.get("http://localhost:9/")  # a redirect to another name would be this request


# ------------------------------------------------------------------------- failover to another kind
async def test_a_fallback_of_another_kind_is_offered_the_listed_tools(three_upstreams: Any, start_gateway: Any,
                                                                      mcp_server: Any) -> None:
    first, second, _ = three_upstreams
    config = routed_config([
        upstream_entry("first", first.url, models=["m"], fallbacks=["second"]),
        upstream_entry("second", second.url, max_tokens_param="max_completion_tokens")],
        tools={"mcp": {"allowed_servers": [allowing(mcp_server)]}})
    gateway = await start_gateway(config)
    first.enqueue(error_reply(503, "busy"))
    second.enqueue(tool_reply("mcp__calc__add", '{"a": 1, "b": 1}'))
    second.responder = answer_with_results
    first.responder = lambda body: error_reply(503, "busy")
    response = await sdk(str(gateway.make_url(""))).responses.create(model="m", input="x", max_output_tokens=99,
                                                                      tools=[mcp_tool(mcp_server)])
    assert [item.type for item in response.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert response.output[2].content[0].text == "results: 2"
    sent = second.requests[0].body
    assert sent["max_completion_tokens"] == 99  # translated for the second's options
    assert "mcp__calc__add" in {tool["function"]["name"] for tool in sent["tools"]}


@pytest.mark.parametrize("sse", [False, True])
async def test_a_restarted_server_gets_a_new_session(aiohttp_server: Any, upstream: Any, sse: bool) -> None:
    """A pooled session whose server went away (a legacy server's session is gone with it) is not used again."""
    async with running_mcp_server(sse=sse) as before:
        gateway = await aiohttp_server(create_app(tools_config(upstream, allowing(before))), host="127.0.0.1")
        client = sdk(str(gateway.make_url("")))
        await client.responses.create(model="m", input="x", tools=[mcp_tool(before)])
    async with running_mcp_server(sse=sse, port=before.port) as after:
        upstream.enqueue(tool_reply("mcp__calc__add", '{"a": 3, "b": 3}'))
        upstream.responder = answer_with_results
        response = await client.responses.create(model="m", input="y", tools=[mcp_tool(after)])
    assert response.output[0].error is None and response.output[1].output == "6"
