"""The `mcp` tool of a request, in the openai SDK's shape, checked into an `McpServer` (no I/O)."""
from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import InvalidRequest

if TYPE_CHECKING:
    from ..config import McpServerConfig

_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_NAME_OK = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class McpServer:
    """One `mcp` tool of a request. `headers` hold secrets: never logged, never echoed back."""

    label: str
    url: str
    param: str                                      # where it is in the request, for errors
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    allowed: frozenset[str] | None = None           # tool names offered; None: all
    read_only: bool = False                         # only tools annotated read-only
    description: str | None = None
    operator: bool = False                          # from `mcp_servers:`: the operator's choice, not egress-checked
    # (always, never) tool names; None: every tool. Default: every call asks (as OpenAI's).
    approval: tuple[frozenset[str] | None, frozenset[str] | None] = (None, frozenset())

    def needs_approval(self, name: str) -> bool:
        always, never = self.approval
        if never is None or name in never:
            return False
        if always is None or name in always:
            return True
        return bool(never)  # a filter naming only `always` tools lets the others run; naming `never` ones, not

    def offers(self, name: str, annotations: dict[str, Any] | None) -> bool:
        if self.allowed is not None and name not in self.allowed:
            return False
        return not self.read_only or bool((annotations or {}).get("readOnlyHint"))


def _bad(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': {message}", param=param, code="invalid_value")


def mcp_servers(tools: Any, operator: Mapping[str, McpServerConfig] | None = None) -> list[McpServer]:
    """The request's `mcp` tools (the rest of `tools` is translate.py's); duplicate labels are a 400.
    A tool naming one of the `operator` servers by label alone gets its URL and headers."""
    if not isinstance(tools, list):
        return []
    servers: list[McpServer] = []
    for i, tool in enumerate(tools):
        if isinstance(tool, dict) and tool.get("type") == "mcp":
            servers.append(mcp_server(tool, f"tools[{i}]", operator or {}))
    labels = [server.label for server in servers]
    for server in servers:
        if labels.count(server.label) > 1:
            raise _bad(f"{server.param}.server_label", f"the label {server.label!r} is used by two mcp tools.")
    return servers


def mcp_server(tool: dict[str, Any], param: str, operator: Mapping[str, McpServerConfig]) -> McpServer:
    if tool.get("connector_id") is not None:
        raise InvalidRequest("OpenAI connectors ('connector_id') are not available through this gateway; "
                             "give the MCP server's 'server_url' instead.", param=f"{param}.connector_id",
                             code="unsupported_parameter")
    label = tool.get("server_label")
    if not isinstance(label, str) or not _LABEL.match(label):
        raise _bad(f"{param}.server_label", "expected a name of letters, digits, '_' and '-' starting with a letter.")
    url = tool.get("server_url")
    configured = operator.get(label)
    if configured is not None:
        if url is not None:
            raise _bad(f"{param}.server_url", f"{label!r} is a server this gateway offers: name it by server_label "
                                             "alone.")
        allowed, read_only = _allowed_tools(tool.get("allowed_tools"), f"{param}.allowed_tools")
        return McpServer(label=label, url=configured.url, param=f"{param}.server_label",
                         headers=dict(configured.headers), allowed=allowed, read_only=read_only,
                         description=configured.description or None, operator=True,
                         approval=_require_approval(tool.get("require_approval"), f"{param}.require_approval"))
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"Missing required parameter: '{param}.server_url'.", param=f"{param}.server_url",
                             code="missing_required_parameter")
    headers = _headers(tool.get("headers"), f"{param}.headers")
    authorization = tool.get("authorization")
    if authorization is not None:
        if not isinstance(authorization, str) or not authorization:
            raise _bad(f"{param}.authorization", "expected a string.")
        headers["Authorization"] = f"Bearer {authorization}"
    allowed, read_only = _allowed_tools(tool.get("allowed_tools"), f"{param}.allowed_tools")
    approval = _require_approval(tool.get("require_approval"), f"{param}.require_approval")
    description = tool.get("server_description")
    if description is not None and not isinstance(description, str):
        raise _bad(f"{param}.server_description", "expected a string.")
    return McpServer(label=label, url=url, param=f"{param}.server_url", headers=headers, allowed=allowed,
                     read_only=read_only, description=description, approval=approval)


def _headers(value: Any, param: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _bad(param, "expected an object of string values.")
    if any(not k or "\n" in k or "\r" in k or "\n" in v or "\r" in v for k, v in value.items()):
        raise _bad(param, "header names and values must be single lines.")
    return dict(value)


def _names(value: Any, param: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise _bad(param, "expected an array of tool names.")
    return frozenset(value)


def _allowed_tools(value: Any, param: str) -> tuple[frozenset[str] | None, bool]:
    """`allowed_tools` as a list of names or a filter {tool_names, read_only}."""
    if value is None:
        return None, False
    if isinstance(value, list):
        return _names(value, param), False
    if not isinstance(value, dict):
        raise _bad(param, "expected an array of tool names or a filter object.")
    names = value.get("tool_names")
    read_only = value.get("read_only")
    if read_only is not None and not isinstance(read_only, bool):
        raise _bad(f"{param}.read_only", "expected a boolean.")
    return (None if names is None else _names(names, f"{param}.tool_names")), bool(read_only)


def _require_approval(value: Any, param: str) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    """`require_approval` as (always, never): "always" (the default), "never", or a filter
    {"always": {"tool_names": [...]}, "never": {"tool_names": [...]}}."""
    if value is None or value == "always":
        return None, frozenset()
    if value == "never":
        return frozenset(), None
    if not isinstance(value, dict):
        raise _bad(param, "expected 'always', 'never' or a filter object.")
    lists = []
    for key in ("always", "never"):
        part = value.get(key)
        if part is not None and not isinstance(part, dict):
            raise _bad(f"{param}.{key}", "expected an object with 'tool_names'.")
        names = (part or {}).get("tool_names")
        lists.append(frozenset() if names is None else _names(names, f"{param}.{key}.tool_names"))
    return lists[0], lists[1]


def upstream_name(label: str, tool: str) -> str:
    """The function name an MCP tool goes upstream as: `mcp__label__tool`, or a hashed form when that is
    not a valid function name."""
    name = f"mcp__{label}__{tool}"
    if _NAME_OK.match(name):
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    return f"mcp__{re.sub(r'[^A-Za-z0-9_-]', '_', name)[5:50]}_{digest}"


def told_result(output: Any, error: Any) -> str:
    """What the model is told of an MCP call that ended: its output, else its error. The same when the tool
    loop runs the call and when a later turn replays it from history, so the model reads it back as it was."""
    return output if isinstance(output, str) else f"The tool call failed: {orjson.dumps(error).decode()}"
