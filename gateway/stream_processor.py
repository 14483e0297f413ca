"""The heart of the gateway: Chat Completions chunks in, Responses API events out.

A sans-I/O state machine in the manner of h11: `ResponseStream` is fed parsed upstream
chunks (plain dicts) and returns the events to send, as dicts, in order. It never
touches a socket, a clock or a logger: what the request asks for comes as one
`StreamOptions` value (made by translate.py), and the clock and the id factory are passed
in, so it can be driven by a list of dicts in a unit test, and streaming, non-streaming
(the terminal event's `response`) and any later consumer all share the one event sequence
it produces.

The sequence is the canonical one clients enforce (see README): `response.created`,
`response.in_progress`, then per output item `output_item.added` → deltas → `.done`
events → `output_item.done`, then exactly one of `response.completed`,
`response.incomplete` or `response.failed`.

`ResponseStream` is the orchestrator: it checks each chunk's shape and maps its fields to the item
lifecycles of output_items.py (one small class per item kind: message, reasoning, tool call), which
number their events and take their output indexes through the one `Emitter` (emitter.py); so does
the fast path (fast_path.py), whose pre-encoded deltas only append to an open item.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import ids
from .bounds import clip, encode_bounded
from .call_ids import CallIdStyle, new_call_id
from .emitter import Emitter, Event
from .errors import error_code
from .fast_path import ARGS, TEXT, FastDelta, FastRun, as_chunk
from .output_items import (ARGUMENTS_DELTA, TEXT_DELTA, CallKinds, HostedCall, HostedKind, MessageItem,
                           ReasoningItem, ToolCallItem)
from .think_tags import ThinkSplitter, ThinkTagsMode
from .usage import add_usage, map_usage

# finish_reason → (response status, incomplete reason). Anything else counts as "stop".
FINISH_STATUS: dict[str, tuple[str, str | None]] = {
    "stop": ("completed", None),
    "tool_calls": ("completed", None),
    "function_call": ("completed", None),
    "eos": ("completed", None),
    "eos_token": ("completed", None),
    "end_turn": ("completed", None),
    "length": ("incomplete", "max_output_tokens"),
    "content_filter": ("incomplete", "content_filter"),
    "error": ("failed", None),
    "insufficient_system_resource": ("failed", None),
}

ToolNameMap = Mapping[str, tuple[str, str | None]]
TERMINAL_TYPES = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Provider metadata rides inside an item id: bounded so ids stay encodable and reasonably short.
_EXTRA_DEPTH, _EXTRA_SIZE = 16, 16 * 1024
# Tool-call arguments sent as a JSON value instead of a string.
_ARGUMENTS_DEPTH, _ARGUMENTS_SIZE = 64, 4 * 1024 * 1024


class MalformedChunk(Exception):
    """The upstream broke the Chat Completions protocol (h11's ProtocolError, for chunks).

    Raised only by the shape checks where a chunk enters; any other exception inside the
    processor is a gateway bug and is left to reach the pipeline's crash handler.
    """


def response_defaults() -> dict[str, Any]:
    """The request's part of a Response object, as it is when the request leaves everything out.

    Every field of the Open Responses `ResponseResource` that the request decides, at its documented
    default or null. translate.py puts the request's own values over these (StreamOptions.echo);
    none of them goes upstream. A function, not a constant: each Response gets its own nested values.
    """
    return {"background": False, "frequency_penalty": 0, "instructions": None, "max_output_tokens": None,
            "max_tool_calls": None, "metadata": {}, "parallel_tool_calls": True, "presence_penalty": 0,
            "previous_response_id": None, "prompt_cache_key": None, "reasoning": None, "safety_identifier": None,
            "service_tier": "default", "store": True, "temperature": 1, "text": {"format": {"type": "text"}},
            "tool_choice": "auto", "tools": [], "top_logprobs": 0, "top_p": 1, "truncation": "disabled",
            "user": None}


_DELTA_TYPES = {TEXT: TEXT_DELTA, ARGS: ARGUMENTS_DELTA}  # per fast-path kind


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """What one request asks of its response stream: everything translation decides for the core."""

    model: str
    echo: Mapping[str, Any] = field(default_factory=response_defaults)  # the request's part of the Response
    tool_names: ToolNameMap = field(default_factory=dict)      # upstream name → (client name, namespace)
    reasoning_summary: bool = False                            # reasoning also as summary events
    think_tags: ThinkTagsMode = "off"                          # upstream.think_tags
    custom_tools: frozenset[str] = frozenset()                 # upstream names of the client's `custom` tools
    call_id_style: CallIdStyle = "openai"                      # upstream.tool_call_id_style
    seal: Callable[[str], str] | None = None                   # seals reasoning into encrypted_content
    leading_items: tuple[dict[str, Any], ...] = ()            # done before the upstream's (a compaction item)


class ResponseStream:
    """Translate one upstream completion stream into one Responses event stream.

    The orchestrator: it reads each chunk's fields and drives the item lifecycles (output_items.py)
    through the one `Emitter` that numbers the events; at most one message or reasoning item is open
    at a time, and opening one kind of item closes the other.
    """

    def __init__(self, options: StreamOptions, *, response_id: str, clock: Callable[[], float],
                 new_id: Callable[[str], str]) -> None:
        """`clock()` gives Unix time in seconds; `new_id(kind)` a unique id such as `msg_…` (ids.new_id)."""
        self.response_id = response_id
        self._clock = clock
        self._new_id = new_id
        # Built once per request: every snapshot and the final Response copy it.
        self._emitter = Emitter({
            "id": response_id, "object": "response", "created_at": int(clock()), "completed_at": None,
            "status": "in_progress", "error": None, "incomplete_details": None, "output": [], "usage": None,
            **options.echo, "model": options.model,
        }, new_id)
        self._kinds = CallKinds({}, frozenset(), {})  # retarget keeps its hosted kinds (the tool loop's)
        self.retarget(options)
        self._leading = options.leading_items
        self._message: MessageItem | None = None
        self._reasoning: ReasoningItem | None = None
        self._calls: list[ToolCallItem] = []                # open calls, in output order
        self._calls_by_key: dict[Any, ToolCallItem] = {}    # upstream index or id → open call
        self._usage: Mapping[str, Any] | None = None
        self._status: tuple[str, str | None] | None = None  # set by a finish_reason
        self.finish_reason: str | None = None
        self.terminal: Event | None = None
        self.has_output = False
        self.warnings: list[str] = []
        self._earlier_usage: dict[str, Any] | None = None  # the usage of the samples before this one
        # (output_index, open item, call id) of this sample's hosted calls; the client's calls counted
        self.hosted_calls: list[HostedCall] = []
        self._running: dict[int, dict[str, Any]] = {}  # output index → hosted call item not yet done
        self.client_calls = 0

    # ------------------------------------------------------------------ public API
    def retarget(self, options: StreamOptions) -> None:
        """Read the upstream's chunks as `options` say: before the first chunk, after a failover to an
        upstream whose translation differs (the head, built from the request alone, stays valid)."""
        self._kinds = CallKinds(options.tool_names, options.custom_tools, self._kinds.hosted)
        self._summary = options.reasoning_summary
        self._think = ThinkSplitter(options.think_tags) if options.think_tags != "off" else None
        self._call_id_style = options.call_id_style
        self._seal = options.seal

    @property
    def events_emitted(self) -> int:
        return self._emitter.seq

    @property
    def response(self) -> dict[str, Any]:
        """The final Response object once terminal, else the in-progress snapshot."""
        if self.terminal is not None:
            return self.terminal["response"]
        return self._snapshot("in_progress")

    def queued(self) -> list[Event]:
        """A background response's first events, before its run starts (then `start()` follows)."""
        snapshot = self._snapshot("queued")
        event = self._emitter.event
        return [event("response.created", response=snapshot), event("response.queued", response=snapshot)]

    def start(self) -> list[Event]:
        emitter = self._emitter
        snapshot = self._snapshot("in_progress")
        out = emitter.batch()
        if emitter.seq == 0:  # else queued() sent response.created already
            emitter.emit("response.created", response=snapshot)
        emitter.emit("response.in_progress", response=snapshot)
        for item in self._leading:  # output the gateway made before the upstream's
            emitter.whole_item(item)
        return out

    def feed(self, chunk: Any) -> Sequence[Any]:
        """One parsed upstream chunk in, the events it causes out (a list, or for a `FastRun` a `FastBatch`)."""
        if type(chunk) is FastDelta:  # a plain tuple from fast_path.Recogniser
            return self._fast_delta(chunk)
        if type(chunk) is FastRun:
            return self._fast_run(chunk)
        out = self._emitter.batch()
        if self.terminal is not None:
            return out
        try:
            self._chunk(chunk)
        except MalformedChunk as exc:
            self._fail("upstream_protocol_error", f"malformed upstream chunk: {exc}")
        return out

    def finish(self, saw_done: bool) -> list[Event]:
        """The upstream stream ended: at `[DONE]` (saw_done) or at EOF."""
        out = self._emitter.batch()
        if self.terminal is not None or self._truncated(saw_done):
            return out
        status, reason = self._status or ("completed", None)
        self._close_all("incomplete" if status == "incomplete" else "completed")
        response = self._snapshot(status)
        if reason:
            response["incomplete_details"] = {"reason": reason}
        if status == "completed":
            response["completed_at"] = int(self._clock())
        self._terminate(f"response.{status}", response)
        return out

    def fail(self, code: str, message: str) -> list[Event]:
        """End the stream with response.failed (timeouts, disconnects, shutdown)."""
        out = self._emitter.batch()
        if self.terminal is None:
            self._fail(code, message)
        return out

    def salvage(self, code: str, message: str, sequence_number: int) -> list[Event]:
        """The last resort after a gateway bug: a bare `response.failed` that is known to encode.

        Events from `sequence_number` on were built but never delivered (their encoding or
        building failed), so they give their numbers back; the terminal built before, if any,
        is replaced. Items already delivered stay as they are: nothing more can be trusted.
        """
        self.terminal = self._emitter.salvage(code, message, sequence_number)
        return [self.terminal]

    # ------------------------------------------------------------------ the tool loop (gateway/tools)
    def host(self, kinds: Mapping[str, HostedKind]) -> None:
        """Calls to these upstream names are the gateway's own (announced as their kind, left open)."""
        self._kinds = CallKinds(self._kinds.tool_names, self._kinds.custom_tools, kinds)

    def end_sample(self, saw_done: bool) -> list[Event]:
        """One sample of several ended: its items are closed (hosted calls stay open, in `hosted_calls`),
        its usage is kept for the sum, and the stream goes on with the next sample's chunks."""
        out = self._emitter.batch()
        if self.terminal is not None or self._truncated(saw_done):
            return out
        self._close_all("completed")
        self._earlier_usage = self._usage_so_far()
        self._usage, self._status = None, None
        return out

    def finish_incomplete(self, reason: str) -> list[Event]:
        """End the stream `incomplete` for `reason` between samples (the loop reached a bound), as a
        finish_reason such as "length" ends it."""
        self._status = ("incomplete", reason)
        return self.finish(True)

    def emitter(self) -> Callable[..., Event]:
        """A fresh batch for the tool loop's own events: the returned `emit(type, **fields)` appends to it
        (read it with `take_batch`), numbered on with the stream's events."""
        self._emitter.batch()
        return self._emitter.emit

    def take_batch(self) -> list[Event]:
        return self._emitter.take_batch()

    def new_item_index(self) -> int:
        return self._emitter.take_index()

    def item_done(self, index: int, item: dict[str, Any]) -> None:
        self._running.pop(index, None)
        self._emitter.item_done(index, item)

    def _usage_so_far(self) -> dict[str, Any]:
        usage = map_usage(self._usage, self.warnings)
        return usage if self._earlier_usage is None else add_usage(self._earlier_usage, usage)

    # ------------------------------------------------------------------ the fast path (fast_path.py)
    def takes_fast(self, item: Any) -> bool:
        """Would `feed(item)` only append to an open item (no new item, no terminal, no full path)?"""
        return self._append_target(item) is not None

    def appended(self, item: Any) -> Sequence[Any] | None:
        """`feed(item)` for a fast delta or run that only appends to an open item; else None, nothing changed."""
        target = self._append_target(item)
        if target is None:
            return None
        self.has_output = True
        open_item, frame = target
        if type(item) is FastDelta:
            template, escaped = item
            open_item.chunks.append_escaped(escaped)
            return [self._emitter.encoded(_DELTA_TYPES[template.kind], frame, escaped)]
        open_item.chunks.extend_escaped(item.bodies)
        return self._emitter.encoded_run(_DELTA_TYPES[item.template.kind], frame, item.bodies)

    def _append_target(self, item: Any) -> tuple[MessageItem | ToolCallItem, bytes] | None:
        """The open item a fast delta or run would only be appended to, and its delta frame (`_fast_item`)."""
        if self.terminal is not None:
            return None
        if type(item) is FastDelta:
            return self._fast_item(*item)
        if type(item) is FastRun:
            return self._fast_item(item.template, b"".join(item.bodies))
        return None

    def _fast_delta(self, delta: FastDelta) -> Sequence[Any]:
        """A recognised text or arguments chunk: one pre-encoded event where `_fast_item` allows, else the full path."""
        events = self.appended(delta)
        if events is not None:
            return events
        return [] if self.terminal is not None else self.feed(as_chunk(delta))

    def _fast_run(self, run: FastRun) -> Sequence[Any]:
        """Recognised chunks of one template in a row: `_fast_delta` for each, with the state checked once
        (the fast case only appends to the item, which changes nothing `_fast_item` looks at)."""
        events = self.appended(run)
        if events is not None:
            return events
        if self.terminal is not None:
            return []
        # Some chunk needs the full path (a `<` for the think-tag splitter, a call not announced).
        return [event for body in run.bodies for event in self._fast_delta((run.template, body))]

    def _fast_item(self, template: Any, escaped: bytes) -> tuple[MessageItem | ToolCallItem, bytes] | None:
        """The item a recognised chunk's string (`escaped`) would only be appended to, with its delta
        frame: the open output_text part or a client's announced call; None where the state needs more."""
        if template.kind is ARGS:
            # _tool_call_delta's lookup for a fragment without id, name or extra_content.
            index = template.index
            if index is not None:
                call = self._calls_by_key.get(("index", index))
            else:
                call = self._calls[-1] if self._calls else None
            frame = call.arguments_frame() if call is not None else None
            return None if frame is None else (call, frame)
        message, think = self._message, self._think
        if (message is None or self._reasoning is not None
                or (think is not None and not (think.idle and b"<" not in escaped))):
            return None
        frame = message.text_frame()
        return None if frame is None else (message, frame)

    # ------------------------------------------------------------------ chunk handling
    def _chunk(self, chunk: Any) -> None:
        """One chunk, its shape checked as it is read: containers must be what the protocol says."""
        if type(chunk) is not dict and not isinstance(chunk, Mapping):
            raise MalformedChunk(f"a chunk must be a JSON object, not {type(chunk).__name__}")
        error = chunk.get("error")
        if error:
            self._inband_error(chunk, error)
            return
        usage = chunk.get("usage")
        if usage:
            self._usage = usage
        else:
            groq = chunk.get("x_groq")
            if groq:
                self._usage = _mapping(groq, "x_groq").get("usage") or self._usage
        choices = chunk.get("choices")
        if not choices:
            return
        if type(choices) is not list:
            raise MalformedChunk(f"choices must be a list, not {type(choices).__name__}")
        for choice in choices:
            if type(choice) is not dict:
                raise MalformedChunk(f"a choice must be an object, not {type(choice).__name__}")
            if choice.get("index", 0):
                continue  # n > 1 is not part of the Responses API
            delta = choice.get("delta") or choice.get("message")
            if delta:
                self._delta(_mapping(delta, "delta"))
            reason = choice.get("finish_reason")
            if reason and self.terminal is None:
                if type(reason) is not str:
                    raise MalformedChunk(f"finish_reason must be a string, not {type(reason).__name__}")
                self._finish_reason(clip(reason, 64))

    def _delta(self, delta: Mapping[str, Any]) -> None:
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if not reasoning and delta.get("reasoning_details"):
            reasoning = _reasoning_details_text(delta["reasoning_details"])
        if reasoning and isinstance(reasoning, str):
            self._reasoning_delta(reasoning)
        content = delta.get("content")
        if content and isinstance(content, str):
            think = self._think
            if think is None or (think.idle and "<" not in content):
                self._text_delta(content, "output_text")
            else:
                self._think_segments(think.feed(content))
                if think.done:
                    self._think = None
        refusal = delta.get("refusal")
        if refusal and isinstance(refusal, str):
            self._text_delta(refusal, "refusal")
        tool_calls = delta.get("tool_calls")
        if tool_calls:
            if type(tool_calls) is not list:
                raise MalformedChunk(f"tool_calls must be a list, not {type(tool_calls).__name__}")
            for call in tool_calls:
                self._tool_call_delta(_mapping(call, "a tool call"))
        legacy = delta.get("function_call")
        if legacy:
            self._legacy_call_delta(_mapping(legacy, "function_call"))

    def _inband_error(self, chunk: Mapping[str, Any], error: Any) -> None:
        if isinstance(error, Mapping):
            message = error.get("message") or chunk.get("message") or error
            raw_code, err_type = error.get("code"), error.get("type")
        else:
            message, raw_code, err_type = error, None, None
        text = _text(message)
        code = error_code(raw_code, err_type, text)
        self._fail(clip(code, 100), text)

    def _finish_reason(self, reason: str) -> None:
        self.finish_reason = reason
        status = FINISH_STATUS.get(reason)
        if status is None:
            self.warnings.append(f"unknown finish_reason {reason!r} treated as stop")
            status = ("completed", None)
        if status[0] == "failed":
            self._fail("upstream_error", f"the upstream finished with reason {reason!r}")
            return
        self._status = status
        self._close_all("incomplete" if status[0] == "incomplete" else "completed")

    # ------------------------------------------------------------------ text and reasoning
    def _text_delta(self, text: str, part_type: str) -> None:
        if self._reasoning is not None:
            self._close_reasoning()
        message = self._message
        if message is None:
            message = self._message = MessageItem(self._emitter)
        message.delta(text, part_type)
        self.has_output = True

    def _close_message(self, status: str) -> None:
        message = self._message
        if message is not None:
            self._message = None
            message.close(status)

    def _think_segments(self, segments: list[tuple[bool, str]]) -> None:
        for is_reasoning, text in segments:
            if is_reasoning:
                self._reasoning_delta(text)
            else:
                self._text_delta(text, "output_text")

    def _reasoning_delta(self, text: str) -> None:
        if self._message is not None:
            self._close_message("completed")
        item = self._reasoning
        if item is None:
            item = self._reasoning = ReasoningItem(self._emitter, self._summary)
        item.delta(text)
        self.has_output = True

    def _close_reasoning(self) -> None:
        item = self._reasoning
        if item is not None:
            self._reasoning = None
            item.close(self._seal)

    # ------------------------------------------------------------------ tool calls
    def _tool_call_delta(self, delta: Mapping[str, Any]) -> None:
        function = _mapping(delta.get("function") or {}, "function")
        name = _str(function.get("name"))
        call_id = _str(delta.get("id"))
        index = delta.get("index")
        if index is not None and type(index) is not int:
            raise MalformedChunk(f"a tool call's index must be an integer, not {type(index).__name__}")
        call = None
        if call_id:
            call = self._calls_by_key.get(("id", call_id))
            if call is None and index is not None:
                # The same index with a new id is a new call (parallel calls all labelled 0).
                existing = self._calls_by_key.get(("index", index))
                if existing is not None and existing.call_id == call_id:
                    call = existing
        elif index is not None:
            call = self._calls_by_key.get(("index", index))
        elif not name and self._calls:
            call = self._calls[-1]  # an index-less fragment continues the last call
        extra = delta.get("extra_content")
        if extra is not None and encode_bounded(extra, depth=_EXTRA_DEPTH, size=_EXTRA_SIZE) is None:
            self.warnings.append(f"tool call {clip(call_id or '?')}: extra_content nested deeper than {_EXTRA_DEPTH} "
                                 f"levels or larger than {_EXTRA_SIZE} bytes was dropped")
            extra = None
        if call is None:
            call = self._open_call(call_id, name, index, extra=extra)
        elif name and not call.announced:
            call.name = name
        if extra is not None and extra != call.extra:
            call.set_extra(extra)
        self._arguments(call, function.get("arguments"))

    def _legacy_call_delta(self, delta: Mapping[str, Any]) -> None:
        call = self._calls_by_key.get(("legacy", 0))
        name = _str(delta.get("name"))
        if call is None or (name and call.announced and call.chunks):
            call = self._open_call(None, name, None, key=("legacy", 0))
        elif name and not call.announced:
            call.name = name
        self._arguments(call, delta.get("arguments"))

    def _open_call(self, call_id: str | None, name: str | None, index: Any,
                   key: tuple[str, Any] | None = None, extra: Any = None) -> ToolCallItem:
        call = ToolCallItem(self._emitter, self.warnings, call_id or new_call_id(self._call_id_style, self._new_id),
                            name or "", extra)
        self._calls.append(call)
        if call_id:
            self._calls_by_key[("id", call_id)] = call
        if index is not None:
            self._calls_by_key[("index", index)] = call
        if key is not None:
            self._calls_by_key[key] = call
        if name:
            self._close_message("completed")
            self._close_reasoning()
            call.announce(self._kinds)
        return call

    def _arguments(self, call: ToolCallItem, fragment: Any) -> None:
        if fragment is None or fragment == "":
            return
        if not isinstance(fragment, str):
            # Some servers send the object itself.
            encoded = encode_bounded(fragment, depth=_ARGUMENTS_DEPTH, size=_ARGUMENTS_SIZE)
            if encoded is None:
                raise MalformedChunk("tool call arguments nested too deep or too large")
            fragment = encoded.decode()
        call.arguments(fragment)
        self.has_output = True

    def _close_call(self, call: ToolCallItem, status: str) -> None:
        hosted = call.close(status, self._kinds)
        if hosted is None:
            self.client_calls += 1
        elif status == "completed":  # the tool loop runs it and ends the item (when it streamed: still open)
            self.hosted_calls.append(hosted)
            if call.announced:
                self._running[hosted[0]] = hosted[1]

    # ------------------------------------------------------------------ closing
    def _close_all(self, status: str) -> None:
        think = self._think
        if think is not None:
            self._think = None
            self._think_segments(think.flush())  # a held partial tag is text after all
        self._close_reasoning()
        self._close_message(status)
        calls = self._calls
        self._calls = []
        self._calls_by_key = {}
        for call in sorted(calls, key=lambda c: (not c.announced, c.index)):
            self._close_call(call, status)

    def _truncated(self, saw_done: bool) -> bool:
        """The upstream ended with neither a finish_reason nor `[DONE]`: the stream fails."""
        if self._status is None and not saw_done:
            self._fail("upstream_truncated", "the upstream closed the stream before a finish_reason or [DONE]")
            return True
        return False

    def _fail(self, code: str, message: str) -> None:
        self._close_all("incomplete")
        for index in sorted(self._running):  # hosted calls cut short
            self._emitter.item_done(index, {**self._running[index], "status": "incomplete"})
        self._running = {}
        response = self._snapshot("failed")
        response["error"] = {"code": code, "message": message}
        self._terminate("response.failed", response)

    def _terminate(self, event_type: str, response: dict[str, Any]) -> None:
        self.terminal = self._emitter.emit(event_type, response=response)

    def _snapshot(self, status: str) -> dict[str, Any]:
        response = self._emitter.snapshot(status)
        if status != "in_progress":
            response["usage"] = (map_usage(self._usage, self.warnings) if self._earlier_usage is None
                                 else self._usage_so_far())
        return response


def _str(value: Any) -> str | None:
    """A name or id from the upstream; anything but a string counts as absent."""
    return value if isinstance(value, str) else None


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if type(value) is dict or isinstance(value, Mapping):
        return value
    raise MalformedChunk(f"{what} must be an object, not {type(value).__name__}")


def _reasoning_details_text(details: Any) -> str:
    if type(details) is not list:
        raise MalformedChunk(f"reasoning_details must be a list, not {type(details).__name__}")
    texts = [d.get("text") or "" for d in details if isinstance(d, dict)]
    if not all(type(text) is str for text in texts):
        raise MalformedChunk("reasoning_details text must be a string")
    return "".join(texts)


def _text(message: Any) -> str:
    """An upstream error message as bounded text, whatever its type."""
    if not isinstance(message, str):
        encoded = encode_bounded(message, depth=32, size=4096)
        message = encoded.decode() if encoded is not None else f"an unreadable {type(message).__name__}"
    return clip(message, 2000)


def stream_generator(chunks: Iterable[Any], *, model: str, response_id: str, saw_done: bool = True,
                     clock: Callable[[], float] = time.time, new_id: Callable[[str], str] = ids.new_id,
                     **options: Any) -> Iterator[Event]:
    """Drive a `ResponseStream` from already-decoded chunks (tests, replays from logs).

    `saw_done` says whether the upstream ended with `[DONE]`; leave it True for a
    list that represents a complete stream. `options` are `StreamOptions` fields. This driver,
    not the stream, picks the wall clock and the gateway's own ids unless given others.
    """
    stream = ResponseStream(StreamOptions(model=model, **options), response_id=response_id, clock=clock,
                            new_id=new_id)
    yield from stream.start()
    for chunk in chunks:
        yield from stream.feed(chunk)
    yield from stream.finish(saw_done)

