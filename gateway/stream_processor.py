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
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from . import ids
from .bounds import MAX_COUNT, clip, encode_bounded
from .call_ids import CallIdStyle, new_call_id
from .custom_tools import InputDecoder
from .errors import error_code
from .fast_path import (ARGS, TEXT, EncodedEvent, FastBatch, FastDelta, FastRun, as_chunk, decode_body,
                        delta_frame)
from .provider_metadata import id_carrying_extra
from .think_tags import ThinkSplitter, ThinkTagsMode

Event = dict[str, Any]

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


_TEXT_TYPE, _ARGS_TYPE = "response.output_text.delta", "response.function_call_arguments.delta"
_DELTA_TYPES = {TEXT: _TEXT_TYPE, ARGS: _ARGS_TYPE}  # per fast-path kind


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


class _Text:
    """Streamed text held compactly until its `.done` event.

    One string object per token costs ~50 bytes each for the life of the stream; every run
    of 32 pieces is joined into a block (the final join stays linear, unlike re-joining one
    growing string). Pieces from the fast path stay JSON-escaped bytes (`escaped`) and are
    decoded once, by `value()`; a part mixing both kinds converts what it holds (rare).
    """

    __slots__ = ("blocks", "pieces", "escaped")
    RUN = 32

    def __init__(self) -> None:
        self.blocks: list[Any] = []
        self.pieces: list[Any] = []
        self.escaped = False

    def append(self, text: str) -> None:
        if self.escaped:
            self._convert(False)
        pieces = self.pieces
        pieces.append(text)
        if len(pieces) == self.RUN:
            self.blocks.append("".join(pieces))
            pieces.clear()

    def append_escaped(self, piece: bytes) -> None:
        if not self.escaped:
            self._convert(True)
        pieces = self.pieces
        pieces.append(piece)
        if len(pieces) == self.RUN:
            self.blocks.append(b"".join(pieces))
            pieces.clear()

    def extend_escaped(self, pieces: list[bytes]) -> None:
        """`append_escaped` for each of `pieces`, kept as one block once there are enough: escaped pieces
        are only ever read back whole (`value()`), so how they are grouped changes nothing."""
        if not self.escaped:
            self._convert(True)
        held = self.pieces
        held += pieces
        if len(held) >= self.RUN:
            self.blocks.append(b"".join(held))
            held.clear()

    def _convert(self, escaped: bool) -> None:
        held = self.value() if self else ""
        self.blocks, self.pieces, self.escaped = [], [], escaped
        if held:
            self.pieces.append(orjson.dumps(held)[1:-1] if escaped else held)

    def __bool__(self) -> bool:
        return bool(self.pieces or self.blocks)

    def __iter__(self) -> Iterator[str]:
        for piece in self.blocks + self.pieces:
            yield decode_body(piece) if self.escaped else piece

    def value(self) -> str:
        if self.escaped:
            return decode_body(b"".join(self.blocks + self.pieces))
        return "".join(self.blocks + self.pieces) if self.blocks else "".join(self.pieces)


class _Message:
    __slots__ = ("id", "index", "part_type", "part_index", "parts", "chunks", "fast_frame")

    def __init__(self, item_id: str, index: int) -> None:
        self.id = item_id
        self.index = index
        self.part_type = ""           # "output_text" or "refusal" for the open part
        self.part_index = -1
        self.parts: list[dict[str, Any]] = []
        self.chunks = _Text()
        self.fast_frame = b""         # the open part's delta frame, a `%` format (fast path)


class _Reasoning:
    __slots__ = ("id", "index", "chunks")

    def __init__(self, item_id: str, index: int) -> None:
        self.id = item_id
        self.index = index
        self.chunks = _Text()


class _Call:
    __slots__ = ("id", "index", "call_id", "name", "namespace", "chunks", "extra", "announced", "custom",
                 "fast_frame", "hosted", "delta_type")

    def __init__(self, call_id: str, name: str) -> None:
        self.id = ""                  # set when announced: it may carry `extra`
        self.index = -1
        self.call_id = call_id
        self.name = name
        self.namespace: str | None = None
        self.chunks = _Text()
        self.extra: Any = None        # provider metadata that must survive a turn
        self.announced = False        # output_item.added sent (needs the name)
        self.custom: InputDecoder | None = None  # a custom tool's call: streams the decoded `input`
        self.fast_frame = b""         # the delta frame, a `%` format (fast path)
        self.hosted: HostedKind | None = None  # a call the gateway runs itself (gateway/tools)
        self.delta_type = _ARGS_TYPE


class HostedKind(Protocol):
    """How the calls of a tool the gateway runs itself (gateway/tools) look on the stream: the stream
    announces them and streams their arguments; the tool loop ends their items once they ran."""

    delta_type: str   # the arguments' delta event
    done_type: str    # the arguments' done event
    streams: bool     # False: the item is made whole when the call ends (an approval request)
    id_kind: str      # its item ids' prefix

    def item(self, item_id: str, call_id: str, arguments: str) -> dict[str, Any]: ...


class ResponseStream:
    """Translate one upstream completion stream into one Responses event stream."""

    def __init__(self, options: StreamOptions, *, response_id: str, clock: Callable[[], float],
                 new_id: Callable[[str], str]) -> None:
        """`clock()` gives Unix time in seconds; `new_id(kind)` a unique id such as `msg_…` (ids.new_id)."""
        self.response_id = response_id
        self._clock = clock
        self._new_id = new_id
        # Built once per request: every snapshot and the final Response copy it.
        self._base: dict[str, Any] = {
            "id": response_id, "object": "response", "created_at": int(clock()), "completed_at": None,
            "status": "in_progress", "error": None, "incomplete_details": None, "output": [], "usage": None,
            **options.echo, "model": options.model,
        }
        self.retarget(options)
        self._leading = options.leading_items
        self._seq = 0
        self._out: list[Event] = []
        self._done_items: list[tuple[int, dict[str, Any]]] = []  # (output_index, item)
        self._next_index = 0
        self._message: _Message | None = None
        self._reasoning: _Reasoning | None = None
        self._calls: list[_Call] = []                # open calls, in output order
        self._calls_by_key: dict[Any, _Call] = {}    # upstream index or id → open call
        self._usage: Mapping[str, Any] | None = None
        self._status: tuple[str, str | None] | None = None  # set by a finish_reason
        self.finish_reason: str | None = None
        self.terminal: Event | None = None
        self.has_output = False
        self.warnings: list[str] = []
        self._hosted: Mapping[str, HostedKind] = {}  # upstream name → kind, for the tool loop's tools
        self._earlier_usage: dict[str, Any] | None = None  # the usage of the samples before this one
        # (output_index, open item, call id) of this sample's hosted calls; the client's calls counted
        self.hosted_calls: list[tuple[int, dict[str, Any], str]] = []
        self._running: dict[int, dict[str, Any]] = {}  # output index → hosted call item not yet done
        self.client_calls = 0

    # ------------------------------------------------------------------ public API
    def retarget(self, options: StreamOptions) -> None:
        """Read the upstream's chunks as `options` say: before the first chunk, after a failover to an
        upstream whose translation differs (the head, built from the request alone, stays valid)."""
        self._tool_names = options.tool_names
        self._summary = options.reasoning_summary
        self._think = ThinkSplitter(options.think_tags) if options.think_tags != "off" else None
        self._custom_tools = options.custom_tools
        self._call_id_style = options.call_id_style
        self._seal = options.seal

    @property
    def events_emitted(self) -> int:
        return self._seq

    @property
    def response(self) -> dict[str, Any]:
        """The final Response object once terminal, else the in-progress snapshot."""
        if self.terminal is not None:
            return self.terminal["response"]
        return self._snapshot("in_progress")

    def queued(self) -> list[Event]:
        """A background response's first events, before its run starts (then `start()` follows)."""
        snapshot = self._snapshot("queued")
        return [self._event("response.created", response=snapshot),
                self._event("response.queued", response=snapshot)]

    def start(self) -> list[Event]:
        snapshot = self._snapshot("in_progress")
        if self._seq:  # after queued(): response.created went out already
            out = self._out = [self._event("response.in_progress", response=snapshot)]
        else:
            out = self._out = [self._event("response.created", response=snapshot),
                               self._event("response.in_progress", response=snapshot)]
        for item in self._leading:  # output the gateway made before the upstream's: added and done at once
            index = self._take_index()
            self._emit("response.output_item.added", output_index=index, item=item)
            self._item_done(index, item)
        return out

    def feed(self, chunk: Any) -> Sequence[Any]:
        """One parsed upstream chunk in, the events it causes out (a list, or for a `FastRun` a `FastBatch`)."""
        if type(chunk) is FastDelta:  # a plain tuple from fast_path.Recogniser
            return self._fast_delta(chunk)
        if type(chunk) is FastRun:
            return self._fast_run(chunk)
        out = self._out = []
        if self.terminal is not None:
            return out
        try:
            self._chunk(chunk)
        except MalformedChunk as exc:
            self._fail("upstream_protocol_error", f"malformed upstream chunk: {exc}")
        return out

    def finish(self, saw_done: bool) -> list[Event]:
        """The upstream stream ended: at `[DONE]` (saw_done) or at EOF."""
        out = self._out = []
        if self.terminal is not None:
            return out
        if self._status is None and not saw_done:
            self._fail("upstream_truncated",
                       "the upstream closed the stream before a finish_reason or [DONE]")
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

    # ------------------------------------------------------------------ the tool loop (gateway/tools)
    def host(self, kinds: Mapping[str, HostedKind]) -> None:
        """Calls to these upstream names are the gateway's own (announced as their kind, left open)."""
        self._hosted = kinds

    def end_sample(self, saw_done: bool) -> list[Event]:
        """One sample of several ended: its items are closed (hosted calls stay open, in `hosted_calls`),
        its usage is kept for the sum, and the stream goes on with the next sample's chunks."""
        out = self._out = []
        if self.terminal is not None:
            return out
        if self._status is None and not saw_done:
            self._fail("upstream_truncated", "the upstream closed the stream before a finish_reason or [DONE]")
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
        self._out = []
        return self._emit

    def take_batch(self) -> list[Event]:
        out, self._out = self._out, []
        return out

    def new_item_index(self) -> int:
        return self._take_index()

    def item_done(self, index: int, item: dict[str, Any]) -> None:
        self._running.pop(index, None)
        self._item_done(index, item)

    def _usage_so_far(self) -> dict[str, Any]:
        usage = map_usage(self._usage, self.warnings)
        earlier = self._earlier_usage
        if earlier is None:
            return usage
        total = {key: earlier[key] + usage[key] for key in ("input_tokens", "output_tokens", "total_tokens")}
        total["input_tokens_details"] = {key: earlier["input_tokens_details"][key] + value
                                         for key, value in usage["input_tokens_details"].items()}
        total["output_tokens_details"] = {"reasoning_tokens": earlier["output_tokens_details"]["reasoning_tokens"]
                                          + usage["output_tokens_details"]["reasoning_tokens"]}
        return total

    def fail(self, code: str, message: str) -> list[Event]:
        """End the stream with response.failed (timeouts, disconnects, shutdown)."""
        out = self._out = []
        if self.terminal is None:
            self._fail(code, message)
        return out

    def salvage(self, code: str, message: str, sequence_number: int) -> list[Event]:
        """The last resort after a gateway bug: a bare `response.failed` that is known to encode.

        Events from `sequence_number` on were built but never delivered (their encoding or
        building failed), so they give their numbers back; the terminal built before, if any,
        is replaced. Items already delivered stay as they are: nothing more can be trusted.
        """
        response = {**self._base, "status": "failed", "error": {"code": code, "message": message}}
        event = {"type": "response.failed", "sequence_number": sequence_number, "response": response}
        try:
            orjson.dumps(event)
        except orjson.JSONEncodeError:
            event["response"] = {"id": self.response_id, "object": "response", "created_at": self._base["created_at"],
                                 "status": "failed", "error": response["error"], "output": [], "usage": None}
        self._seq = sequence_number + 1
        self.terminal = event
        return [event]

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
        seq = self._seq
        if type(item) is FastDelta:
            template, escaped = item
            target.chunks.append_escaped(escaped)
            self._seq += 1
            return [EncodedEvent(_DELTA_TYPES[template.kind], seq, target.fast_frame % (seq, escaped))]
        target.chunks.extend_escaped(item.bodies)
        self._seq += len(item.bodies)
        return FastBatch(_DELTA_TYPES[item.template.kind], seq, target.fast_frame, item.bodies)

    def _append_target(self, item: Any) -> _Message | _Call | None:
        """The open item a fast delta or run would only be appended to (`_fast_item`), else None."""
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

    def _fast_item(self, template: Any, escaped: bytes) -> _Message | _Call | None:
        """The item a recognised chunk's string (`escaped`) would only be appended to, with its delta
        frame made: the open output_text part or an announced call; None where the state needs more."""
        if template.kind is ARGS:
            # _tool_call_delta's lookup for a fragment without id, name or extra_content.
            index = template.index
            if index is not None:
                call = self._calls_by_key.get(("index", index))
            else:
                call = self._calls[-1] if self._calls else None
            if call is None or not call.announced or call.custom is not None or call.hosted is not None:
                return None
            if not call.fast_frame:
                call.fast_frame = delta_frame(_ARGS_TYPE, call.id, call.index, None, b'"}\n\n')
            return call
        message, think = self._message, self._think
        if (message is None or message.part_type != "output_text" or self._reasoning is not None
                or (think is not None and not (think.idle and b"<" not in escaped))):
            return None
        if not message.fast_frame:
            message.fast_frame = delta_frame(_TEXT_TYPE, message.id, message.index, message.part_index,
                                             b'","logprobs":[]}\n\n')
        return message


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
        message = self._message or self._open_message()
        if message.part_type != part_type:
            self._open_part(message, part_type)
        message.chunks.append(text)
        self.has_output = True
        self._seq += 1
        if part_type == "output_text":
            self._out.append({"type": "response.output_text.delta", "sequence_number": self._seq - 1,
                              "item_id": message.id, "output_index": message.index,
                              "content_index": message.part_index, "delta": text, "logprobs": []})
        else:
            self._out.append({"type": "response.refusal.delta", "sequence_number": self._seq - 1,
                              "item_id": message.id, "output_index": message.index,
                              "content_index": message.part_index, "delta": text})

    def _open_message(self) -> _Message:
        message = self._message = _Message(self._new_id("msg"), self._take_index())
        self._emit("response.output_item.added", output_index=message.index,
                   item={"id": message.id, "type": "message", "status": "in_progress",
                         "role": "assistant", "content": []})
        return message

    def _open_part(self, message: _Message, part_type: str) -> None:
        if message.part_type:
            self._close_part(message)
        message.part_type = part_type
        message.part_index += 1
        message.fast_frame = b""
        self._emit("response.content_part.added", item_id=message.id, output_index=message.index,
                   content_index=message.part_index, part=_part(part_type, ""))

    def _close_part(self, message: _Message) -> None:
        text = message.chunks.value()
        message.chunks = _Text()
        where = {"item_id": message.id, "output_index": message.index, "content_index": message.part_index}
        if message.part_type == "output_text":
            self._emit("response.output_text.done", **where, text=text, logprobs=[])
        else:
            self._emit("response.refusal.done", **where, refusal=text)
        part = _part(message.part_type, text)
        self._emit("response.content_part.done", **where, part=part)
        message.parts.append(part)

    def _close_message(self, status: str) -> None:
        message = self._message
        if message is None:
            return
        self._message = None
        if message.part_type:
            self._close_part(message)
        self._item_done(message.index, {"id": message.id, "type": "message", "status": status,
                                        "role": "assistant", "content": message.parts})

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
            item = self._reasoning = _Reasoning(self._new_id("rs"), self._take_index())
            self._emit("response.output_item.added", output_index=item.index,
                       item={"id": item.id, "type": "reasoning", "status": "in_progress",
                             "summary": [], "content": []})
            where = {"item_id": item.id, "output_index": item.index}
            self._emit("response.content_part.added", **where, content_index=0,
                       part={"type": "reasoning_text", "text": ""})
            if self._summary:
                self._emit("response.reasoning_summary_part.added", **where, summary_index=0,
                           part={"type": "summary_text", "text": ""})
        item.chunks.append(text)
        self.has_output = True
        self._emit("response.reasoning_text.delta", item_id=item.id, output_index=item.index,
                   content_index=0, delta=text)
        if self._summary:
            self._emit("response.reasoning_summary_text.delta", item_id=item.id, output_index=item.index,
                       summary_index=0, delta=text)

    def _close_reasoning(self) -> None:
        item = self._reasoning
        if item is None:
            return
        self._reasoning = None
        text = item.chunks.value()
        where = {"item_id": item.id, "output_index": item.index}
        self._emit("response.reasoning_text.done", **where, content_index=0, text=text)
        content_part = {"type": "reasoning_text", "text": text}
        self._emit("response.content_part.done", **where, content_index=0, part=content_part)
        summary = []
        if self._summary:
            summary_part = {"type": "summary_text", "text": text}
            self._emit("response.reasoning_summary_text.done", **where, summary_index=0, text=text)
            self._emit("response.reasoning_summary_part.done", **where, summary_index=0, part=summary_part)
            summary.append(summary_part)
        done = {"id": item.id, "type": "reasoning", "status": "completed", "summary": summary,
                "content": [content_part]}
        if self._seal is not None:
            done["encrypted_content"] = self._seal(text)  # stateless clients send this back next turn
        self._item_done(item.index, done)

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
            if call.announced:
                self.warnings.append(f"tool call {clip(call.call_id)}: extra_content arrived after the call was "
                                     "announced; it cannot be carried to the next turn")
            call.extra = extra
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
                   key: tuple[str, Any] | None = None, extra: Any = None) -> _Call:
        call = _Call(call_id or new_call_id(self._call_id_style, self._new_id), name or "")
        call.extra = extra
        self._calls.append(call)
        if call_id:
            self._calls_by_key[("id", call_id)] = call
        if index is not None:
            self._calls_by_key[("index", index)] = call
        if key is not None:
            self._calls_by_key[key] = call
        if name:
            self._announce(call)
        return call

    def _announce(self, call: _Call) -> None:
        if self._message is not None:
            self._close_message("completed")
        if self._reasoning is not None:
            self._close_reasoning()
        if call.name in self._custom_tools:
            call.custom = InputDecoder()
        hosted = self._hosted.get(call.name)
        if hosted is not None:
            call.hosted = hosted
            if hosted.streams:
                self._announce_hosted(call, hosted)
            return
        mapped = self._tool_names.get(call.name)
        if mapped is not None:
            call.name, call.namespace = mapped
        call.id = id_carrying_extra(self._new_id("ctc" if call.custom is not None else "fc"), call.extra)
        call.index = self._take_index()
        call.announced = True
        self._emit("response.output_item.added", output_index=call.index,
                   item=self._call_item(call, "in_progress", ""))
        # Fragments that arrived before the name are released now, in order.
        for fragment in call.chunks:
            if call.custom is not None:
                self._custom_input_delta(call, call.custom.feed(fragment))
            else:
                self._emit("response.function_call_arguments.delta", item_id=call.id,
                           output_index=call.index, delta=fragment)

    def _announce_hosted(self, call: _Call, hosted: HostedKind) -> None:
        call.delta_type = hosted.delta_type
        call.id = self._new_id(hosted.id_kind)
        call.index = self._take_index()
        call.announced = True
        self._emit("response.output_item.added", output_index=call.index, item=hosted.item(call.id, call.call_id, ""))
        for fragment in call.chunks:
            self._emit(call.delta_type, item_id=call.id, output_index=call.index, delta=fragment)

    def _whole_hosted_item(self, call: _Call, status: str) -> None:
        """A hosted call that does not stream (an approval request): its item, added and done at once."""
        assert call.hosted is not None
        call.index = self._take_index()
        item = call.hosted.item(self._new_id(call.hosted.id_kind), call.call_id, call.chunks.value())
        self._emit("response.output_item.added", output_index=call.index, item=item)
        self._item_done(call.index, item)
        if status == "completed":
            self.hosted_calls.append((call.index, item, call.call_id))

    def _arguments(self, call: _Call, fragment: Any) -> None:
        if fragment is None or fragment == "":
            return
        if not isinstance(fragment, str):
            # Some servers send the object itself.
            encoded = encode_bounded(fragment, depth=_ARGUMENTS_DEPTH, size=_ARGUMENTS_SIZE)
            if encoded is None:
                raise MalformedChunk("tool call arguments nested too deep or too large")
            fragment = encoded.decode()
        call.chunks.append(fragment)
        self.has_output = True
        if call.custom is not None:
            self._custom_input_delta(call, call.custom.feed(fragment))
        elif call.announced:
            self._seq += 1
            self._out.append({"type": call.delta_type,
                              "sequence_number": self._seq - 1, "item_id": call.id,
                              "output_index": call.index, "delta": fragment})

    def _custom_input_delta(self, call: _Call, text: str) -> None:
        if text:
            self._emit("response.custom_tool_call_input.delta", item_id=call.id, output_index=call.index,
                       delta=text)

    def _call_item(self, call: _Call, status: str, arguments: str) -> dict[str, Any]:
        if call.custom is not None:
            item = {"id": call.id, "type": "custom_tool_call", "status": status, "call_id": call.call_id,
                    "name": call.name, "input": arguments}
        else:
            item = {"id": call.id, "type": "function_call", "status": status, "arguments": arguments,
                    "call_id": call.call_id, "name": call.name}
        if call.namespace:
            item["namespace"] = call.namespace
        return item

    def _close_call(self, call: _Call, status: str) -> None:
        if call.hosted is not None and not call.announced:
            self._whole_hosted_item(call, status)
            return
        if not call.announced:
            call.name = call.name or "unknown_function"
            self.warnings.append(f"tool call {clip(call.call_id)} arrived without a name")
            self._announce(call)
        arguments = call.chunks.value()
        if call.hosted is not None:
            self._emit(call.hosted.done_type, item_id=call.id, output_index=call.index, arguments=arguments)
            item = call.hosted.item(call.id, call.call_id, arguments)
            if status == "completed":  # the tool loop runs it and ends the item
                self.hosted_calls.append((call.index, item, call.call_id))
                self._running[call.index] = item
            else:  # the response ends without running it
                self._item_done(call.index, {**item, "status": "incomplete"})
            return
        self.client_calls += 1
        if call.custom is not None:
            tail, text = call.custom.finish(arguments)
            self._custom_input_delta(call, tail)
            self._emit("response.custom_tool_call_input.done", item_id=call.id, output_index=call.index,
                       input=text)
            self._item_done(call.index, self._call_item(call, status, text))
            return
        if arguments:
            try:
                orjson.loads(arguments)
            except orjson.JSONDecodeError:
                self.warnings.append(f"tool call {clip(call.name)} ({clip(call.call_id)}): arguments are not valid JSON; "
                                     "delivered as the upstream sent them")
        self._emit("response.function_call_arguments.done", item_id=call.id, output_index=call.index,
                   name=call.name, arguments=arguments)
        self._item_done(call.index, self._call_item(call, status, arguments))

    # ------------------------------------------------------------------ closing
    def _close_all(self, status: str) -> None:
        think = self._think
        if think is not None:
            self._think = None
            self._think_segments(think.flush())  # a held partial tag is text after all
        if self._reasoning is not None:
            self._close_reasoning()
        if self._message is not None:
            self._close_message(status)
        calls = self._calls
        self._calls = []
        self._calls_by_key = {}
        for call in sorted(calls, key=lambda c: (not c.announced, c.index)):
            self._close_call(call, status)

    def _fail(self, code: str, message: str) -> None:
        self._close_all("incomplete")
        for index, item in sorted(self._running.items(), key=_first):  # hosted calls cut short
            self._item_done(index, {**item, "status": "incomplete"})
        self._running = {}
        response = self._snapshot("failed")
        response["error"] = {"code": code, "message": message}
        self._terminate("response.failed", response)

    def _terminate(self, event_type: str, response: dict[str, Any]) -> None:
        self.terminal = self._emit(event_type, response=response)

    # ------------------------------------------------------------------ helpers
    def _take_index(self) -> int:
        self._next_index += 1
        return self._next_index - 1

    def _item_done(self, index: int, item: dict[str, Any]) -> None:
        self._done_items.append((index, item))
        self._emit("response.output_item.done", output_index=index, item=item)

    def _event(self, event_type: str, **fields: Any) -> Event:
        event = {"type": event_type, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def _emit(self, event_type: str, **fields: Any) -> Event:
        event = self._event(event_type, **fields)
        self._out.append(event)
        return event

    def _snapshot(self, status: str) -> dict[str, Any]:
        response = dict(self._base)
        response["status"] = status
        if status != "in_progress":
            response["output"] = [item for _, item in sorted(self._done_items, key=_first)]
            response["usage"] = (map_usage(self._usage, self.warnings) if self._earlier_usage is None
                                 else self._usage_so_far())
        return response


def _first(pair: tuple[int, Any]) -> int:
    return pair[0]


def _part(part_type: str, text: str) -> dict[str, Any]:
    if part_type == "refusal":
        return {"type": "refusal", "refusal": text}
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


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


def _int(value: Any, name: str = "", warnings: list[str] | None = None) -> int:
    """A token count: a non-negative int a JSON client can hold; anything else counts 0 (with a warning)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
        return value
    if warnings is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        warnings.append(f"usage.{name} {clip(str(value), 40)} is out of range; counted as 0")
    return 0


def map_usage(usage: Mapping[str, Any] | None, warnings: list[str] | None = None) -> dict[str, Any]:
    """Chat usage (OpenAI, DeepSeek, Groq shapes) → Responses usage; total is always the sum."""
    usage = usage if isinstance(usage, Mapping) else {}
    prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens")), "prompt_tokens", warnings)
    completion = _int(usage.get("completion_tokens", usage.get("output_tokens")), "completion_tokens", warnings)
    prompt_details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
    cached = (_int(prompt_details.get("cached_tokens"), "cached_tokens", warnings)
              if isinstance(prompt_details, Mapping) else 0)
    cached = cached or _int(usage.get("prompt_cache_hit_tokens"), "prompt_cache_hit_tokens", warnings)
    reasoning = (_int(completion_details.get("reasoning_tokens"), "reasoning_tokens", warnings)
                 if isinstance(completion_details, Mapping) else 0)
    reasoning = reasoning or _int(usage.get("reasoning_tokens"), "reasoning_tokens", warnings)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion}


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

