"""Talking to one MCP server with the official `mcp` package (streamable HTTP).

Each operation opens its own session and closes it in the same task: the package's sessions are
anyio task groups, which must be left by the task that entered them, and the loop runs parallel
calls in tasks of their own. The transport follows a redirect only within the server's origin.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx2
import orjson
from mcp import Client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client
from mcp.shared.exceptions import MCPError

from ..bounds import clip
from .mcp_request import McpServer

REQUEST_TIMEOUT = -32001  # the code MCP servers use for a request that timed out
# The HTTP client logs every request's URL at info level; a client's server URL may carry a token.
logging.getLogger("httpx2").setLevel(logging.WARNING)


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
async def _session(server: McpServer, timeout: float) -> Any:
    http = create_mcp_http_client(headers=server.headers, timeout=httpx2.Timeout(timeout))
    async with http, Client(streamable_http_client(server.url, http_client=http)) as client:
        yield client


async def list_tools(server: McpServer, timeout: float) -> list[ListedTool]:
    """The server's tools (every page); raises on any failure, within `timeout`."""
    async with asyncio.timeout(timeout), _session(server, timeout) as client:
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


async def call_tool(server: McpServer, name: str, arguments: dict[str, Any], *, timeout: float,
                    max_bytes: int) -> str:
    """The call's output as text; `ToolFailed` with the item's error for anything else."""
    try:
        async with asyncio.timeout(timeout), _session(server, timeout) as client:
            result = await client.call_tool(name, arguments)
    except TimeoutError:
        raise ToolFailed(_protocol_error(REQUEST_TIMEOUT, f"the tool did not answer within {timeout:g}s")) from None
    except MCPError as exc:
        raise ToolFailed(_protocol_error(exc.error.code, clip(exc.error.message, 2000))) from None
    except Exception as exc:  # the transport's failures arrive as (groups of) anything
        raise ToolFailed(_protocol_error(-32603, f"the MCP server could not be reached ({_cause(exc)})")) from None
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
    if len(output.encode()) > max_bytes:
        raise ToolFailed(_protocol_error(-32603, f"the tool's result is larger than {max_bytes} bytes"))
    return output


def _protocol_error(code: int, message: str) -> dict[str, Any]:
    return {"type": "mcp_protocol_error", "code": code, "message": message}


def _cause(exc: BaseException) -> str:
    """The innermost failure's type, not its text: it may carry a URL with secrets."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return type(exc).__name__
