"""What one MCP tool round costs through the gateway, against calling the same MCP server directly.

    python -m bench.mcp_round [--requests 50] [--json]

(`make bench` runs it as its `mcp` scenario, bench/run.py.)

In one process, on 127.0.0.1: the `mcp` package's MCPServer (one `add` tool) over streamable HTTP, a
Chat Completions upstream answering at once (a tool call, then text), and the gateway. Three loads,
one request at a time, median wall milliseconds of each:

- `plain`: a response without tools (one sample);
- `round`: a response with the mcp tool that lists, calls `add` once and samples again;
- `direct`: what the round needs from the MCP server, called directly on one open session (list the
  tools, call `add`), as the gateway's pooled session does.

`round - plain - direct` is the second sample plus the loop's own work. Wall time only: the MCP
server, the upstream and the gateway share the process (and its CPU), so it is an upper bound.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import aiohttp
import uvicorn
from aiohttp import web
from mcp.server.mcpserver import MCPServer

from gateway.app import create_app
from gateway.config import Config, McpConfig, ServerConfig, ToolsConfig, UpstreamConfig
from gateway.log import configure_logging
from mcp import Client


def _sse(*chunks: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


async def _upstream(request: web.Request) -> web.Response:
    body = await request.json()
    offered = any(t["function"]["name"] == "mcp__calc__add" for t in body.get("tools", ()))
    if offered and body["messages"][-1]["role"] != "tool":
        call = {"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "mcp__calc__add", "arguments": '{"a": 1, "b": 2}'}}
        data = _sse(_chunk({"role": "assistant", "tool_calls": [call]}), _chunk({}, "tool_calls"))
    else:
        data = _sse(_chunk({"role": "assistant", "content": "3"}), _chunk({}, "stop"))
    return web.Response(body=data, content_type="text/event-stream")


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def _timed(n: int, once: Any) -> float:
    times = []
    for _ in range(n):
        began = time.perf_counter()
        await once()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


async def measure(requests: int) -> dict[str, float]:
    """Median wall milliseconds of `plain`, `round` and `direct` (see the module docstring)."""
    configure_logging("json", "warning")
    mcp = MCPServer("bench", log_level="WARNING")

    @mcp.tool()
    def add(a: int, b: int) -> str:
        return str(a + b)

    server = uvicorn.Server(uvicorn.Config(mcp.streamable_http_app(host="127.0.0.1"), host="127.0.0.1", port=0,
                                           log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    mcp_port = server.servers[0].sockets[0].getsockname()[1]
    mcp_url = f"http://127.0.0.1:{mcp_port}/mcp"
    upstream_app = web.Application()
    upstream_app.router.add_post("/v1/chat/completions", _upstream)
    upstream_runner, upstream_port = await _serve(upstream_app)
    config = Config(server=ServerConfig(log_level="warning"),
                    upstream=UpstreamConfig(base_url=f"http://127.0.0.1:{upstream_port}/v1", retries=0),
                    tools=ToolsConfig(mcp=McpConfig(allowed_servers=(f"http://127.0.0.1:{mcp_port}/*",))))
    gateway_runner, gateway_port = await _serve(create_app(config))
    url = f"http://127.0.0.1:{gateway_port}/v1/responses"
    tool = {"type": "mcp", "server_label": "calc", "server_url": mcp_url, "require_approval": "never"}
    try:
        async with aiohttp.ClientSession() as http, Client(mcp_url) as session:
            async def post(body: dict[str, Any]) -> None:
                async with http.post(url, json=body) as response:
                    assert response.status == 200, await response.text()
                    await response.read()

            async def direct() -> None:
                await session.list_tools()
                assert (await session.call_tool("add", {"a": 1, "b": 2})).content[0].text == "3"  # type: ignore[union-attr]

            plain_body = {"model": "m", "input": "1+2", "store": False}
            round_body = {**plain_body, "tools": [tool]}
            for _ in range(3):  # warm up every path
                await post(plain_body)
                await post(round_body)
                await direct()
            plain = await _timed(requests, lambda: post(plain_body))
            one_round = await _timed(requests, lambda: post(round_body))
            called = await _timed(requests, direct)
    finally:
        await gateway_runner.cleanup()
        await upstream_runner.cleanup()
        server.should_exit = True
        await serving
    return {"requests": requests, "plain_ms": round(plain, 2), "round_ms": round(one_round, 2),
            "direct_ms": round(called, 2), "loop_ms": round(one_round - plain - called, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    result = asyncio.run(measure(args.requests))
    if args.json:
        print(json.dumps(result))
        return
    print(f"median ms over {args.requests} requests: plain {result['plain_ms']:.1f}, round {result['round_ms']:.1f}, "
          f"direct {result['direct_ms']:.1f}; round - plain - direct = {result['loop_ms']:.1f} ms (second sample + loop)")


if __name__ == "__main__":
    main()
