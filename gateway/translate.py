"""Responses API request → Chat Completions request (pure functions, no I/O).

Validation happens here too: a wrong type raises `InvalidRequest` naming the `param`,
unknown fields are ignored, and what the response stream needs (the echoed fields, tool name
mapping, reasoning options) is collected into one `StreamOptions`. Read top-down: the request,
its tools, then its input items. Three mappings have modules of their own: custom tools as
functions (custom_tools.py), call id forms (call_ids.py) and provider metadata carried in item
ids (provider_metadata.py).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from .call_ids import upstream_call_id
from .compaction import SUMMARY_PREFIX, open_window
from .config import UpstreamConfig
from .custom_tools import custom_arguments, custom_tool_function
from .errors import InvalidRequest
from .history_items import HANDLERS, BadItem, Call, Context, Drop, Output, translate_history_item
from .provider_metadata import extra_from_item_id
from .reasoning import ENCRYPTED_INCLUDE, reasoning_input_text, reasoning_sealer
from .sealing import sealer_for
from .stream_processor import StreamOptions, response_defaults
from .tools.mcp_request import told_result, upstream_name

_TOOL_NAME_OK = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TOOL_NAME_BAD_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")
_ROLES = ("user", "assistant", "system", "developer")
_TOOL_CHOICES = ("auto", "none", "required")
_TRUNCATIONS = ("auto", "disabled")
_SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority")  # the openai SDK's; it reads the echo back
_METADATA_PAIRS, _METADATA_KEY, _METADATA_VALUE = 16, 64, 512
_MAX_INTEGER = 2**53  # past it a float has no exact integer


@dataclass
class ChatRequest:
    """What the upstream gets (`body`), and what the response stream needs to answer in kind (`options`)."""

    body: dict[str, Any]
    stream: bool
    options: StreamOptions
    warnings: list[str] = field(default_factory=list)


def _fail(message: str, param: str | None) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _expect(body: dict[str, Any], key: str, types: type | tuple[type, ...], what: str) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _fail(f"Invalid type for '{key}': expected {what}, but got a boolean.", key)
    if not isinstance(value, types):
        raise _fail(f"Invalid type for '{key}': expected {what}, but got {_kind(value)}.", key)
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _number(body: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = _expect(body, key, (int, float), "a number")
    if value is not None and not low <= value <= high:
        raise _fail(f"Invalid '{key}': {value} is not between {low} and {high}.", key)
    return value


def _choice(body: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str | None:
    value = _expect(body, key, str, "a string")
    if value is not None and value not in allowed:
        raise InvalidRequest(f"Invalid value for '{key}': {value!r}; expected one of {', '.join(allowed)}.",
                             param=key, code="invalid_value")
    return value


def checked_metadata(metadata: Any) -> dict[str, str] | None:
    """`metadata` as OpenAI takes it (on responses and conversations): up to 16 string values, keys up to 64
    and values up to 512 characters. It is echoed and stored, so anything else would break clients later."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise InvalidRequest("Invalid 'metadata': expected an object of string values.", param="metadata",
                             code="invalid_type")
    if len(metadata) > _METADATA_PAIRS or any(len(k) > _METADATA_KEY or len(v) > _METADATA_VALUE
                                              for k, v in metadata.items()):
        raise InvalidRequest(f"Invalid 'metadata': at most {_METADATA_PAIRS} pairs, keys up to {_METADATA_KEY} "
                             f"and values up to {_METADATA_VALUE} characters.", param="metadata",
                             code="object_above_max_properties")
    return metadata


def _integer(body: dict[str, Any], key: str, low: int, high: int | None = None) -> int | None:
    """JSON has one number type: 256.0 is the integer 256, as JSON Schema and OpenAI read it. (orjson reads
    an integer past 64 bits as a float, and could not write it back as an integer.)"""
    value = _expect(body, key, (int, float), "an integer")
    if isinstance(value, float):
        if not value.is_integer() or abs(value) > _MAX_INTEGER:
            raise _fail(f"Invalid type for '{key}': expected an integer, but got a number.", key)
        value = int(value)
    if value is not None and value < low:
        raise _fail(f"Invalid '{key}': must be at least {low}.", key)
    if value is not None and high is not None and value > high:
        raise _fail(f"Invalid '{key}': must be at most {high}.", key)
    return value


class _ToolNames:
    """Maps client tool names to names every upstream accepts, and back."""

    def __init__(self) -> None:
        self.back: dict[str, tuple[str, str | None]] = {}
        self.forward: dict[tuple[str, str | None], str] = {}

    def upstream(self, name: str, namespace: str | None = None) -> str:
        key = (name, namespace)
        if key in self.forward:
            return self.forward[key]
        wanted = f"{namespace}__{name}" if namespace else name
        candidate = wanted
        if not _TOOL_NAME_OK.match(candidate) or candidate in self.back:
            digest = hashlib.sha1(wanted.encode()).hexdigest()[:8]
            candidate = f"{_TOOL_NAME_BAD_CHARS.sub('_', wanted)[:55]}_{digest}"
        self.forward[key] = candidate
        self.back[candidate] = (name, namespace)
        return candidate

    def changed(self) -> dict[str, tuple[str, str | None]]:
        return {up: orig for up, orig in self.back.items() if orig != (up, None)}


class Earlier(Protocol):
    """A continuation's earlier items (gateway/store/history.py): as items, or as the messages kept with each
    stored turn (`turn_messages`) when every turn has them under the same translation options."""

    def items(self) -> list[dict[str, Any]]: ...

    def kept(self, keys: tuple[str, ...]) -> list[dict[str, Any]] | None: ...


class _NotKept(Exception):
    """Kept messages do not fit this request (a tool name maps otherwise here): the items are translated."""


def translate_request(body: Any, config: UpstreamConfig, earlier: Earlier | None = None) -> ChatRequest:
    """`body` as a Chat Completions request for an upstream with `config`; `earlier`: a continuation's items
    before `body["input"]`, placed by their kept messages where it can be (the same messages, far cheaper)."""
    kept = earlier.kept(translation_keys(config)) if earlier is not None else None
    if kept is not None:
        try:
            return _translate(body, config, kept)
        except _NotKept:
            pass
    if earlier is not None:
        body = {**body, "input": [*earlier.items(), *body["input"]]}
    return _translate(body, config, None)


def _translate(body: Any, config: UpstreamConfig, kept: list[dict[str, Any]] | None) -> ChatRequest:
    if not isinstance(body, dict):
        raise _fail("The request body must be a JSON object.", None)
    model = body.get("model")
    if model is None or model == "":
        raise _fail("Missing required parameter: 'model'.", "model")
    if not isinstance(model, str):
        raise _fail(f"Invalid type for 'model': expected a string, but got {_kind(model)}.", "model")
    if body.get("input") is None:
        raise _fail("Missing required parameter: 'input'.", "input")
    _expect(body, "input", (str, list), "a string or an array of input items")
    # Resolved against the store before translation (gateway/store/service.py): only echoed here.
    previous_response_id = _expect(body, "previous_response_id", str, "a string")
    conversation = body.get("conversation")
    stream = bool(_expect(body, "stream", bool, "a boolean"))
    instructions = _expect(body, "instructions", str, "a string")
    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1)
    max_output_tokens = _integer(body, "max_output_tokens", 1)
    parallel = _expect(body, "parallel_tool_calls", bool, "a boolean")
    user = _expect(body, "user", str, "a string")
    metadata = checked_metadata(body.get("metadata"))
    store = _expect(body, "store", bool, "a boolean")
    background = _expect(body, "background", bool, "a boolean")
    truncation = _choice(body, "truncation", _TRUNCATIONS)
    text = _expect(body, "text", dict, "an object")
    reasoning = _expect(body, "reasoning", dict, "an object")
    include = _expect(body, "include", list, "an array of strings")
    if include is not None and not all(isinstance(value, str) for value in include):
        raise _fail("Invalid type for 'include': expected an array of strings.", "include")

    names = _ToolNames()
    warnings: list[str] = []
    custom: set[str] = set()
    tools = _tools(body.get("tools"), names, config, warnings, custom)
    tools += _additional_tools(body["input"], names, config, warnings, custom, {t["function"]["name"] for t in tools})
    messages = _messages(body["input"], instructions, names, config=config, warnings=warnings, kept=kept)

    chat: dict[str, Any] = {"model": model, "messages": messages, "stream": True,
                            "stream_options": {"include_usage": True}}
    if tools:
        chat["tools"] = tools
        if parallel is not None and config.send_parallel_tool_calls:
            chat["parallel_tool_calls"] = parallel
    tool_choice = _tool_choice(body.get("tool_choice"), names)
    if tool_choice is not None and tools:
        chat["tool_choice"] = tool_choice
    if temperature is not None:
        chat["temperature"] = temperature
    if top_p is not None:
        chat["top_p"] = top_p
    if max_output_tokens is not None:
        chat[config.max_tokens_param] = max_output_tokens
    if user is not None:
        chat["user"] = user
    response_format = _response_format(text)
    if response_format is not None:
        chat["response_format"] = response_format
    summary = False
    if reasoning is not None:
        effort = reasoning.get("effort")
        if effort is not None and not isinstance(effort, str):
            raise _fail("Invalid type for 'reasoning.effort': expected a string.", "reasoning.effort")
        if effort and config.send_reasoning_effort:
            chat["reasoning_effort"] = effort
        summary = bool(reasoning.get("summary"))

    echo = _echo(body, {
        "background": background, "instructions": instructions, "max_output_tokens": max_output_tokens,
        "metadata": metadata, "parallel_tool_calls": parallel, "previous_response_id": previous_response_id,
        "reasoning": reasoning, "store": store, "temperature": temperature, "text": text, "top_p": top_p,
        "truncation": truncation, "user": user,
    })
    if conversation is not None:
        echo["conversation"] = {"id": conversation.get("id") if isinstance(conversation, dict) else conversation}
    seal = reasoning_sealer(config.reasoning_key) if include and ENCRYPTED_INCLUDE in include else None
    options = StreamOptions(model=model, echo=echo, tool_names=names.changed(), reasoning_summary=summary,
                            think_tags=config.think_tags, custom_tools=frozenset(custom),
                            call_id_style=config.tool_call_id_style, seal=seal)
    return ChatRequest(body=chat, stream=stream, options=options, warnings=warnings)


# ---------------------------------------------------------------------- the echo
def _echo(body: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The request's part of the Response object: its values (`given`, already checked, and the fields
    only echoed, checked here) over the defaults, in the shapes a client reads back. Never sent upstream."""
    values = dict(
        given,
        presence_penalty=_number(body, "presence_penalty", -2, 2),
        frequency_penalty=_number(body, "frequency_penalty", -2, 2),
        top_logprobs=_integer(body, "top_logprobs", 0, 20),
        max_tool_calls=_integer(body, "max_tool_calls", 0),
        service_tier=_choice(body, "service_tier", _SERVICE_TIERS),
        safety_identifier=_expect(body, "safety_identifier", str, "a string"),
        prompt_cache_key=_expect(body, "prompt_cache_key", str, "a string"),
        tool_choice=body.get("tool_choice"),
    )
    echo = response_defaults()
    echo.update((key, value) for key, value in values.items() if value is not None)
    if body.get("tools"):
        echo["tools"] = [_echo_tool(tool) for tool in body["tools"]]
    if given["text"] is not None:
        echo["text"] = _echo_text(given["text"])
    if given["reasoning"] is not None:
        echo["reasoning"] = {"effort": None, "summary": None, **given["reasoning"]}
    return echo


def _echo_tool(tool: Any) -> Any:
    """A function tool with every field the specification's FunctionTool requires (null when not given);
    a namespace's function tools likewise; any other tool as sent."""
    if not isinstance(tool, dict):
        return tool
    if tool.get("type") == "function":
        return {"type": "function", "description": None, "parameters": None, "strict": None, **tool}
    if tool.get("type") == "mcp":  # its headers and authorization are secrets: never echoed
        return {key: value for key, value in tool.items() if key not in ("headers", "authorization")}
    if tool.get("type") == "namespace" and isinstance(tool.get("tools"), list):
        return {**tool, "tools": [_echo_tool(inner) for inner in tool["tools"]]}
    return tool


def _echo_text(text: dict[str, Any]) -> dict[str, Any]:
    """`text` with a format always, and a json_schema format with the name the upstream got and the
    specification's other required fields (`strict` is false unless asked, as upstream)."""
    fmt = text.get("format") or {"type": "text"}
    if fmt["type"] == "json_schema":
        fmt = {"type": "json_schema", "name": "response", "description": None, "strict": False, **fmt}
    return {**text, "format": fmt}


# ---------------------------------------------------------------------- tools
def _tools(tools: Any, names: _ToolNames, config: UpstreamConfig, warnings: list[str],
           custom: set[str] | None = None, where: str = "tools") -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _fail(f"Invalid type for '{where}': expected an array, but got {_kind(tools)}.", where)
    if custom is None:
        custom = set()
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        param = f"{where}[{i}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise _fail(f"Invalid '{param}': expected an object with a string 'type'.", param)
        kind = tool["type"]
        if kind == "function":
            out.append(_function_tool(tool, param, names, None))
        elif kind == "custom":
            out.append(_custom_tool(tool, param, names, None, custom))
        elif kind == "namespace":
            inner = tool.get("tools")
            namespace = tool.get("name")
            if not isinstance(inner, list) or not isinstance(namespace, str):
                raise _fail(f"Invalid '{param}': a namespace tool needs a 'name' and a 'tools' array.", param)
            for j, sub in enumerate(inner):
                sub_param = f"{param}.tools[{j}]"
                if isinstance(sub, dict) and sub.get("type") == "custom":
                    out.append(_custom_tool(sub, sub_param, names, namespace, custom))
                    continue
                if not isinstance(sub, dict) or sub.get("type") != "function":
                    warnings.append(f"dropped non-function tool {sub_param} inside namespace {namespace!r}")
                    continue
                out.append(_function_tool(sub, sub_param, names, namespace))
        elif kind == "mcp":
            continue  # the gateway runs it (gateway/tools): its functions are added once it is listed
        elif config.hosted_tools == "reject":
            raise _fail(f"Tool type '{kind}' is not supported by this gateway's upstream.", f"{param}.type")
        else:
            warnings.append(f"dropped hosted tool {kind!r} ({param}): the upstream cannot run it")
    return out


def _function_tool(tool: dict[str, Any], param: str, names: _ToolNames, namespace: str | None) -> dict[str, Any]:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(f"Missing required parameter: '{param}.name'.", f"{param}.name")
    function: dict[str, Any] = {"name": names.upstream(name, namespace)}
    description = tool.get("description")
    if description is not None:
        if not isinstance(description, str):
            raise _fail(f"Invalid type for '{param}.description': expected a string.", f"{param}.description")
        function["description"] = description
    parameters = tool.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            raise _fail(f"Invalid type for '{param}.parameters': expected an object.", f"{param}.parameters")
        function["parameters"] = parameters
    else:
        function["parameters"] = {"type": "object", "properties": {}}
    strict = tool.get("strict")
    if strict is not None:
        if not isinstance(strict, bool):  # echoed back as given: a strict client reads a boolean
            raise _fail(f"Invalid type for '{param}.strict': expected a boolean.", f"{param}.strict")
        function["strict"] = strict
    return {"type": "function", "function": function}


def _custom_tool(tool: dict[str, Any], param: str, names: _ToolNames, namespace: str | None,
                 custom: set[str]) -> dict[str, Any]:
    """A freeform `custom` tool (Codex's apply_patch): a function with one string parameter, `input`."""
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(f"Missing required parameter: '{param}.name'.", f"{param}.name")
    upstream_name = names.upstream(name, namespace)
    custom.add(upstream_name)
    return custom_tool_function(tool, upstream_name)


def _additional_tools(items: Any, names: _ToolNames, config: UpstreamConfig, warnings: list[str],
                      custom: set[str], offered: set[str]) -> list[dict[str, Any]]:
    """Tools delivered in `additional_tools` input items join the request's tools."""
    if not isinstance(items, list):
        return []
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("type") == "additional_tools":
            for tool in _tools(item.get("tools"), names, config, warnings, custom, f"input[{i}].tools"):
                if tool["function"]["name"] not in offered:
                    offered.add(tool["function"]["name"])
                    out.append(tool)
    return out


def _tool_choice(choice: Any, names: _ToolNames) -> Any:
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICES:
            raise _fail(f"Invalid value for 'tool_choice': {choice!r}.", "tool_choice")
        return choice
    if not isinstance(choice, dict):
        raise _fail("Invalid type for 'tool_choice': expected a string or an object.", "tool_choice")
    if choice.get("type") in ("function", "custom"):
        name = choice.get("name")
        if not isinstance(name, str):
            raise _fail("Missing required parameter: 'tool_choice.name'.", "tool_choice.name")
        namespace = _namespace(choice.get("namespace"), "tool_choice.namespace")
        return {"type": "function", "function": {"name": names.upstream(name, namespace)}}
    if choice.get("type") == "allowed_tools":
        mode = choice.get("mode")
        return mode if mode in _TOOL_CHOICES else "auto"
    return "auto"  # a hosted tool was forced; the upstream cannot run it


_JSON_SCHEMA_FIELDS = (("name", str, "a string"), ("schema", dict, "an object"), ("strict", bool, "a boolean"),
                       ("description", str, "a string"))


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    if not text:
        return None
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise _fail("Invalid 'text.format': expected an object with a string 'type'.", "text.format")
    kind = fmt["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        for key, types, what in _JSON_SCHEMA_FIELDS:
            if fmt.get(key) is not None and not isinstance(fmt[key], types):
                raise _fail(f"Invalid type for 'text.format.{key}': expected {what}.", f"text.format.{key}")
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        schema.setdefault("name", "response")
        return {"type": "json_schema", "json_schema": schema}
    raise _fail(f"Invalid value for 'text.format.type': {kind!r}.", "text.format.type")


# ---------------------------------------------------------------------- input items
class _Conversation:
    """Collects chat messages; system text is gathered into one leading message."""

    def __init__(self, names: _ToolNames, config: UpstreamConfig | None = None,
                 warnings: list[str] | None = None) -> None:
        self.names = names
        self.system: list[str] = []
        self.messages: list[dict[str, Any]] = []
        config = config or UpstreamConfig()
        self.reasoning_field = None if config.reasoning_field == "none" else config.reasoning_field
        self.reasoning_key = config.reasoning_key
        self.call_id_style = config.tool_call_id_style
        self.warnings = warnings if warnings is not None else []
        self.reasoning: list[str] = []   # reasoning items waiting for the next assistant message
        self.calls: set[str] = set()   # the client's call ids so far
        self.checks = True   # every tool output must follow its call (False: its call may be in items not seen)

    def add(self, message: dict[str, Any]) -> None:
        if message["role"] == "assistant":
            self.attach_reasoning(message)
        else:
            self.reasoning = []  # reasoning of a turn without assistant output goes nowhere
        self.messages.append(message)

    def add_call(self, call: dict[str, Any]) -> None:
        last = self.messages[-1] if self.messages else None
        if last is None or last["role"] != "assistant":
            last = {"role": "assistant", "content": None}
            self.messages.append(last)
        self.attach_reasoning(last)
        last.setdefault("tool_calls", []).append(call)

    def attach_reasoning(self, message: dict[str, Any]) -> None:
        if not self.reasoning:
            return
        text = "\n\n".join(self.reasoning)
        self.reasoning = []
        if self.reasoning_field is not None:
            earlier = message.get(self.reasoning_field)
            message[self.reasoning_field] = f"{earlier}\n\n{text}" if earlier else text

    def call_id(self, call_id: str) -> str:
        return upstream_call_id(call_id, self.call_id_style)

    def build(self) -> list[dict[str, Any]]:
        head = [{"role": "system", "content": "\n\n".join(self.system)}] if self.system else []
        return head + self.messages


def _messages(items: Any, instructions: str | None, names: _ToolNames, *, config: UpstreamConfig | None = None,
              warnings: list[str] | None = None, param: str = "input", whole: bool = True,
              kept: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The chat messages for `items` (after the `kept` messages of earlier turns); `whole` when they are a
    whole context, so that every tool output must follow its call (as OpenAI checks: upstreams refuse an
    orphan tool message)."""
    conversation = _Conversation(names, config, warnings)
    conversation.checks = whole
    if instructions:
        conversation.system.append(instructions)
    if isinstance(items, str):
        conversation.add({"role": "user", "content": items})
        return conversation.build()
    start = _place_kept(conversation, kept) if kept is not None else 0
    for i, item in enumerate(items):
        _item(conversation, item, f"{param}[{start + i}]")
    return conversation.build()


# ---------------------------------------------------------------------- a stored turn's messages, kept
# A turn's own items translate to the same messages on every later turn, provided the options are the same
# and its first message cannot merge into the turn before it. So a stored response keeps them, encoded once,
# and a continuation places them instead of translating its whole history again. Bump KEPT_VERSION when
# translating items changes, so that messages kept by an earlier version are not used.
KEPT_VERSION = 2
# Kinds whose translation depends on the item alone (and on the options); the others are translated each time.
_MCP_CONTEXT = ("mcp_list_tools", "mcp_approval_request", "mcp_approval_response")  # the model sees only calls
_PLACE_NOTHING = (*_MCP_CONTEXT, "compaction_trigger")
_KEPT_KINDS = frozenset(("message", "function_call", "custom_tool_call", "function_call_output",
                         "custom_tool_call_output", "reasoning", "mcp_call", "compaction", *_PLACE_NOTHING))
# A first message of these kinds merges into nothing before it (and drops reasoning waiting for an answer).
_CLEAN_STARTS = ("function_call_output", "custom_tool_call_output", "compaction")


def translation_keys(config: UpstreamConfig) -> tuple[str, str]:
    """What kept messages were translated under: KEPT_VERSION and the upstream's translation options, for
    items without sealed state, and with the sealer in effect too, for items with (an empty reasoning_key is
    a key of this process alone, so those are translated again after a restart). Hashes: no key is stored."""
    options = (KEPT_VERSION, config.translation_but_key)
    sealed = (*options, sealer_for(config.reasoning_key).fingerprint)
    return _digest(options), _digest(sealed)


def _digest(options: tuple[Any, ...]) -> str:
    return hashlib.sha256(repr(options).encode()).hexdigest()[:24]


class _NamesAsked(_ToolNames):
    """Tool names that also remembers what was asked, in order: (name, namespace, upstream name)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[str, str | None, str]] = []

    def upstream(self, name: str, namespace: str | None = None) -> str:
        candidate = super().upstream(name, namespace)
        self.asked.append((name, namespace, candidate))
        return candidate


def turn_messages(items: list[dict[str, Any]], config: UpstreamConfig) -> dict[str, Any] | None:
    """A stored turn's own items (its input and output, as a later turn reads them) as what translating them
    adds to a context: system text, messages, call ids, tool names asked, reasoning left waiting; None when
    they cannot be kept (a first message that would merge into the turn before, a kind in no `_KEPT_KINDS`,
    or warnings, which each turn translating the items logs again)."""
    if not _starts_clean(items) or not all(_keepable(item) for item in items):
        return None
    names = _NamesAsked()
    conversation = _Conversation(names, config)
    conversation.checks = False  # a call may be in an earlier turn; the turn itself was checked
    try:
        for i, item in enumerate(items):
            _item(conversation, item, f"input[{i}]")
    except InvalidRequest:
        return None
    if conversation.warnings:
        return None
    sealed = any(item.get("encrypted_content") for item in items)  # a reasoning token, a compacted window
    kept = {"key": translation_keys(config)[sealed], "items": len(items), "messages": conversation.messages}
    more = {"system": conversation.system, "calls": sorted(conversation.calls), "names": names.asked,
            "reasoning": conversation.reasoning, "reset": any(item["type"] == "compaction" for item in items)}
    kept.update((name, value) for name, value in more.items() if value)  # most are empty: less to parse
    return kept


def _keepable(item: dict[str, Any]) -> bool:
    # An mcp_call without an id is called by its position in the whole context.
    return item.get("type") in _KEPT_KINDS and (item["type"] != "mcp_call" or isinstance(item.get("id"), str))


def _starts_clean(items: list[dict[str, Any]]) -> bool:
    for item in items:
        kind = item.get("type")
        if kind in _PLACE_NOTHING or kind == "message" and item.get("role") in ("system", "developer"):
            continue
        return kind in _CLEAN_STARTS or kind == "message" and item.get("role") == "user"
    return False


def _place_kept(conversation: _Conversation, kept: list[dict[str, Any]]) -> int:
    """Earlier turns' kept messages where translating their items would have put them; how many items they
    stand for (later items are numbered after them, as in the whole context)."""
    count = 0
    for turn in kept:
        for name, namespace, upstream in turn.get("names", ()):  # in the order translating them asks
            if conversation.names.upstream(name, namespace) != upstream:
                raise _NotKept
        if "reset" in turn:  # a compaction stands for everything before it
            conversation.messages, conversation.calls = [], set()
        conversation.system += turn.get("system", ())
        conversation.messages += turn["messages"]
        conversation.calls.update(turn.get("calls", ()))
        conversation.reasoning = turn.get("reasoning", [])
        count += turn["items"]
    return count


def check_items(items: list[dict[str, Any]], param: str) -> None:
    """The 400 a request with these input items would get, now: items added to a conversation are only
    translated on a later turn, whose 400 would name an `input[…]` the client never sent."""
    _messages(items, None, _ToolNames(), param=param, whole=False)  # their calls may be in earlier items


def _item(conversation: _Conversation, item: Any, param: str) -> None:
    if not isinstance(item, dict):
        raise _fail(f"Invalid '{param}': expected an object.", param)
    kind = item.get("type", _untyped_kind(item))
    if kind == "message":
        _message_item(conversation, item, param)
    elif kind == "function_call":
        call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
        for key, value in (("call_id", call_id), ("name", name), ("arguments", arguments)):
            if not isinstance(value, str):
                raise _fail(f"Invalid '{param}.{key}': expected a string.", f"{param}.{key}")
        _history_call(conversation, item, param, call_id, name, arguments)
    elif kind == "custom_tool_call":
        call_id, name, text = item.get("call_id"), item.get("name"), item.get("input")
        for key, value in (("call_id", call_id), ("name", name), ("input", text)):
            if not isinstance(value, str):
                raise _fail(f"Invalid '{param}.{key}': expected a string.", f"{param}.{key}")
        _history_call(conversation, item, param, call_id, name, custom_arguments(text))
    elif kind in ("function_call_output", "custom_tool_call_output"):
        call_id = item.get("call_id")
        if not isinstance(call_id, str):
            raise _fail(f"Invalid '{param}.call_id': expected a string.", f"{param}.call_id")
        content = _output_text(item.get("output"), f"{param}.output")
        if conversation.checks and call_id not in conversation.calls:
            raise _fail(f"No tool call found for function call output with call_id {call_id}.", f"{param}.call_id")
        conversation.add({"role": "tool", "tool_call_id": conversation.call_id(call_id), "content": content})
    elif kind == "reasoning":
        for key, kind, what in (("encrypted_content", str, "a string"), ("summary", list, "an array")):
            if item.get(key) is not None and not isinstance(item[key], kind):
                raise _fail(f"Invalid type for '{param}.{key}': expected {what}.", f"{param}.{key}")
        if conversation.reasoning_field is not None:
            text = reasoning_input_text(item, conversation.reasoning_key, param, conversation.warnings)
            if text:
                conversation.reasoning.append(text)
    elif kind == "compaction":
        _compaction_item(conversation, item, param)
    elif kind == "compaction_trigger":
        pass  # acted on before translation when it ends the input (gateway/auto_compaction.py); else a past one
    elif kind == "additional_tools":
        pass  # its tools were added to the request's tools
    elif kind == "mcp_call":
        _mcp_call_item(conversation, item, param)
    elif kind in _MCP_CONTEXT:
        pass  # the gateway's tool loop lists again; the model sees only the calls
    elif isinstance(kind, str) and kind in HANDLERS:
        _tool_history_item(conversation, item, param)
    elif kind == "item_reference":
        if not isinstance(item.get("id"), str):
            raise _fail(f"Invalid type for '{param}.id': expected a string.", f"{param}.id")
        # Resolved from the store before translation (gateway/store/service.py); left only without one.
        raise InvalidRequest(f"Item with id '{item.get('id')}' not found: an item_reference needs a stored "
                             "response or conversation holding the item (store, previous_response_id or "
                             "conversation).", param=f"{param}.id", status=404)
    elif kind is None:
        raise _fail(f"Missing required parameter: '{param}.type'.", f"{param}.type")
    else:
        raise _fail(f"Input item type {kind!r} is not supported by this gateway.", f"{param}.type")


def _untyped_kind(item: dict[str, Any]) -> str | None:
    """An item without `type`: a message by its role, else a reference by its id (the SDK's ItemReference)."""
    if "role" in item:
        return "message"
    return "item_reference" if "id" in item else None


def _tool_history_item(conversation: _Conversation, item: dict[str, Any], param: str) -> None:
    """A client-run tool's call or output, or a hosted tool's item (gateway/history_items.py)."""
    try:
        done = translate_history_item(item)
    except BadItem as exc:
        raise _fail(f"Invalid '{param}.{exc.key}': expected {exc.what}.", f"{param}.{exc.key}") from None
    if isinstance(done, Call):
        conversation.calls.add(done.call_id)
        conversation.add_call({"id": conversation.call_id(done.call_id), "type": "function",
                               "function": {"name": conversation.names.upstream(done.name), "arguments": done.arguments}})
    elif isinstance(done, Output):
        if conversation.checks and done.call_id not in conversation.calls:
            raise _fail(f"No tool call found for {item['type']} with call_id {done.call_id}.", f"{param}.call_id")
        conversation.add({"role": "tool", "tool_call_id": conversation.call_id(done.call_id), "content": done.text})
    elif isinstance(done, Context):
        last = conversation.messages[-1] if conversation.messages else None
        if last is not None and last["role"] == "assistant" and "tool_calls" not in last and \
                isinstance(last["content"], str):
            last["content"] += "\n" + done.text  # one assistant turn, as a model would have told it
        else:
            conversation.add({"role": "assistant", "content": done.text})
    else:
        assert isinstance(done, Drop)
        conversation.warnings.append(f"dropped {param} ({item['type']}): {done.reason}")


def _mcp_call_item(conversation: _Conversation, item: dict[str, Any], param: str) -> None:
    """An earlier MCP call (gateway/tools) as the function call and output the model saw then."""
    label, name, arguments = item.get("server_label"), item.get("name"), item.get("arguments")
    for key, value in (("server_label", label), ("name", name), ("arguments", arguments)):
        if not isinstance(value, str):
            raise _fail(f"Invalid '{param}.{key}': expected a string.", f"{param}.{key}")
    call_id = item.get("id") if isinstance(item.get("id"), str) else f"{param}"
    conversation.add_call({"id": call_id, "type": "function",
                           "function": {"name": upstream_name(label, name), "arguments": arguments or "{}"}})
    conversation.add({"role": "tool", "tool_call_id": call_id,
                      "content": told_result(item.get("output"), item.get("error"))})


def _compaction_item(conversation: _Conversation, item: dict[str, Any], param: str) -> None:
    """A compacted window (gateway/compaction.py): its kept user messages, then its summary."""
    window = open_window(item.get("encrypted_content"), conversation.reasoning_key)
    if window is None:
        conversation.warnings.append(f"{param}.encrypted_content was not sealed by this gateway with its current "
                                     "reasoning_key (or was altered); the compacted turns it stands for were dropped")
        return
    kept, summary = window
    # The window stands for everything before it (a chain replayed past an in-request compaction holds
    # the turns it compacted): only the system text stays.
    conversation.messages, conversation.reasoning, conversation.calls = [], [], set()
    for message in kept:
        _message_item(conversation, message, f"{param}.encrypted_content")
    conversation.add({"role": "user", "content": SUMMARY_PREFIX + summary})


def _namespace(value: Any, param: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _fail(f"Invalid type for '{param}': expected a string.", param)


def _history_call(conversation: _Conversation, item: dict[str, Any], param: str, call_id: str, name: str,
                  arguments: str) -> None:
    """An earlier call as an assistant tool call, with the upstream's metadata and id form restored."""
    namespace = _namespace(item.get("namespace"), f"{param}.namespace")
    conversation.calls.add(call_id)
    call: dict[str, Any] = {"id": conversation.call_id(call_id), "type": "function",
                            "function": {"name": conversation.names.upstream(name, namespace),
                                         "arguments": arguments}}
    extra = extra_from_item_id(item.get("id"))
    if extra is not None:
        call["extra_content"] = extra  # e.g. Gemini's thought_signature, exactly as the upstream sent it
    conversation.add_call(call)


def _message_item(conversation: _Conversation, item: dict[str, Any], param: str) -> None:
    role = item.get("role")
    if role not in _ROLES:
        raise _fail(f"Invalid value for '{param}.role': {role!r}; expected one of {', '.join(_ROLES)}.",
                    f"{param}.role")
    content = item.get("content")
    if role in ("system", "developer"):
        conversation.system.append(_plain_text(content, f"{param}.content"))
        return
    if role == "assistant":
        last = conversation.messages[-1] if conversation.messages else None
        text = _plain_text(content, f"{param}.content")
        if last is not None and last["role"] == "assistant" and "tool_calls" not in last:
            last["content"] += text  # one assistant turn split over several message items
            conversation.attach_reasoning(last)
        else:
            conversation.add({"role": "assistant", "content": text})
        return
    conversation.add({"role": "user", "content": _user_content(content, f"{param}.content")})


def _plain_text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _fail(f"Invalid type for '{param}': expected a string or an array of content parts.", param)
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise _fail(f"Invalid '{param}[{j}]': expected an object.", f"{param}[{j}]")
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            value = part.get("text")
            if not isinstance(value, str):
                raise _fail(f"Invalid '{param}[{j}].text': expected a string.", f"{param}[{j}].text")
            texts.append(value)
        elif kind == "refusal":
            texts.append(str(part.get("refusal") or ""))
        else:
            raise _fail(f"Content part type {kind!r} is not supported here.", f"{param}[{j}].type")
    return "".join(texts)


def _user_content(content: Any, param: str) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _fail(f"Invalid type for '{param}': expected a string or an array of content parts.", param)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise _fail(f"Invalid '{where}': expected an object.", where)
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            if not isinstance(part.get("text"), str):
                raise _fail(f"Invalid '{where}.text': expected a string.", f"{where}.text")
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise _fail(f"Invalid '{where}.image_url': expected a URL or data URL string "
                            "(file_id images are not supported).", f"{where}.image_url")
            image: dict[str, Any] = {"url": url}
            detail = part.get("detail")
            if detail is not None and not isinstance(detail, str):
                raise _fail(f"Invalid type for '{where}.detail': expected a string.", f"{where}.detail")
            if detail is not None:
                image["detail"] = detail  # the upstream knows which values it takes
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise _fail(f"Content part type {kind!r} is not supported by this gateway.", f"{where}.type")
    # Many local servers only accept a string: keep text-only content as one.
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _output_text(output: Any, param: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        for j, part in enumerate(output):
            if not isinstance(part, dict):
                raise _fail(f"Invalid '{param}[{j}]': expected an object.", f"{param}[{j}]")
        return _plain_text([p for p in output if p.get("type") != "input_image"], param)
    raise _fail(f"Invalid type for '{param}': expected a string or an array of content parts.", param)
