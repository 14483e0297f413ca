"""A cooperative scripted model: a `ScriptedUpstream.responder` that answers like a helpful model.

Conformance suites send real prompts and check the answer's shape, so the upstream must do what a
model would, decided from the Chat Completions request alone:

- the last message is a tool result → text quoting it;
- a tool is offered (and `tool_choice` is not "none") → a call of the forced tool, else the first,
  its arguments filled from the tool's parameter schema;
- `response_format` json_schema / json_object → JSON text filling the schema;
- otherwise text: "What is my name?" is answered from an earlier "My name is …" turn, "count
  from A to B" counts, anything else gets a short greeting (mentioning an image when one was sent).

Every answer streams in the canonical OpenAI framing with usage, so both gateway paths see it.
"""
from __future__ import annotations

import json
import re
from typing import Any

from .scripted_upstream import Reply, chunk, sse, text_reply, usage

_NAME = re.compile(r"\bmy name is (\w+)", re.IGNORECASE)
_COUNT = re.compile(r"\bcount from (\d+) to (\d+)", re.IGNORECASE)
_PROPER = re.compile(r"[A-Z][a-z]+(?: [A-Z][a-z]+)*")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _has_image(content: Any) -> bool:
    return isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "image_url" for p in content)


def fill(schema: Any, hint: str, key: str = "") -> Any:
    """A value that satisfies a (simple) JSON schema; strings take `hint` (the prompt's last proper noun), else their key."""
    if not isinstance(schema, dict):
        return hint
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for union in ("anyOf", "oneOf"):
        if union in schema:
            return fill(schema[union][0], hint, key)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {name: fill(sub, hint, name) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [fill(schema.get("items"), hint, key)]
    return {"integer": 1, "number": 1.5, "boolean": True, "null": None}.get(kind, hint or key)


class CooperativeModel:
    """Decides each answer from the request; `requests` counts them (call ids stay unique)."""

    def __init__(self) -> None:
        self.requests = 0

    def __call__(self, body: dict[str, Any]) -> Reply:
        self.requests += 1
        messages = body.get("messages") or []
        last = messages[-1] if messages else {}
        if last.get("role") == "tool":
            return text_reply("The tool returned: ", _text(last.get("content")))
        prompt = _text(last.get("content"))
        proper = _PROPER.findall(prompt.split(" ", 1)[-1])  # the first word is capitalised anyway
        hint = proper[-1] if proper else ""
        tool = self._tool(body)
        if tool is not None:
            arguments = json.dumps(fill(tool.get("parameters") or {}, hint))
            return self._call(tool["name"], arguments)
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            return text_reply(json.dumps(fill((fmt.get("json_schema") or {}).get("schema") or {}, hint)))
        if fmt.get("type") == "json_object":
            return text_reply(json.dumps({"answer": hint or "yes"}))
        return text_reply(*_words(self._answer(messages, prompt, _has_image(last.get("content")))))

    @staticmethod
    def _tool(body: dict[str, Any]) -> dict[str, Any] | None:
        tools = [t["function"] for t in body.get("tools") or [] if isinstance(t.get("function"), dict)]
        choice = body.get("tool_choice", "auto")
        if not tools or choice == "none":
            return None
        if isinstance(choice, dict):
            wanted = (choice.get("function") or {}).get("name")
            return next((t for t in tools if t["name"] == wanted), tools[0])
        return tools[0]

    def _call(self, name: str, arguments: str) -> Reply:
        call_id = f"call_coop{self.requests:06d}"
        fragments = [arguments[i:i + 8] for i in range(0, len(arguments), 8)] or [""]
        chunks = [chunk({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]})]
        chunks += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}) for f in fragments]
        chunks += [chunk({}, finish="tool_calls"), chunk(choices=False, usage=usage(12, len(fragments)))]
        return Reply([sse(*chunks)])

    @staticmethod
    def _answer(messages: list[dict[str, Any]], prompt: str, image: bool) -> str:
        if "my name" in prompt.lower():
            for message in reversed(messages[:-1]):
                found = _NAME.search(_text(message.get("content"))) if message.get("role") == "user" else None
                if found:
                    return f"Your name is {found.group(1)}."
            return "You have not told me your name."
        count = _COUNT.search(prompt)
        if count:
            low, high = int(count.group(1)), int(count.group(2))
            return ", ".join(str(n) for n in range(low, min(high, low + 100) + 1))
        if image:
            return "I see a small red heart on a white background."
        return "Hello there, friend!"


def _words(text: str) -> list[str]:
    return re.findall(r"\S+\s*", text) or [text]
