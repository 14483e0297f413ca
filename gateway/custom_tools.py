"""Codex's custom (freeform) tools over Chat Completions, which has functions only (pure, no I/O).

A custom tool such as `apply_patch` takes raw text, not JSON. Upstream it is offered as a
function with one string parameter, `input` (`custom_tool_function`; an earlier call goes back
as `custom_arguments`). On the way out, `InputDecoder` streams that string back out of the JSON
argument fragments, so the client gets `response.custom_tool_call_input.delta` events as the
fragments arrive.
"""
from __future__ import annotations

import re
from typing import Any

import orjson

CUSTOM_INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "The raw input for the tool, as free text."}},
    "required": ["input"],
    "additionalProperties": False,
}


def custom_tool_function(tool: dict[str, Any], upstream_name: str) -> dict[str, Any]:
    """A Responses `custom` tool as a Chat Completions function taking one string, `input`."""
    parts = []
    if isinstance(tool.get("description"), str) and tool["description"]:
        parts.append(tool["description"])
    fmt = tool.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
        syntax = fmt.get("syntax") if isinstance(fmt.get("syntax"), str) else "lark"
        parts.append(f"The input must follow this {syntax} grammar:\n{fmt['definition']}")
    parts.append("Pass the raw input text, unchanged, as the string parameter `input`.")
    return {"type": "function", "function": {"name": upstream_name, "description": "\n\n".join(parts),
                                             "parameters": CUSTOM_INPUT_SCHEMA}}


def custom_arguments(text: str) -> str:
    """A custom tool call's input as the function arguments the upstream produced for it."""
    return orjson.dumps({"input": text}).decode()


# ---------------------------------------------------------------------- streaming `input`
_PREFIX = '{"input":"'
_WS = " \t\r\n"
_SPECIAL = re.compile(r'["\\]')
_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class InputDecoder:
    """Decodes the string value of `"input"` from argument fragments of `{"input": "..."}`.

    `feed` returns the newly decoded text (maybe ""). If the arguments turn out to have another
    shape, nothing is streamed and `finish` works the input out of the complete arguments.
    The concatenation of everything returned by `feed` and `finish`'s tail is always `finish`'s
    final input.
    """

    __slots__ = ("_matched", "_state", "_held", "_parts")

    def __init__(self) -> None:
        self._matched = 0      # characters of _PREFIX matched so far
        self._state = 0        # 0 before the string, 1 inside it, 2 after it, -1 another shape
        self._held = ""        # an escape sequence cut by the fragment boundary
        self._parts: list[str] = []

    def feed(self, fragment: str) -> str:
        if self._state == 0:
            fragment = self._scan(fragment)
        if self._state != 1 or not fragment:
            return ""
        text = self._string(self._held + fragment if self._held else fragment)
        if text:
            self._parts.append(text)
        return text

    def finish(self, arguments: str) -> tuple[str, str]:
        """(tail still to stream, final input)."""
        if self._state in (1, 2):
            return "", "".join(self._parts)
        final = _fallback_input(arguments)
        return final, final

    def _scan(self, fragment: str) -> str:
        for i, ch in enumerate(fragment):
            k = self._matched
            if ch in _WS and k in (0, 1, 8, 9):
                continue
            if ch != _PREFIX[k]:
                self._state = -1
                return ""
            self._matched = k + 1
            if self._matched == len(_PREFIX):
                self._state = 1
                return fragment[i + 1:]
        return ""

    def _string(self, s: str) -> str:
        self._held = ""
        out: list[str] = []
        pos, end = 0, len(s)
        while pos < end:
            match = _SPECIAL.search(s, pos)
            if match is None:
                out.append(s[pos:])
                break
            at = match.start()
            if at > pos:
                out.append(s[pos:at])
            if s[at] == '"':
                self._state = 2
                break
            if at + 1 >= end:
                self._held = s[at:]
                break
            code = s[at + 1]
            if code != "u":
                out.append(_ESCAPES.get(code, code))
                pos = at + 2
                continue
            if at + 6 > end:
                self._held = s[at:]
                break
            hex4 = s[at + 2:at + 6]
            if not _HEX4.fullmatch(hex4):
                out.append(s[at:at + 6])   # not a valid escape: keep it as it was
                pos = at + 6
                continue
            unit = int(hex4, 16)
            if 0xD800 <= unit < 0xDC00:    # a high surrogate: its low half follows as \uXXXX
                following = s[at + 6:at + 12]
                if len(following) < 6 and "\\u".startswith(following[:2]):
                    self._held = s[at:]
                    break
                if following[:2] == "\\u" and _HEX4.fullmatch(following[2:]):
                    low = int(following[2:], 16)
                    if 0xDC00 <= low < 0xE000:
                        out.append(chr(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)))
                        pos = at + 12
                        continue
                out.append("\ufffd")       # a lone surrogate cannot be sent as UTF-8
                pos = at + 6
                continue
            out.append("\ufffd" if 0xDC00 <= unit < 0xE000 else chr(unit))
            pos = at + 6
        return "".join(out)


def _fallback_input(arguments: str) -> str:
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments          # the model sent the raw input instead of JSON
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if isinstance(value.get("input"), str):
            return value["input"]
        strings = [v for v in value.values() if isinstance(v, str)]
        if len(value) == 1 and strings:
            return strings[0]
    return arguments
