"""Input items of tools the upstream does not run itself, in a replayed history (pure functions).

A Chat Completions upstream knows function calls and their outputs, and text. So:
- the client-run tools (Codex's `local_shell_call`, `shell_call`, `apply_patch_call`, a `computer_call`,
  a `program`, a client `tool_search_call`) become the function calls they are, named after the tool, with
  their arguments as JSON, and their outputs the tool messages answering them;
- the hosted tools OpenAI ran (`web_search_call`, `file_search_call`, `image_generation_call`,
  `code_interpreter_call`, a server `tool_search_call`/`tool_search_output`) become readable context: a line
  of assistant text saying what was done and what came back;
- items with nothing the model could use (`configuration_update`) are dropped with a warning.
MCP items are the gateway's own tool loop's (gateway/tools): translate.py places them.

Each function returns a `Call`, an `Output`, a `Context` line or a `Drop` reason; translate.py places them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

_CONTEXT_TEXT = 4000  # a hosted tool's result beyond this many characters is cut: context, not a transcript


@dataclass(frozen=True)
class Call:
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Output:
    call_id: str
    text: str


@dataclass(frozen=True)
class Context:
    text: str


@dataclass(frozen=True)
class Drop:
    reason: str


Translated = Call | Output | Context | Drop


class BadItem(Exception):
    """A required field is missing or of the wrong type: (field, what was expected)."""

    def __init__(self, key: str, what: str) -> None:
        super().__init__(key)
        self.key, self.what = key, what


def _str(item: dict[str, Any], key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise BadItem(key, "a string")
    return value


def _obj(item: dict[str, Any], key: str) -> dict[str, Any]:
    value = item.get(key)
    if not isinstance(value, dict):
        raise BadItem(key, "an object")
    return value


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _cut(text: str) -> str:
    return text if len(text) <= _CONTEXT_TEXT else text[:_CONTEXT_TEXT] + f"… ({len(text)} characters)"


def _without(value: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in value.items() if k not in keys and v is not None}


# ------------------------------------------------------------------ client-run tools: calls and outputs
def _local_shell_call(item: dict[str, Any]) -> Translated:
    return Call(_str(item, "call_id"), "local_shell", _json(_without(_obj(item, "action"), "type")))


def _local_shell_output(item: dict[str, Any]) -> Translated:
    return Output(_str(item, "id"), _str(item, "output"))  # its `id` is the call's call_id


def _shell_call(item: dict[str, Any]) -> Translated:
    return Call(_str(item, "call_id"), "shell", _json(_without(_obj(item, "action"), "type")))


def _shell_output(item: dict[str, Any]) -> Translated:
    output = item.get("output")
    if not isinstance(output, list):
        raise BadItem("output", "an array")
    parts = []
    for entry in output:
        if not isinstance(entry, dict):
            raise BadItem("output", "an array of objects")
        text = "".join(str(entry.get(key) or "") for key in ("stdout", "stderr"))
        outcome = entry.get("outcome") if isinstance(entry.get("outcome"), dict) else {}
        if outcome.get("type") == "exit":
            text += f"\n(exit code {outcome.get('exit_code')})"
        elif outcome.get("type") == "timeout":
            text += "\n(timed out)"
        parts.append(text)
    return Output(_str(item, "call_id"), "\n".join(parts))


def _apply_patch_call(item: dict[str, Any]) -> Translated:
    return Call(_str(item, "call_id"), "apply_patch", _json(_obj(item, "operation")))


def _apply_patch_output(item: dict[str, Any]) -> Translated:
    status = _str(item, "status")
    output = item.get("output")
    return Output(_str(item, "call_id"), f"{status}: {output}" if isinstance(output, str) and output else status)


def _computer_call(item: dict[str, Any]) -> Translated:
    actions = item.get("actions") if item.get("actions") is not None else item.get("action")
    return Call(_str(item, "call_id"), "computer", _json({"action": actions}))


def _computer_output(item: dict[str, Any]) -> Translated:
    # The screenshot is an image; a tool message carries text on most upstreams.
    return Output(_str(item, "call_id"), "(screenshot taken)")


def _program(item: dict[str, Any]) -> Translated:
    return Call(_str(item, "call_id"), "program", _json({"code": _str(item, "code")}))


def _program_output(item: dict[str, Any]) -> Translated:
    return Output(_str(item, "call_id"), _str(item, "result"))


def _tool_search_call(item: dict[str, Any]) -> Translated:
    if item.get("execution") == "client" and isinstance(item.get("call_id"), str):
        return Call(item["call_id"], "tool_search", _json(item.get("arguments")))
    return Context(f"[tool search: {_cut(_json(item.get('arguments')))}]")


def _tool_search_output(item: dict[str, Any]) -> Translated:
    tools = item.get("tools")
    if not isinstance(tools, list):
        raise BadItem("tools", "an array")
    names = ", ".join(str(tool.get("name") or tool.get("type")) for tool in tools if isinstance(tool, dict))
    if item.get("execution") == "client" and isinstance(item.get("call_id"), str):
        return Output(item["call_id"], f"tools found: {names or 'none'}")
    return Context(f"[tool search found: {names or 'none'}]")


# ------------------------------------------------------------------ hosted tools: readable context
def _web_search(item: dict[str, Any]) -> Translated:
    action = _obj(item, "action")
    kind = action.get("type")
    if kind == "search":
        queries = action.get("queries") or ([action["query"]] if action.get("query") else [])
        return Context(f"[web search: {'; '.join(map(str, queries))}]")
    if kind == "open_page":
        return Context(f"[opened web page: {action.get('url')}]")
    if kind == "find_in_page" or kind == "find":
        return Context(f"[searched the page {action.get('url')} for {action.get('pattern')!r}]")
    return Context(f"[web search: {_cut(_json(action))}]")


def _file_search(item: dict[str, Any]) -> Translated:
    queries = item.get("queries")
    if not isinstance(queries, list):
        raise BadItem("queries", "an array of strings")
    lines = [f"[file search: {'; '.join(map(str, queries))}]"]
    for result in item.get("results") or []:
        if isinstance(result, dict):
            lines.append(f"- {result.get('filename') or result.get('file_id')}: {_cut(str(result.get('text') or ''))}")
    return Context("\n".join(lines))


def _image_generation(item: dict[str, Any]) -> Translated:
    prompt = item.get("revised_prompt")
    # The image itself (base64 in `result`) is not text an upstream could read back.
    return Context(f"[generated an image: {prompt}]" if isinstance(prompt, str) else "[generated an image]")


def _code_interpreter(item: dict[str, Any]) -> Translated:
    code = item.get("code")
    lines = [f"[ran code in {item.get('container_id')}:", f"```\n{_cut(code)}\n```" if isinstance(code, str) else ""]
    for output in item.get("outputs") or []:
        if isinstance(output, dict) and output.get("type") == "logs":
            lines.append(f"output:\n{_cut(str(output.get('logs') or ''))}")
        elif isinstance(output, dict) and output.get("type") == "image":
            lines.append("(an image)")
    return Context("\n".join(line for line in lines if line) + "]")


def _dropped(reason: str) -> Any:
    return lambda item: Drop(reason)


HANDLERS: dict[str, Any] = {
    "local_shell_call": _local_shell_call, "local_shell_call_output": _local_shell_output,
    "shell_call": _shell_call, "shell_call_output": _shell_output,
    "apply_patch_call": _apply_patch_call, "apply_patch_call_output": _apply_patch_output,
    "computer_call": _computer_call, "computer_call_output": _computer_output,
    "program": _program, "program_output": _program_output,
    "tool_search_call": _tool_search_call, "tool_search_output": _tool_search_output,
    "web_search_call": _web_search, "file_search_call": _file_search,
    "image_generation_call": _image_generation, "code_interpreter_call": _code_interpreter,
    "configuration_update": _dropped("a configuration update, which has no Chat Completions equivalent"),
}


def translate_history_item(item: dict[str, Any]) -> Translated:
    """`item` (of a type in HANDLERS) as a call, an output, context or a drop; BadItem when malformed."""
    return HANDLERS[item["type"]](item)
