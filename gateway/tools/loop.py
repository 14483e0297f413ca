"""The agentic loop: sample, run the hosted calls the model made, sample again, in one response.

The pipeline drives it (`pipeline.Loop`): `prepare` before the stream's head, `head` right after it,
`next_sample` after each sample. One `ResponseStream` runs across the samples, so output indexes,
sequence numbers and usage run on and there is one terminal event. A hosted tool is a `HostedKind`
the stream announces calls of; the MCP one is `McpKind` here.
"""
from __future__ import annotations

import asyncio
import hashlib
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from ..errors import GatewayError, InvalidRequest
from ..ids import new_id
from ..pipeline import stoppable
from .egress import check_addresses, check_url
from .mcp_client import ListedTool, ToolFailed, call_tool, cause, list_tools
from .mcp_pool import SessionPool
from .mcp_request import McpServer, mcp_servers, told_result, upstream_name

if TYPE_CHECKING:
    from ..config import Config, ToolsConfig
    from ..keys import Key
    from ..pipeline import Run, Sink
    from ..stream_processor import ResponseStream
    from ..translate import ChatRequest

class McpKind:
    """How one MCP tool's calls look on the stream: `mcp_call` items."""

    __slots__ = ("server", "tool")
    delta_type = "response.mcp_call_arguments.delta"
    done_type = "response.mcp_call_arguments.done"
    streams = True
    id_kind = "mcp"

    def __init__(self, server: McpServer, tool: str) -> None:
        self.server = server
        self.tool = tool

    def item(self, item_id: str, call_id: str, arguments: str) -> dict[str, Any]:
        return {"id": item_id, "type": "mcp_call", "server_label": self.server.label, "name": self.tool,
                "arguments": arguments, "output": None, "error": None, "status": "in_progress"}


class ApprovalKind(McpKind):
    """An MCP tool whose calls need the client's approval: an `mcp_approval_request` item ends the response."""

    __slots__ = ()
    streams = False
    id_kind = "mcpr"

    def item(self, item_id: str, call_id: str, arguments: str) -> dict[str, Any]:
        return {"id": item_id, "type": "mcp_approval_request", "server_label": self.server.label, "name": self.tool,
                "arguments": arguments}


class ToolLoop:
    """One response's loop over its hosted tools (see the module docstring)."""

    def __init__(self, servers: list[McpServer], config: ToolsConfig, max_tool_calls: int | None,
                 sessions: SessionPool, answers: list[tuple[dict[str, Any], bool]] | None = None,
                 earlier: dict[str, list[ListedTool]] | None = None) -> None:
        self.servers = servers
        self.sessions = sessions          # the app's open MCP sessions
        self.pins: dict[str, tuple[str, ...] | None] = {}  # label → the checked addresses it connects to
        self.unlisted: dict[str, str] = {}  # label → why its tools could not be listed (the item's error)
        self.offered: list[dict[str, Any]] = []  # the listed tools, as functions offered upstream
        self.own_from = 0                 # self.messages past this are the loop's own
        self.earlier = earlier or {}      # label → tools listed earlier in the context: not listed again
        self.answers = answers or []      # (approval request, approved) this request answers
        self.approved: list[dict[str, Any]] = []  # the approved calls' mcp_call items, as they ended
        self.config = config
        # The first sample's body, the run's (`prepare`: after a compaction, the compacted request's); later
        # samples extend its messages.
        self.body: dict[str, Any] = {}
        self.messages: list[dict[str, Any]] = []
        self.max_tool_calls = max_tool_calls
        self.listed: list[tuple[McpServer, list[ListedTool]]] = []
        self.fresh: set[str] = set()      # labels listed by this response (an mcp_list_tools item each)
        self.kinds: dict[str, McpKind] = {}  # upstream name → kind
        self.by_tool: dict[tuple[str, str], tuple[str, McpKind]] = {}  # (label, tool) → (upstream name, kind)
        self.rounds = 0                   # times hosted calls were run
        self.calls = 0                    # hosted calls run
        self.bound: str | None = None     # the bound that ended the response ("max_tool_calls", "max_rounds")
        self.records: list[tuple[str, str, float]] = []  # (server host, outcome, seconds) per call, for metrics

    @classmethod
    def for_request(cls, request: Any, chat: ChatRequest, gateway: Config, key: Key | None,
                    sessions: SessionPool) -> ToolLoop | None:
        """The loop for a request with `mcp` tools (their URLs checked against the allow-list and the gateway
        key's `mcp` permission, its approval answers against their requests), else None. Planned before any
        upstream call (compaction's included), so that a refusal costs none; `check_egress` next."""
        operator = {server.label: server for server in gateway.mcp_servers}
        servers = mcp_servers(request.get("tools"), operator) if isinstance(request, dict) else []
        config = gateway.tools
        if not servers:
            return None
        if key is not None and not key.mcp:
            raise GatewayError(f"The gateway key {key.name!r} may not use mcp tools (its 'mcp' permission in "
                               "auth.keys is off).", status=403, code="mcp_not_allowed",
                               param=servers[0].param.rsplit(".", 1)[0])
        for server in servers:
            if not server.operator:
                check_url(server.url, config.mcp.allowed_servers, server.param)
        answers = approval_answers(request.get("input"), {server.label for server in servers})
        return cls(servers, config, chat.options.echo.get("max_tool_calls"), sessions, answers,
                   earlier_listings(request.get("input")))

    async def check_egress(self) -> None:
        """Refuse a client's server whose host is or resolves to an address the allow-list does not let
        through (egress.py): a 400 before any upstream call, like `for_request`'s. The addresses checked are
        the ones the MCP client connects to (no second resolution: no DNS rebinding)."""
        mcp = self.config.mcp
        for server in self.servers:
            self.pins[server.label] = None if server.operator else \
                await check_addresses(server.url, mcp.allowed_servers, server.param)

    # ------------------------------------------------------------------ before the first sample
    async def prepare(self, run: Run) -> None:
        """List every server's tools (concurrently); offer them upstream in the run's first sample. A server
        whose tools cannot be listed offers none: its item says so, and so is the model told."""
        assert run.body is not None, "prepared before the first sample is sent"
        self.body, self.messages = run.body, list(run.body["messages"])
        fresh = [server for server in self.servers if server.label not in self.earlier]
        found = await stoppable(run, asyncio.gather(*(self._list(server) for server in fresh)))
        listings = dict(zip((server.label for server in fresh), found))
        self.listed = [(server, listings[server.label] if server.label in listings else self.earlier[server.label])
                       for server in self.servers]
        self.fresh = set(listings)
        if self.unlisted:
            self.messages = self.body["messages"] = self._told(self.messages)
        self.own_from = len(self.messages)
        taken = {tool["function"]["name"] for tool in self.body.get("tools", ())}
        functions = []
        for server, tools in self.listed:
            for tool in tools:
                if not server.offers(tool.name, tool.annotations):
                    continue
                name = upstream_name(server.label, tool.name)
                while name in taken:  # a client function of that name: a name of ours that cannot clash
                    name = upstream_name(server.label, f"{tool.name}_{hashlib.sha1(name.encode()).hexdigest()[:6]}")
                taken.add(name)
                self.kinds[name] = (ApprovalKind if server.needs_approval(tool.name) else McpKind)(server, tool.name)
                self.by_tool[server.label, tool.name] = (name, self.kinds[name])
                functions.append({"type": "function", "function": {
                    "name": name, "description": tool.description or "", "parameters": tool.input_schema}})
        self.offered = functions
        if functions:
            self.body["tools"] = [*self.body.get("tools", ()), *functions]
        run.stream.host(self.kinds)
        await stoppable(run, self._answer_approvals())

    async def _answer_approvals(self) -> None:
        """The calls this request approves run now (their items follow the listings); denied ones are told
        to the model. Either way the model sees the call and its outcome before the first sample.
        Approved calls are tool calls of this response: past a bound (`max_tool_calls`) none is run, and
        the response ends there (`head`), as `_bounded` ends it after a sample."""
        approved: list[tuple[dict[str, Any], str]] = []   # (mcp_call item, upstream name)
        told: dict[str, tuple[str, str]] = {}             # request id → (upstream name, what the model is told)
        for request, approve in self.answers:
            key = (request["server_label"], request["name"])
            name, kind = self.by_tool.get(key, (upstream_name(*key), None))
            if approve and kind is not None:
                approved.append(({"id": new_id("mcp"), "type": "mcp_call", "server_label": key[0], "name": key[1],
                                  "arguments": request["arguments"], "approval_request_id": request["id"],
                                  "output": None, "error": None, "status": "in_progress"}, name))
            elif approve:
                told[request["id"]] = (name, f"The tool {key[1]!r} is no longer offered by the server {key[0]!r}.")
            else:
                told[request["id"]] = (name, "The user denied this call: it was not run.")
        bound = self._bound(len(approved)) if approved else None
        if bound is not None:
            self.bound, said = bound
            self.approved = [{**item, "status": "incomplete", "error": _not_run(said)} for item, _ in approved]
            return  # no sample follows: the model is told nothing
        results = await asyncio.gather(*(self._call(item) for item, _ in approved))
        self.calls += len(approved)
        for (item, name), (output, error) in zip(approved, results):
            self.approved.append(_ended(item, output, error))
            told[item["approval_request_id"]] = (name, told_result(output, error))
        for request, _ in self.answers:
            name, content = told[request["id"]]
            call = {"id": request["id"], "type": "function",
                    "function": {"name": name, "arguments": request["arguments"] or "{}"}}
            self.messages += [{"role": "assistant", "content": None, "tool_calls": [call]},
                              {"role": "tool", "tool_call_id": request["id"], "content": content}]
        if self.answers:
            self.body["messages"] = self.messages

    async def _list(self, server: McpServer) -> list[ListedTool]:
        """The server's tools; none when they cannot be listed (`unlisted` says why, as OpenAI's item does)."""
        mcp = self.config.mcp
        try:
            return await list_tools(self.sessions, server, self.pins[server.label], mcp)
        except TimeoutError:
            why = f"the server did not answer within {mcp.connect_timeout:g}s"
        except Exception as exc:
            why = f"the server could not be reached ({cause(exc)})"
        # Only the label: the URL may carry a token.
        self.unlisted[server.label] = f"Error retrieving tool list from MCP server: {server.label!r}: {why}."
        return []

    def _told(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`messages` with a system message telling the model which servers are unavailable, after the
        leading system messages (some templates take system messages only first)."""
        labels = ", ".join(repr(label) for label in self.unlisted)
        note = {"role": "system", "content": f"The MCP server(s) {labels} are unavailable: their tools could not be "
                                             "listed and cannot be used in this response."}
        at = next((i for i, m in enumerate(messages) if m.get("role") not in ("system", "developer")), len(messages))
        return [*messages[:at], note, *messages[at:]]

    def carry(self, body: dict[str, Any]) -> dict[str, Any]:
        """A body translated for a fallback upstream of another kind, with what this loop added to the first
        translation: the listed tools as functions, the note on unlisted servers, the rounds' messages so far."""
        messages = self._told(body["messages"]) if self.unlisted else list(body["messages"])
        body = {**body, "messages": [*messages, *self.messages[self.own_from:]]}
        if self.offered:
            body["tools"] = [*body.get("tools", ()), *self.offered]
        return body

    def head(self, stream: ResponseStream) -> list[Any]:
        """One `mcp_list_tools` item per server, after the stream's head, then the approved calls; the
        response's end if a bound stopped those (`_answer_approvals`)."""
        emit = stream.emitter()
        for server, tools in self.listed:
            if server.label not in self.fresh:
                continue  # listed earlier in the context, as OpenAI reuses it
            index = stream.new_item_index()
            item = {"id": new_id("mcpl"), "type": "mcp_list_tools", "server_label": server.label, "tools": []}
            where = {"item_id": item["id"], "output_index": index}
            emit("response.output_item.added", output_index=index, item=item)
            emit("response.mcp_list_tools.in_progress", **where)
            error = self.unlisted.get(server.label)
            if error is not None:
                emit("response.mcp_list_tools.failed", **where)
                stream.item_done(index, {**item, "error": error})
                continue
            emit("response.mcp_list_tools.completed", **where)
            offered = [tool.item() for tool in tools if server.offers(tool.name, tool.annotations)]
            stream.item_done(index, {**item, "tools": offered})
        for done in self.approved:
            index = stream.new_item_index()
            where = {"item_id": done["id"], "output_index": index}
            emit("response.output_item.added", output_index=index,
                 item={**done, "output": None, "error": None, "status": "in_progress"})
            if done["status"] != "incomplete":  # else not run
                emit("response.mcp_call.in_progress", **where)
                emit(f"response.mcp_call.{done['status']}", **where)
            stream.item_done(index, done)
        if self.bound is not None:
            return [*stream.take_batch(), *stream.finish_incomplete("max_messages")]
        return stream.take_batch()

    # ------------------------------------------------------------------ after each sample
    async def next_sample(self, run: Run, sink: Sink) -> dict[str, Any] | None:
        stream = run.stream
        calls, stream.hosted_calls = stream.hosted_calls, []
        asked = any(item["type"] == "mcp_approval_request" for _, item, _ in calls)
        calls = [call for call in calls if call[1]["type"] == "mcp_call"]
        if not calls:  # nothing to run (approval requests end the response: the client answers them)
            await _send(run, sink, stream.finish(True))
            return None
        bound = self._bound(len(calls))
        if bound is not None:
            await self._bounded(run, sink, calls, bound)
            return None
        self.rounds += 1
        self.calls += len(calls)
        emit = stream.emitter()
        for index, item, _ in calls:
            emit("response.mcp_call.in_progress", item_id=item["id"], output_index=index)
        await _send(run, sink, stream.take_batch())
        results = await self._run_calls(run, [item for _, item, _ in calls])
        emit = stream.emitter()
        tool_calls, outputs = [], []
        for (index, item, call_id), (output, error) in zip(calls, results):
            done = _ended(item, output, error)
            emit(f"response.mcp_call.{done['status']}", item_id=item["id"], output_index=index)
            stream.item_done(index, done)
            name, _ = self.by_tool[item["server_label"], item["name"]]
            tool_calls.append({"id": call_id, "type": "function",
                               "function": {"name": name, "arguments": item["arguments"] or "{}"}})
            outputs.append({"role": "tool", "tool_call_id": call_id,
                            "content": told_result(output, error)})
        await _send(run, sink, stream.take_batch())
        if stream.client_calls or asked:  # the client's own tools or approvals: the response ends here
            await _send(run, sink, stream.finish(True))
            return None
        return self._next_body(tool_calls, outputs)

    def _next_body(self, tool_calls: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, Any]:
        self.messages += [{"role": "assistant", "content": None, "tool_calls": tool_calls}, *outputs]
        return {**self.body, "messages": self.messages}

    async def _bounded(self, run: Run, sink: Sink, calls: list[tuple[int, dict[str, Any], str]],
                       bound: tuple[str, str]) -> None:
        """A bound was reached: these calls are not run (their items end `incomplete`, their `error` names the
        bound) and the response ends `incomplete` without another sample. `max_messages` is the reason the
        strict SDKs know for a loop stopped by its bound; the log line says which one (`self.bound`)."""
        self.bound, said = bound
        stream = run.stream
        stream.emitter()
        for index, item, _ in calls:
            stream.item_done(index, {**item, "status": "incomplete", "error": _not_run(said)})
        await _send(run, sink, [*stream.take_batch(), *stream.finish_incomplete("max_messages")])

    def _bound(self, wanted: int) -> tuple[str, str] | None:
        """The bound these calls would pass (its name, and how the unrun calls' error says it), else None."""
        if self.max_tool_calls is not None and self.calls + wanted > self.max_tool_calls:
            return "max_tool_calls", f"the request's max_tool_calls ({self.max_tool_calls}) was reached"
        if self.rounds >= self.config.max_rounds:
            return "max_rounds", f"the gateway's tools.max_rounds ({self.config.max_rounds}) was reached"
        return None

    async def _run_calls(self, run: Run, items: list[dict[str, Any]]) -> list[tuple[str | None, Any]]:
        """Every call at once."""
        if run.upstream is not None:
            run.upstream.close()
            run.upstream = None
        return await stoppable(run, asyncio.gather(*(self._call(item) for item in items)))

    async def _call(self, item: dict[str, Any]) -> tuple[str | None, Any]:
        _, kind = self.by_tool[item["server_label"], item["name"]]
        try:
            arguments = orjson.loads(item["arguments"] or "{}")
        except orjson.JSONDecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            return None, {"type": "mcp_protocol_error", "code": -32602,
                          "message": "the arguments are not a JSON object"}
        began = time.monotonic()
        try:
            output = await call_tool(self.sessions, kind.server, self.pins[kind.server.label], kind.tool, arguments,
                                     self.config.mcp)
        except ToolFailed as exc:
            self._record(kind.server, exc.error.get("type", "failed"), began)
            return None, exc.error
        self._record(kind.server, "completed", began)
        return output, None

    def _record(self, server: McpServer, outcome: str, began: float) -> None:
        self.records.append((urlsplit(server.url).hostname or "", outcome, time.monotonic() - began))


def _ended(item: dict[str, Any], output: str | None, error: Any) -> dict[str, Any]:
    """An `mcp_call` item as its call ended: with its output, or failed with its error."""
    return {**item, "output": output, "error": error, "status": "failed" if error else "completed"}


def _not_run(said: str) -> dict[str, Any]:
    """The error of a call a bound kept from running (`said`: which bound)."""
    return {"type": "mcp_protocol_error", "code": -32000, "message": f"Not run: {said}."}


def approval_answers(items: Any, labels: set[str]) -> list[tuple[dict[str, Any], bool]]:
    """The `mcp_approval_response` items of a request's input (earlier items included) with the
    `mcp_approval_request` each answers; one answered before (a call already in the input) is not answered
    again. A response to an unknown request, or to a server this request does not name, is a 400."""
    if not isinstance(items, list):
        return []
    requests = {item.get("id"): item for item in items
                if isinstance(item, dict) and item.get("type") == "mcp_approval_request"}
    done = {item.get("approval_request_id") for item in items
            if isinstance(item, dict) and item.get("type") == "mcp_call"}
    answers = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or item.get("type") != "mcp_approval_response":
            continue
        param = f"input[{i}]"
        request_id, approve = item.get("approval_request_id"), item.get("approve")
        if not isinstance(approve, bool):
            raise InvalidRequest(f"Invalid '{param}.approve': expected a boolean.", param=f"{param}.approve")
        request = requests.get(request_id)
        if request is None or not isinstance(request.get("name"), str) or not isinstance(request.get("arguments"), str):
            raise InvalidRequest(f"No MCP approval request found with id {request_id!r}.",
                                 param=f"{param}.approval_request_id")
        if request.get("server_label") not in labels:
            raise InvalidRequest(f"The approval request {request_id!r} is for the MCP server "
                                 f"{request.get('server_label')!r}, which this request's tools do not name.",
                                 param=f"{param}.approval_request_id")
        if request_id not in done:
            answers.append((request, approve))
            done.add(request_id)
    return answers


def earlier_listings(items: Any) -> dict[str, list[ListedTool]]:
    """The last successful `mcp_list_tools` item per server label in a request's input (its context)."""
    listings: dict[str, list[ListedTool]] = {}
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict) or item.get("type") != "mcp_list_tools" or item.get("error"):
            continue
        tools = item.get("tools")
        if isinstance(item.get("server_label"), str) and isinstance(tools, list) and all(
                isinstance(tool, dict) and isinstance(tool.get("name"), str)
                and isinstance(tool.get("input_schema"), dict) for tool in tools):
            listings[item["server_label"]] = [
                ListedTool(tool["name"], tool.get("description") if isinstance(tool.get("description"), str) else None,
                           tool["input_schema"], tool.get("annotations") if isinstance(tool.get("annotations"), dict)
                           else None) for tool in tools]
    return listings


async def _send(run: Run, sink: Sink, events: list[Any]) -> None:
    """A batch to the sinks, counted as delivered (a failure after it ends the items it opened)."""
    await sink.send(events)
    run.delivered = run.stream.events_emitted
