"""Validate Responses API event streams the way real clients read them.

`check_bytes(raw)` takes the raw `text/event-stream` bytes of one response and returns
`(violations, warnings, result)`: what breaks at least one real client (the openai SDK's
stream helper and strict validation, openai-agents, Codex CLI, the Vercel AI SDK,
LangChain; see the README's "Stream rules"), what is merely unusual, and the stream folded
into what a client ends up holding (text, tool calls, reasoning, status, usage, error).

SSE framing is read exactly as the HTML Living Standard says (which is what clients do),
not leniently like the gateway's own upstream decoder: an event without its closing blank
line is lost to a client, so here it is a violation.

`gateway check URL --model M` (`register` adds it to the CLI) runs a short conformance battery
against any Responses endpoint with this validator and prints a table (or JSON).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from .cli_io import CliError, read_bytes

TERMINAL_STATUS = {"response.completed": "completed", "response.incomplete": "incomplete",
                   "response.failed": "failed"}
LIFECYCLE = frozenset({"response.created", "response.in_progress", "response.queued", *TERMINAL_STATUS})


@dataclass(frozen=True)
class Family:
    """A `<name>.delta`* / `<name>.done` event family and where its text lives."""

    kind: str                 # short name used in messages and the folded result
    item_type: str            # the output item the family belongs to
    index_field: str | None   # content_index / summary_index, or None (one per item)
    final_field: str          # the field of `.done` holding the whole text
    part_type: str | None     # the content part a delta must be opened by (None: no part)
    part_required: bool = True


FAMILIES = {f"response.{name}": family for name, family in {
    "output_text": Family("text", "message", "content_index", "text", "output_text"),
    "refusal": Family("refusal", "message", "content_index", "refusal", "refusal"),
    # Reasoning text parts are optional for every client observed: a missing part is a warning.
    "reasoning_text": Family("reasoning", "reasoning", "content_index", "text", "reasoning_text", False),
    "reasoning_summary_text": Family("summary", "reasoning", "summary_index", "text", None),
    "function_call_arguments": Family("arguments", "function_call", None, "arguments", None),
    "custom_tool_call_input": Family("input", "custom_tool_call", None, "input", None),
    "mcp_call_arguments": Family("mcp_arguments", "mcp_call", None, "arguments", None),
}.items()}
# Where an item's final text lives, per family kind: (list field of the item, part type, text key).
FINAL_TEXT = {"text": ("content", "output_text", "text"), "refusal": ("content", "refusal", "refusal"),
              "reasoning": ("content", "reasoning_text", "text"), "summary": ("summary", None, "text")}
# Streams whose text clients only see through deltas (AI SDK streamText, LangChain).
MUST_STREAM = frozenset({"text", "arguments", "reasoning", "summary"})

_ITEM_EVENT = ("item_id", "output_index")
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    **{t: ("response",) for t in LIFECYCLE},
    "response.output_item.added": ("output_index", "item"),
    "response.output_item.done": ("output_index", "item"),
    "response.content_part.added": (*_ITEM_EVENT, "content_index", "part"),
    "response.content_part.done": (*_ITEM_EVENT, "content_index", "part"),
    "response.reasoning_summary_part.added": (*_ITEM_EVENT, "summary_index", "part"),
    "response.reasoning_summary_part.done": (*_ITEM_EVENT, "summary_index", "part"),
    "response.output_text.annotation.added": (*_ITEM_EVENT, "content_index", "annotation_index"),
    "error": ("message",),
    **{f"response.{kind}.{stage}": _ITEM_EVENT for kind, stages in (
        ("mcp_list_tools", ("in_progress", "completed", "failed")),
        ("mcp_call", ("in_progress", "completed", "failed"))) for stage in stages},
}
for _name, _family in FAMILIES.items():
    _index = (_family.index_field,) if _family.index_field else ()
    _logprobs = ("logprobs",) if _family.kind == "text" else ()
    REQUIRED_FIELDS[f"{_name}.delta"] = (*_ITEM_EVENT, *_index, "delta", *_logprobs)
    REQUIRED_FIELDS[f"{_name}.done"] = (*_ITEM_EVENT, *_index, _family.final_field, *_logprobs)
# In the schema, but no client breaks without them.
SOFT_FIELDS = frozenset({"logprobs"})
ITEM_FIELDS = {"message": ("id", "role", "content"), "function_call": ("id", "call_id", "name", "arguments", "status"),
               "reasoning": ("id", "summary"), "custom_tool_call": ("id", "call_id", "name", "input")}
# Fields an item keeps from output_item.added to output_item.done (Codex, the openai helper).
IDENTITY_FIELDS = ("id", "type", "call_id", "name")
RESPONSE_FIELDS = ("id", "object", "created_at", "model", "output", "parallel_tool_calls", "tool_choice", "tools")
USAGE_DETAILS = (("input_tokens_details", "cached_tokens"), ("output_tokens_details", "reasoning_tokens"))


# ---------------------------------------------------------------------------------------- SSE framing
@dataclass
class Frame:
    """One dispatched SSE event."""

    event: str
    data: str


_EOL = re.compile(r"\r\n|\r|\n")


def parse_sse(raw: bytes) -> tuple[list[Frame], list[str], list[str]]:
    """Split raw bytes into dispatched events, as a spec-compliant client would; plus problems and notes."""
    problems: list[str] = []
    notes: list[str] = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(f"stream is not valid UTF-8 at byte {exc.start} (clients see U+FFFD)")
        text = raw.decode("utf-8", errors="replace")
    text = text.removeprefix("\ufeff")
    *lines, unterminated = _EOL.split(text)
    frames: list[Frame] = []
    data: list[str] = []
    event = ""
    dataless = ""  # a field seen in a block without data (openai-python dispatches it anyway)
    for number, line in enumerate(lines, 1):
        if not line:
            if data:
                frames.append(Frame(event or "message", "\n".join(data)))
            elif dataless:
                problems.append(f"line {number}: a block with `{dataless}:` but no data: openai-python dispatches "
                                "an empty event and fails to parse it (the spec dispatches nothing)")
            data, event, dataless = [], "", ""
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            event, dataless = value, dataless or "event"
        elif name in ("id", "retry"):
            dataless = dataless or name
        else:
            notes.append(f"line {number}: unknown SSE field ignored: {line[:100]!r}")
    if data:
        problems.append("the last event has no closing blank line, so clients never dispatch it: "
                        f"{data[0][:100]!r}")
    elif unterminated.strip():
        notes.append(f"the stream ends inside a line: {unterminated[:100]!r}")
    return frames, problems, notes


# ---------------------------------------------------------------------------------------- validation
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Item:
    """What the stream said about one output index so far."""

    __slots__ = ("added", "done", "parts", "parts_done", "summary_parts", "deltas", "finals")

    def __init__(self, added: dict[str, Any]) -> None:
        self.added = added
        self.done: dict[str, Any] | None = None
        self.parts: dict[Any, Any] = {}        # content_index -> part type
        self.parts_done: set[Any] = set()
        self.summary_parts: set[Any] = set()
        self.deltas: dict[tuple[str, Any], list[str]] = {}   # (kind, index) -> deltas
        self.finals: dict[tuple[str, Any], Any] = {}          # (kind, index) -> the .done text

    @property
    def type(self) -> Any:
        return self.added.get("type")

    def streamed(self, kind: str) -> str:
        return "".join("".join(parts) for (k, _), parts in self.deltas.items() if k == kind)


class StreamValidator:
    """Feed frames in order with `frame()`, then `end()`; read `violations`, `warnings`, `result()`."""

    def __init__(self) -> None:
        self.violations: list[str] = []
        self.warnings: list[str] = []
        self.frames = 0
        self.queued = False  # a background response's stream: response.queued second
        self.items: dict[int, _Item] = {}
        self.response_id: str | None = None
        self.sequence: int | None = None
        self.terminal: dict[str, Any] | None = None
        self.error_events: list[dict[str, Any]] = []
        self._done_marker = False

    # -- reporting
    def fail(self, message: str) -> None:
        self.violations.append(f"#{self.frames} {message}" if self.frames else message)

    def warn(self, message: str) -> None:
        self.warnings.append(f"#{self.frames} {message}" if self.frames else message)

    # -- framing
    def frame(self, frame: Frame) -> None:
        self.frames += 1
        if frame.data == "[DONE]":
            if self.terminal is None:
                self.fail("data: [DONE] before the terminal event: clients stop reading there")
            self._done_marker = True
            return
        if self._done_marker:
            self.fail("an event after data: [DONE]")
        try:
            event = json.loads(frame.data)
        except ValueError as exc:
            self.fail(f"data is not JSON ({exc}): {frame.data[:100]!r}")
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self.fail(f"data is not an object with a string `type`: {frame.data[:100]!r}")
            return
        if event.get("error") and event["type"] != "error":
            self.fail(f"{event['type']}: a truthy top-level `error` key makes the openai SDK raise APIError")
        if frame.event != "message" and frame.event != event["type"]:
            self.fail(f"`event: {frame.event}` does not match data.type {event['type']}")
        self.event(event)

    # -- events
    def event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if self.terminal is not None:
            self.fail(f"{kind} after the terminal event {self.terminal['type']}")
        self._sequence(kind, event.get("sequence_number"))
        for name in REQUIRED_FIELDS.get(kind, ()):
            if name not in event:
                (self.warn if name in SOFT_FIELDS else self.fail)(f"{kind}: required field `{name}` missing")
        if self.frames == 1 and kind != "response.created":
            self.fail(f"the first event is {kind}, not response.created (responses.stream() raises)")
        elif self.frames == 2 and kind not in ("response.in_progress", "response.queued"):
            self.fail(f"the second event is {kind}, not response.in_progress (or response.queued, background)")
        elif self.frames == 3 and self.queued and kind != "response.in_progress" and kind not in TERMINAL_STATUS:
            self.fail(f"the event after response.queued is {kind}, not response.in_progress")
        if self.frames == 2 and kind == "response.queued":
            self.queued = True
        if kind in LIFECYCLE:
            self._lifecycle(kind, event)
        elif kind == "error":
            self.error_events.append(event)
        elif kind == "response.output_item.added":
            self._item_added(event.get("output_index"), event.get("item"))
        else:
            self._item_event(kind, event)

    def _sequence(self, kind: str, number: Any) -> None:
        if not _is_int(number):
            self.fail(f"{kind}: sequence_number missing or not an integer ({number!r})")
            return
        expected = 0 if self.sequence is None else self.sequence + 1
        if number != expected:
            self.fail(f"{kind}: sequence_number {number}, expected {expected} (numbers go up by one from 0)")
        self.sequence = number

    def _item_event(self, kind: str, event: dict[str, Any]) -> None:
        index = event.get("output_index")
        item = self.items.get(index) if _is_int(index) else None
        if item is None:
            self.fail(f"{kind} for output_index {index!r} before its output_item.added "
                      "(responses.stream() raises)")
            return
        if kind == "response.output_item.done":
            self._item_done(index, item, event.get("item"))
            return
        if item.done is not None:
            self.fail(f"{kind} for output_index {index} after its output_item.done")
        item_id = item.added.get("id")
        if "item_id" in event and item_id and event["item_id"] != item_id:
            self.fail(f"{kind}: item_id {event['item_id']!r} is not the added item's id {item_id!r}")
        family_name, _, stage = kind.rpartition(".")
        family = FAMILIES.get(family_name)
        if family is not None and stage == "delta":
            self._delta(kind, family, item, event)
        elif family is not None and stage == "done":
            self._final(kind, family, item, event)
        elif kind in ("response.content_part.added", "response.content_part.done"):
            self._part(kind, item, event)
        elif kind in ("response.reasoning_summary_part.added", "response.reasoning_summary_part.done"):
            self._summary_part(kind, item, event.get("summary_index"))
        elif kind not in REQUIRED_FIELDS:
            self.warn(f"event type {kind} is not known to this validator")

    def _item_added(self, index: Any, item: Any) -> None:
        if not _is_int(index):
            self.fail(f"output_item.added: output_index {index!r} is not an integer")
            return
        if index in self.items:
            self.fail(f"a second output_item.added for output_index {index}")
            return
        if index != len(self.items):
            self.fail(f"output_item.added has output_index {index}, expected {len(self.items)} "
                      "(indexes go 0, 1, 2, ...)")
        if not isinstance(item, dict) or not item.get("type"):
            self.fail("output_item.added without an item type")
            return
        self.items[index] = _Item(item)
        self._item_fields("output_item.added", item)
        if item.get("status") not in (None, "in_progress"):
            self.warn(f"output_item.added: item status {item.get('status')!r}, expected in_progress")

    def _item_fields(self, where: str, item: dict[str, Any]) -> None:
        kind = item.get("type")
        for name in ITEM_FIELDS.get(kind, ("id",)):
            value = item.get(name)
            named = name in ("id", "call_id", "name")
            if name not in item or (named and not (isinstance(value, str) and value)):
                self.fail(f"{where}: the {kind} item lacks `{name}`")
        if kind == "function_call" and not isinstance(item.get("arguments", ""), str):
            self.fail(f"{where}: function_call arguments must be a string")

    def _item_done(self, index: int, item: _Item, done: Any) -> None:
        if item.done is not None:
            self.fail(f"a second output_item.done for output_index {index}")
            return
        if not isinstance(done, dict):
            self.fail(f"output_item.done for output_index {index} without an item")
            return
        item.done = done
        for name in IDENTITY_FIELDS:
            if name in item.added and item.added[name] != done.get(name):
                self.fail(f"output_item.done changes `{name}` from {item.added[name]!r} to {done.get(name)!r}")
        # Reasoning, compaction, MCP listing and approval request items have no status of their own (the openai
        # SDK's types agree).
        no_status = ("reasoning", "compaction", "mcp_list_tools", "mcp_approval_request")
        default_status = "completed" if item.type in no_status else None
        ended = ("completed", "incomplete", "failed") if item.type == "mcp_call" else ("completed", "incomplete")
        if done.get("status", default_status) not in ended:
            self.fail(f"output_item.done: status {done.get('status')!r}, expected {' or '.join(ended)}")
        self._item_fields("output_item.done", done)
        for kind, position, text in _final_texts(done):
            self._agrees(index, item, kind, position, text)
        if item.type == "function_call":
            try:
                json.loads(done.get("arguments") or "{}")
            except (TypeError, ValueError):
                self.warn(f"function_call {done.get('name')!r}: arguments are not valid JSON")
        for kind, position in item.deltas:
            if (kind, position) not in item.finals:
                self.fail(f"output_index {index}: {kind} deltas (index {position}) without their .done event")
        for position in item.parts.keys() - item.parts_done:
            self.warn(f"output_index {index}: content part {position} added but never done")

    def _agrees(self, index: int, item: _Item, kind: str, position: Any, text: Any) -> None:
        """The done item's text must be what the stream said, and must have been streamed."""
        if not isinstance(text, str):
            return
        key = (kind, position)
        if key in item.finals and item.finals[key] != text:
            self.fail(f"output_index {index}: output_item.done {kind} differs from its .done event")
        if text and key not in item.deltas and kind in MUST_STREAM:
            self.fail(f"output_index {index}: the item has {kind} {text[:40]!r} but no delta streamed it "
                      "(AI SDK streamText and LangChain see nothing)")

    def _delta(self, kind: str, family: Family, item: _Item, event: dict[str, Any]) -> None:
        if item.type != family.item_type:
            self.fail(f"{kind} on a {item.type} item")
            return
        position = event.get(family.index_field) if family.index_field else None
        if family.part_type and item.parts.get(position) != family.part_type:
            report = self.fail if family.part_required else self.warn
            report(f"{kind} for content_index {position} without content_part.added({family.part_type}) before it")
        if family.kind == "summary" and position not in item.summary_parts:
            self.warn(f"{kind} for summary_index {position} without reasoning_summary_part.added")
        if (family.kind, position) in item.finals:
            self.fail(f"{kind} after its .done event")
        delta = event.get("delta")
        if not isinstance(delta, str):
            self.fail(f"{kind}: delta is not a string")
            return
        item.deltas.setdefault((family.kind, position), []).append(delta)

    def _final(self, kind: str, family: Family, item: _Item, event: dict[str, Any]) -> None:
        if item.type != family.item_type:
            self.fail(f"{kind} on a {item.type} item")
            return
        key = (family.kind, event.get(family.index_field) if family.index_field else None)
        if key in item.finals:
            self.fail(f"a second {kind}")
            return
        text = item.finals[key] = event.get(family.final_field)
        streamed = "".join(item.deltas.get(key, ()))
        if key in item.deltas and text != streamed:
            self.fail(f"{kind}: {family.final_field} ({len(str(text))} chars) is not the concatenation of its "
                      f"deltas ({len(streamed)} chars)")

    def _part(self, kind: str, item: _Item, event: dict[str, Any]) -> None:
        position = event.get("content_index")
        part = event.get("part") if isinstance(event.get("part"), dict) else {}
        if kind.endswith(".added"):
            if position in item.parts:
                self.fail(f"a second content_part.added for content_index {position}")
            else:
                item.parts[position] = part.get("type")
            return
        if position not in item.parts:
            self.fail(f"content_part.done for content_index {position} without content_part.added")
            return
        if position in item.parts_done:
            self.fail(f"a second content_part.done for content_index {position}")
        item.parts_done.add(position)
        family = next((f for f in FAMILIES.values() if f.part_type and f.part_type == part.get("type")), None)
        if family is not None:
            final = item.finals.get((family.kind, position))
            text = part.get(FINAL_TEXT[family.kind][2])
            if final is not None and final != text:
                self.fail(f"content_part.done text differs from the {family.kind} .done text "
                          f"(content_index {position})")

    def _summary_part(self, kind: str, item: _Item, position: Any) -> None:
        if kind.endswith(".added"):
            item.summary_parts.add(position)
        elif position not in item.summary_parts:
            self.warn(f"{kind} for summary_index {position} without reasoning_summary_part.added")

    def _lifecycle(self, kind: str, event: dict[str, Any]) -> None:
        response = event.get("response")
        if kind in TERMINAL_STATUS:
            self.terminal = event
        if not isinstance(response, dict) or not response.get("id"):
            self.fail(f"{kind}: the response object has no id")
            return
        if self.response_id is None:
            self.response_id = response["id"]
        elif response["id"] != self.response_id:
            self.fail(f"{kind}: response.id {response['id']!r} is not {self.response_id!r} "
                      "(the lifecycle's response changed)")
        status = response.get("status")
        expected = TERMINAL_STATUS.get(kind)
        if expected is None:
            if status not in ("in_progress", "queued"):
                self.warn(f"{kind}: response.status {status!r}, expected in_progress")
            return
        # A cancelled background response ends with response.failed (no cancelled event exists).
        cancelled = kind == "response.failed" and status == "cancelled" and self.queued
        if status != expected and not cancelled:
            self.fail(f"{kind}: response.status {status!r}, expected {expected!r}")
        if not cancelled:
            self._terminal_response(kind, response)

    def _terminal_response(self, kind: str, response: dict[str, Any]) -> None:
        for problem in response_problems(response):
            self.fail(f"{kind}: {problem}")
        if kind != "response.failed":
            self._output_agrees(kind, response.get("output"))

    def _output_agrees(self, kind: str, output: Any) -> None:
        done = [self.items[i].done for i in sorted(self.items) if self.items[i].done is not None]
        if not isinstance(output, list):
            self.fail(f"{kind}: response.output is missing (it must list the output_item.done items)")
        elif len(output) != len(done):
            self.fail(f"{kind}: response.output has {len(output)} items, the stream finished {len(done)}")
        else:
            for position, (final, streamed) in enumerate(zip(output, done)):
                if final != streamed:
                    keys = sorted(k for k in {*final, *streamed} if final.get(k) != streamed.get(k)) \
                        if isinstance(final, dict) else "?"
                    self.fail(f"{kind}: response.output[{position}] differs from its output_item.done "
                              f"(keys {keys})")

    def end(self) -> None:
        self.frames = 0
        if self.terminal is None:
            alone = f" (an `error` event is not terminal: {self.error_events[-1].get('message')!r})" \
                if self.error_events else ""
            self.fail("no terminal event (response.completed, response.incomplete or response.failed)" + alone)
            return
        for index, item in self.items.items():
            if item.done is None:
                report = self.warn if self.terminal["type"] == "response.failed" else self.fail
                report(f"output_index {index} ({item.type}) never got its output_item.done")

    # -- folding
    def result(self) -> dict[str, Any]:
        """The stream as a client holds it at the end."""
        response = (self.terminal or {}).get("response") or {}
        text, calls, reasoning = [], [], []
        for index in sorted(self.items):
            item = self.items[index]
            view = item.done or _partial_view(item)
            if item.type == "message":
                text.append(_joined(view.get("content"), "output_text", "text"))
            elif item.type == "function_call":
                calls.append({"name": view.get("name"), "arguments": view.get("arguments"),
                              "call_id": view.get("call_id")})
            elif item.type == "reasoning":
                reasoning.append(_joined(view.get("content"), "reasoning_text", "text")
                                 or _joined(view.get("summary"), None, "text"))
        error = response.get("error") or (self.error_events[-1] if self.error_events else None)
        return {"id": self.response_id, "status": response.get("status") if self.terminal else None,
                "text": "".join(text), "tool_calls": calls, "reasoning": "".join(reasoning),
                "usage": flat_usage(response.get("usage")),
                "incomplete_reason": (response.get("incomplete_details") or {}).get("reason"),
                "error": {"code": error.get("code"), "message": error.get("message")} if error else None}


def _final_texts(item: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(kind, index, text) of every text a finished item carries."""
    kind = item.get("type")
    if kind == "function_call":
        return [("arguments", None, item.get("arguments"))]
    if kind == "custom_tool_call":
        return [("input", None, item.get("input"))]
    if kind == "mcp_call":
        return [("mcp_arguments", None, item.get("arguments"))]
    out = []
    for family_kind, (field, part_type, key) in FINAL_TEXT.items():
        if (kind == "message") != (family_kind in ("text", "refusal")):
            continue
        for position, part in enumerate(item.get(field) or []):
            if isinstance(part, dict) and (part_type is None or part.get("type") == part_type):
                out.append((family_kind, position, part.get(key)))
    return out


def _partial_view(item: _Item) -> dict[str, Any]:
    """An unfinished item as a client would show it: the added item plus its deltas."""
    view = dict(item.added)
    if item.type == "message":
        view["content"] = [{"type": "output_text", "text": item.streamed("text")}]
    elif item.type == "function_call":
        view["arguments"] = item.streamed("arguments")
    elif item.type == "reasoning":
        view["content"] = [{"type": "reasoning_text", "text": item.streamed("reasoning")}]
        view["summary"] = [{"type": "summary_text", "text": item.streamed("summary")}]
    return view


def _joined(parts: Any, part_type: str | None, key: str) -> str:
    return "".join(str(p.get(key) or "") for p in parts or []
                   if isinstance(p, dict) and (part_type is None or p.get("type") == part_type))


def flat_usage(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    return {"input_tokens": usage.get("input_tokens"), "output_tokens": usage.get("output_tokens"),
            "total_tokens": usage.get("total_tokens"),
            "cached_tokens": (usage.get("input_tokens_details") or {}).get("cached_tokens"),
            "reasoning_tokens": (usage.get("output_tokens_details") or {}).get("reasoning_tokens")}


def response_problems(response: dict[str, Any]) -> list[str]:
    """What a final Response object (terminal event or non-streaming body) lacks for real clients."""
    problems = [f"response.{name} is missing" for name in RESPONSE_FIELDS if name not in response]
    if response.get("object", "response") != "response":
        problems.append(f"response.object is {response.get('object')!r}, not 'response'")
    status = response.get("status")
    if status == "failed":
        error = response.get("error")
        if not (isinstance(error, dict) and isinstance(error.get("code"), str)
                and isinstance(error.get("message"), str)):
            problems.append(f"response.error needs a string code and message, got {error!r}")
    if status == "incomplete" and not isinstance((response.get("incomplete_details") or {}).get("reason"), str):
        problems.append("response.incomplete_details.reason is missing")
    usage = response.get("usage")
    if usage is not None or status == "completed":
        problems += usage_problems(usage)
    return problems


def usage_problems(usage: Any) -> list[str]:
    if not isinstance(usage, dict):
        return ["usage is missing (Codex needs total_tokens)"]
    problems = [f"usage.{name} is missing or not an integer ({usage.get(name)!r})"
                for name in ("input_tokens", "output_tokens", "total_tokens") if not _is_int(usage.get(name))]
    if not problems and usage["total_tokens"] != usage["input_tokens"] + usage["output_tokens"]:
        problems.append(f"usage.total_tokens {usage['total_tokens']} is not input_tokens + output_tokens")
    problems += [f"usage.{outer}.{inner} is missing or not an integer" for outer, inner in USAGE_DETAILS
                 if not _is_int((usage.get(outer) or {}).get(inner))]
    return problems


def check_events(events: list[dict[str, Any]]) -> tuple[list[str], list[str], dict[str, Any]]:
    """Validate events that were never framed (a replay, a processor's output): as `check_bytes`."""
    validator = StreamValidator()
    for event in events:
        validator.frames += 1
        validator.event(event)
    validator.end()
    result = validator.result()
    result["events"] = len(events)
    return validator.violations, validator.warnings, result


def check_bytes(raw: bytes) -> tuple[list[str], list[str], dict[str, Any]]:
    """Validate one raw SSE response body: (violations, warnings, folded result)."""
    frames, problems, notes = parse_sse(raw)
    validator = StreamValidator()
    for frame in frames:
        validator.frame(frame)
    validator.end()
    result = validator.result()
    result["events"] = sum(frame.data != "[DONE]" for frame in frames)  # the end marker is no event
    return problems + validator.violations, notes + validator.warnings, result


# ---------------------------------------------------------------------------------------- the battery
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Get the current weather for a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TOOL_OUTPUT = '{"city": "Paris", "temperature_c": 21, "sky": "sunny"}'


@dataclass
class CaseResult:
    name: str
    verdict: str = "ok"          # ok | FAIL | skip
    http_status: int | None = None
    status: str | None = None    # the response's status
    events: int = 0
    ms: float = 0.0
    detail: str = ""
    violations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def violate(self, *problems: str) -> None:
        self.violations.extend(problems)
        if problems:
            self.verdict = "FAIL"


class Battery:
    """The conformance cases, run in order against one endpoint (`…/v1/responses`)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, model: str, api_key: str) -> None:
        self.session = session
        self.url = url if url.rstrip("/").endswith("/responses") else url.rstrip("/") + "/responses"
        self.model = model
        self.headers = {"Authorization": f"Bearer {api_key}", "Accept": "text/event-stream, application/json"}
        self.call: dict[str, Any] | None = None   # the forced tool call, for the round trip

    async def post(self, case: CaseResult, body: dict[str, Any]) -> tuple[str, bytes]:
        started = time.monotonic()
        async with self.session.post(self.url, json={"model": self.model, **body}, headers=self.headers) as response:
            raw = await response.read()
            case.http_status = response.status
            case.ms = round((time.monotonic() - started) * 1000, 1)
            return response.content_type, raw

    async def stream(self, case: CaseResult, body: dict[str, Any]) -> dict[str, Any] | None:
        """POST a streaming request and validate it; the folded result, or None when there was no stream."""
        content_type, raw = await self.post(case, {**body, "stream": True})
        if case.http_status != 200 or content_type != "text/event-stream":
            case.violate(f"HTTP {case.http_status} {content_type}, expected 200 text/event-stream: {raw[:200]!r}")
            return None
        violations, warnings, result = check_bytes(raw)
        case.violate(*violations)
        case.warnings += warnings
        case.status, case.events = result["status"], result["events"]
        if result["status"] == "failed":
            case.violate(f"the response failed: {result['error']}")
        return result

    async def text(self, case: CaseResult) -> None:
        result = await self.stream(case, {"input": "Say hello in one short sentence."})
        if result is not None:
            if not result["text"]:
                case.violate("no output text")
            case.detail = f"text {result['text'][:40]!r}"

    async def forced_tool(self, case: CaseResult) -> None:
        result = await self.stream(case, {"input": "What is the weather in Paris?", "tools": [WEATHER_TOOL],
                                          "tool_choice": {"type": "function", "name": "get_weather"}})
        if result is None:
            return
        calls = [c for c in result["tool_calls"] if c["name"] == "get_weather"]
        if not calls:
            case.violate(f"tool_choice forced get_weather, got calls {result['tool_calls']}")
            return
        try:
            arguments_ok = isinstance(json.loads(calls[0]["arguments"]), dict)
        except (TypeError, ValueError):
            arguments_ok = False
        if not arguments_ok:
            case.violate(f"get_weather arguments are not a JSON object: {calls[0]['arguments']!r}")
        self.call = calls[0]
        case.detail = f"get_weather({calls[0]['arguments']})"

    async def tool_round_trip(self, case: CaseResult) -> None:
        if self.call is None:
            case.verdict, case.detail = "skip", "no tool call to answer (see forced_tool)"
            return
        call = self.call
        history = [{"type": "message", "role": "user", "content": "What is the weather in Paris?"},
                   {"type": "function_call", "call_id": call["call_id"], "name": call["name"],
                    "arguments": call["arguments"]},
                   {"type": "function_call_output", "call_id": call["call_id"], "output": TOOL_OUTPUT}]
        result = await self.stream(case, {"input": history, "tools": [WEATHER_TOOL]})
        if result is not None:
            if not (result["text"] or result["tool_calls"]):
                case.violate("no output after the tool result")
            case.detail = f"text {result['text'][:40]!r}"

    async def non_streaming(self, case: CaseResult) -> None:
        content_type, raw = await self.post(case, {"input": "Say hello in one short sentence.", "stream": False})
        try:
            response = json.loads(raw)
        except ValueError:
            response = None
        if case.http_status != 200 or content_type != "application/json" or not isinstance(response, dict):
            case.violate(f"HTTP {case.http_status} {content_type}, expected 200 with a JSON Response: {raw[:200]!r}")
            return
        case.status = response.get("status")
        case.violate(*response_problems(response))
        if case.status != "completed":
            case.violate(f"status {case.status!r}, expected 'completed'")
        text = "".join(_joined(item.get("content"), "output_text", "text") for item in response.get("output") or []
                       if isinstance(item, dict) and item.get("type") == "message")
        if not text:
            case.violate("no output text")
        case.detail = f"text {text[:40]!r}"

    async def invalid_request(self, case: CaseResult) -> None:
        content_type, raw = await self.post(case, {"input": 12345, "stream": True})
        try:
            error = json.loads(raw).get("error")
        except (ValueError, AttributeError):
            error = None
        if case.http_status != 400:
            case.violate(f"HTTP {case.http_status}, expected 400 for `input: 12345`")
        if not (isinstance(error, dict) and isinstance(error.get("message"), str) and "type" in error):
            case.violate(f"the body is not OpenAI's error envelope: {raw[:200]!r}")
        else:
            case.detail = f"{error.get('code') or error.get('type')}: {error['message'][:60]}"

    async def disconnect(self, case: CaseResult) -> None:
        """Hang up after the first output event, then expect the endpoint to serve the next request."""
        body = {"model": self.model, "input": "Count from 1 to 200, one number per line.", "stream": True}
        started = time.monotonic()
        async with self.session.post(self.url, json=body, headers=self.headers) as response:
            case.http_status = response.status
            async for line in response.content:
                if line.startswith(b"data:") and b'"response.output_' in line:
                    break
            response.close()
        follow_up = CaseResult("follow_up")
        await self.text(follow_up)
        case.ms = round((time.monotonic() - started) * 1000, 1)
        case.violate(*(f"after a client disconnect: {v}" for v in follow_up.violations))
        case.detail = "hung up after the first output event; the next request was served"


CASES = ("text", "forced_tool", "tool_round_trip", "non_streaming", "invalid_request")


async def run_battery(url: str, model: str, *, api_key: str = "unused", disconnect: bool = False,
                      timeout: float = 60.0) -> list[CaseResult]:
    results = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        battery = Battery(session, url, model, api_key)
        for name in CASES + (("disconnect",) if disconnect else ()):
            case = CaseResult(name)
            try:
                await getattr(battery, name)(case)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                case.violate(f"request failed: {type(exc).__name__}: {exc}")
            results.append(case)
    return results


def render_table(results: list[CaseResult], colour: bool = False) -> str:
    header = ("case", "result", "http", "status", "events", "ms", "detail")
    rows = [header] + [(r.name, r.verdict, str(r.http_status or "-"), r.status or "-", str(r.events), f"{r.ms:g}",
                        (r.violations[0] if r.violations else r.detail)[:90]) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        if colour and row[1] in ("ok", "FAIL", "skip"):
            cells[1] = {"ok": "\033[32m", "FAIL": "\033[1;31m", "skip": "\033[33m"}[row[1]] + cells[1] + "\033[0m"
        lines.append("  ".join([*cells, row[-1]]))
    for r in results:
        lines += [f"FAIL {r.name}: {v}" for v in r.violations]
    failed = sum(r.verdict == "FAIL" for r in results)
    lines.append(f"{len(results) - failed} ok, {failed} failed")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- command line
def register(commands: Any) -> None:
    parser = commands.add_parser("check", help="validate a Responses endpoint (or a saved stream) against "
                                 "the event lifecycle real clients enforce",
                                 description="Run the conformance battery against URL (…/v1 or …/v1/responses), "
                                 "or validate saved SSE bytes with --file. Exit 1 on any violation.")
    parser.add_argument("url", nargs="?", help="the endpoint's base URL, e.g. http://127.0.0.1:8080/v1")
    parser.add_argument("--model", help="model name sent in every request")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "unused"),
                        help="bearer token (default: $OPENAI_API_KEY)")
    parser.add_argument("--disconnect", action="store_true", help="also hang up mid-stream, then expect service")
    parser.add_argument("--timeout", type=_seconds, default=60.0, help="seconds per request")
    parser.add_argument("--file", help="validate the SSE bytes in FILE ('-' for stdin) instead of a battery")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> int:
    if args.file:
        violations, warnings, result = check_bytes(read_bytes(args.file))
        if args.json:
            print(json.dumps({"violations": violations, "warnings": warnings, "result": result}, indent=1))
        else:
            print("\n".join([f"FAIL {v}" for v in violations] + [f"warn {w}" for w in warnings]
                            + [f"{'INVALID' if violations else 'OK'}: {len(violations)} violations, "
                               f"{len(warnings)} warnings; status={result['status']} events={result['events']}"]))
        return 1 if violations else 0
    if not args.url or not args.model:
        raise CliError("give URL and --model (or --file FILE)")
    if not _http_url(args.url):
        raise CliError(f"URL must be http(s)://HOST[:PORT]/…, got {args.url!r}")
    results = asyncio.run(run_battery(args.url, args.model, api_key=args.api_key, disconnect=args.disconnect,
                                      timeout=args.timeout))
    if args.json:
        print(json.dumps({"url": args.url, "model": args.model, "ok": all(r.verdict != "FAIL" for r in results),
                          "cases": [asdict(r) for r in results]}, indent=1))
    else:
        print(render_table(results, colour=sys.stdout.isatty()))
    return 1 if any(r.verdict == "FAIL" for r in results) else 0


def _http_url(text: str) -> bool:
    try:
        url = URL(text)
    except ValueError:
        return False
    return url.scheme in ("http", "https") and bool(url.host)


def _seconds(text: str) -> float:
    """A positive number of seconds (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value
