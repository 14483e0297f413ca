"""A real MCP server for the tests: the `mcp` package's MCPServer over streamable HTTP (or, `sse=True`,
only the legacy SSE transport) on 127.0.0.1, served by uvicorn in the test's own event loop. Tools: add,
sleep, fail, big (a large result), secret (reads the request's Authorization header back, to check it
arrived). `handshakes` lists the session openings it saw (`server/discover`, `initialize`), `requests`
the (method, path) of each request."""
from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
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


def _counting(app: Any, server: Any) -> Any:
    """The ASGI app, noting each request and each session opening in a POST's body."""
    server.handshakes, server.requests = [], []

    async def counted(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            server.requests.append((scope["method"], scope["path"]))
        if scope["type"] != "http" or scope["method"] != "POST":
            return await app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        server.handshakes += [method for method in ("server/discover", "initialize")
                              if f'"method":"{method}"'.encode() in body.replace(b" ", b"")]
        replayed = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> dict[str, Any]:
            return replayed.pop() if replayed else await receive()
        await app(scope, replay, send)
    return counted


@contextlib.asynccontextmanager
async def running_mcp_server(sse: bool = False, port: int | None = None, hosts: tuple[str, ...] = ()) -> AsyncIterator[Any]:
    """Serve a fresh server; yields it with `.url` (…/mcp, or …/sse) set. `hosts`: Host header names
    it accepts besides 127.0.0.1 and localhost (its DNS rebinding protection refuses others)."""
    server = build_server()
    port = port or _port()
    security = TransportSecuritySettings(allowed_hosts=["127.0.0.1:*", "localhost:*", *(f"{h}:*" for h in hosts)])
    app = (server.sse_app if sse else server.streamable_http_app)(host="127.0.0.1", transport_security=security)
    config = uvicorn.Config(_counting(app, server), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    web = uvicorn.Server(config)
    task = asyncio.create_task(web.serve())
    while not web.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    server.url = f"http://127.0.0.1:{port}/{'sse' if sse else 'mcp'}"  # type: ignore[attr-defined]
    server.port = port  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        web.should_exit = True
        await task
