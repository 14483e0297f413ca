"""Talking to one MCP server with the official `mcp` package: streamable HTTP, the SSE transport as a fallback.

Sessions come from a `SessionPool` (mcp_pool.py), which keeps them open across calls and responses. A
server whose streamable HTTP endpoint refuses the opening POST with a 4xx (a legacy server: SSE only)
is opened with the SSE transport, and the pool remembers that it answered there. Connections go only
to the addresses egress.py checked; the transports follow a redirect only within the server's origin,
and the SSE `endpoint` event must name the same origin.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx2
import orjson
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED

from ..bounds import clip
from .egress import pinned_client
from .mcp_pool import Session, SessionPool, pool_key
from .mcp_request import McpServer

if TYPE_CHECKING:
    from ..config import McpConfig

REQUEST_TIMEOUT = -32001  # the code MCP servers use for a request that timed out
# A streamable HTTP opening refused with one of these is a legacy server's answer: try SSE.
LEGACY_STATUSES = frozenset({400, 404, 405})
# The HTTP client logs every request's URL at info level, the mcp client its failures with URLs: a client's
# server URL may carry a token. The gateway reports failures itself (the item's error, metrics).
logging.getLogger("httpx2").setLevel(logging.WARNING)
logging.getLogger("mcp.client").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class ListedTool:
    name: str
    description: str | None
    input_schema: dict[str, Any]
    annotations: dict[str, Any] | None

    def item(self) -> dict[str, Any]:
        """As an `mcp_list_tools` item lists it."""
        return {"name": self.name, "input_schema": self.input_schema, "description": self.description,
                "annotations": self.annotations}


class ToolFailed(Exception):
    """A call that did not give a result: its `error` is the mcp_call item's."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message", "the tool failed"))
        self.error = error


@asynccontextmanager
async def _streamable(server: McpServer, pins: tuple[str, ...] | None, timeout: httpx2.Timeout,
                      statuses: list[int]) -> AsyncIterator[Client]:
    http = pinned_client(server.url, pins, headers=server.headers, timeout=timeout)

    async def seen(response: httpx2.Response) -> None:
        if response.request.method == "POST":
            statuses.append(response.status_code)

    http.event_hooks["response"].append(seen)
    async with http, Client(streamable_http_client(server.url, http_client=http)) as client:
        yield client


def _sse(server: McpServer, pins: tuple[str, ...] | None, config: McpConfig) -> Client:
    def factory(headers: dict[str, str] | None = None, timeout: httpx2.Timeout | None = None,
                auth: Any = None) -> httpx2.AsyncClient:
        return pinned_client(server.url, pins, headers=headers, timeout=timeout or httpx2.Timeout(config.connect_timeout))
    # The event stream carries every answer: silent longer than a call and the idle time, it is broken.
    return Client(sse_client(server.url, headers=server.headers, timeout=config.connect_timeout,
                             sse_read_timeout=config.call_timeout + config.idle_timeout, httpx_client_factory=factory))


def _opener(pool: SessionPool, server: McpServer, pins: tuple[str, ...] | None, config: McpConfig) -> Any:
    @asynccontextmanager
    async def opened() -> AsyncIterator[Client]:
        async with AsyncExitStack() as stack:
            yield await _enter(stack, pool, server, pins, config)
    return opened


async def _enter(stack: AsyncExitStack, pool: SessionPool, server: McpServer, pins: tuple[str, ...] | None,
                 config: McpConfig) -> Client:
    """The server's client entered on `stack`: streamable HTTP, else (a legacy server's refusal) SSE."""
    if pool.transports.get(server.url) != "sse":
        statuses: list[int] = []
        timeout = httpx2.Timeout(config.connect_timeout, read=config.call_timeout)
        try:
            return await stack.enter_async_context(_streamable(server, pins, timeout, statuses))
        except Exception:
            if not statuses or statuses[0] not in LEGACY_STATUSES:
                raise
    client = await stack.enter_async_context(_sse(server, pins, config))
    pool.remember(server.url, "sse")
    return client


@asynccontextmanager
async def _session(pool: SessionPool, server: McpServer, pins: tuple[str, ...] | None,
                   config: McpConfig) -> AsyncIterator[tuple[Session, Client]]:
    """A pooled client for `server`; a transport failure closes the session, so the next call opens anew."""
    session: Session | None = None
    try:
        async with pool.client(pool_key(server.url, server.headers), _opener(pool, server, pins, config),
                               config.idle_timeout) as (session, client):
            yield session, client
    except MCPError as exc:
        if exc.error.code == CONNECTION_CLOSED and session is not None:
            session.close()
        raise
    except (TimeoutError, asyncio.CancelledError):
        raise  # the caller's limit: the session itself is fine
    except Exception:
        if session is not None:
            session.close()
        raise


async def list_tools(pool: SessionPool, server: McpServer, pins: tuple[str, ...] | None,
                     config: McpConfig) -> list[ListedTool]:
    """The server's tools (every page); raises on any failure, within `config.connect_timeout`. A session
    used before that fails is closed and the listing tried once more on a new one: its server may have
    restarted since (a legacy server's sessions go with it); listing twice is harmless, unlike a call."""
    async with asyncio.timeout(config.connect_timeout):
        for retry in (False, True):
            async with _session(pool, server, pins, config) as (session, client):
                try:
                    return await _pages(client)
                except Exception:
                    if retry or session.uses == 1:
                        raise
                    session.close()
    raise AssertionError("unreachable: the second attempt returns or raises")


async def _pages(client: Client) -> list[ListedTool]:
    tools: list[ListedTool] = []
    cursor = None
    while True:
        page = await client.list_tools(cursor=cursor)
        for tool in page.tools:
            annotations = tool.annotations.model_dump(by_alias=True, exclude_none=True) if tool.annotations else None
            tools.append(ListedTool(tool.name, tool.description, tool.input_schema, annotations))
        cursor = page.next_cursor
        if not cursor:
            return tools


async def call_tool(pool: SessionPool, server: McpServer, pins: tuple[str, ...] | None, name: str,
                    arguments: dict[str, Any], config: McpConfig) -> str:
    """The call's output as text; `ToolFailed` with the item's error for anything else."""
    timeout = config.call_timeout
    try:
        async with asyncio.timeout(timeout), _session(pool, server, pins, config) as (_, client):
            result = await client.call_tool(name, arguments)
    except TimeoutError:
        raise ToolFailed(_protocol_error(REQUEST_TIMEOUT, f"the tool did not answer within {timeout:g}s")) from None
    except MCPError as exc:
        raise ToolFailed(_protocol_error(exc.error.code, clip(exc.error.message, 2000))) from None
    except Exception as exc:  # the transport's failures arrive as (groups of) anything
        raise ToolFailed(_protocol_error(-32603, f"the MCP server could not be reached ({cause(exc)})")) from None
    content = [block.model_dump(by_alias=True, exclude_none=True) for block in result.content]
    if result.is_error:
        raise ToolFailed({"type": "mcp_tool_execution_error", "content": content})
    texts = [block["text"] for block in content if block.get("type") == "text"]
    if texts:
        output = "\n".join(texts)
    elif result.structured_content is not None:
        output = orjson.dumps(result.structured_content).decode()
    else:
        output = orjson.dumps(content).decode()
    if len(output.encode()) > config.max_result_bytes:
        raise ToolFailed(_protocol_error(-32603, f"the tool's result is larger than {config.max_result_bytes} bytes"))
    return output


def _protocol_error(code: int, message: str) -> dict[str, Any]:
    return {"type": "mcp_protocol_error", "code": code, "message": message}


def cause(exc: BaseException) -> str:
    """The innermost failure's type, not its text: it may carry a URL with secrets."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return type(exc).__name__
