"""A real MCP server for the tests: the `mcp` package's MCPServer over streamable HTTP on 127.0.0.1,
served by uvicorn in the test's own event loop. Tools: add, sleep, fail, big (a large result), secret
(reads the request's Authorization header back, to check it arrived)."""
from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ToolAnnotations


def build_server() -> MCPServer:
    server = MCPServer("test-tools", log_level="WARNING")
    server.calls = []  # type: ignore[attr-defined]

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def add(a: int, b: int) -> str:
        """Add two integers."""
        server.calls.append(("add", a, b))  # type: ignore[attr-defined]
        return str(a + b)

    @server.tool()
    async def sleep(seconds: float) -> str:
        """Sleep, then say so."""
        server.calls.append(("sleep", seconds))  # type: ignore[attr-defined]
        await asyncio.sleep(seconds)
        return f"slept {seconds}"

    @server.tool()
    def fail(reason: str) -> str:
        """Always fails."""
        raise ValueError(f"failing as asked: {reason}")

    @server.tool()
    def big(size: int) -> str:
        """A result of `size` characters."""
        return "x" * size

    @server.tool()
    def whoami(ctx: Context) -> str:
        """The Authorization header the server got."""
        request = ctx.request_context.request
        return request.headers.get("authorization", "none") if request is not None else "none"

    return server


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def running_mcp_server() -> AsyncIterator[Any]:
    """Serve a fresh server; yields it with `.url` (…/mcp) set."""
    server = build_server()
    port = _port()
    app = server.streamable_http_app(host="127.0.0.1")
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    web = uvicorn.Server(config)
    task = asyncio.create_task(web.serve())
    while not web.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    server.url = f"http://127.0.0.1:{port}/mcp"  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        web.should_exit = True
        await task
