"""One lifecycle class per kind of output item the upstream streams (sans-I/O).

Each keeps its own state and transitions together, as h11 keeps each state's: opened (its
`output_item.added`), deltas, then closed (its `.done` events and `output_item.done`). All of them
number their events and take their output index through the one `Emitter`; which item is open and
when one closes another is `ResponseStream`'s business (stream_processor.py). Objects are made once
per item, never per chunk. Items the gateway makes whole (a compaction item, the tool loop's) go
through `Emitter.whole_item` and the tool loop's `emit`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import orjson

from .bounds import clip
from .custom_tools import InputDecoder
from .emitter import Emitter
from .fast_path import decode_body, delta_frame
from .provider_metadata import id_carrying_extra

TEXT_DELTA = "response.output_text.delta"
ARGUMENTS_DELTA = "response.function_call_arguments.delta"


class TextBuffer:
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


class MessageItem:
    """A `message`: parts of `output_text` or `refusal`, one open at a time, each streamed then done."""

    __slots__ = ("emitter", "id", "index", "part_type", "part_index", "parts", "chunks", "frame")

    def __init__(self, emitter: Emitter) -> None:
        """Open the item (its `output_item.added`)."""
        self.emitter = emitter
        self.id = emitter.new_id("msg")
        self.index = emitter.take_index()
        self.part_type = ""           # "output_text" or "refusal" for the open part
        self.part_index = -1
        self.parts: list[dict[str, Any]] = []
        self.chunks = TextBuffer()
        self.frame = b""              # the open part's delta frame, a `%` format (fast path)
        emitter.added(self.index, {"id": self.id, "type": "message", "status": "in_progress",
                                   "role": "assistant", "content": []})

    def delta(self, text: str, part_type: str) -> None:
        """Text for a part of `part_type`, opening that part first if another kind is open (hot path)."""
        if self.part_type != part_type:
            self._open_part(part_type)
        self.chunks.append(text)
        emitter = self.emitter
        seq = emitter.seq
        emitter.seq = seq + 1
        if part_type == "output_text":
            emitter.out.append({"type": TEXT_DELTA, "sequence_number": seq, "item_id": self.id,
                                "output_index": self.index, "content_index": self.part_index, "delta": text,
                                "logprobs": []})
        else:
            emitter.out.append({"type": "response.refusal.delta", "sequence_number": seq, "item_id": self.id,
                                "output_index": self.index, "content_index": self.part_index, "delta": text})

    def text_frame(self) -> bytes | None:
        """The open output_text part's delta frame for the fast path; None when no such part is open."""
        if self.part_type != "output_text":
            return None
        if not self.frame:
            self.frame = delta_frame(TEXT_DELTA, self.id, self.index, self.part_index, b'","logprobs":[]}\n\n')
        return self.frame

    def close(self, status: str) -> None:
        if self.part_type:
            self._close_part()
        self.emitter.item_done(self.index, {"id": self.id, "type": "message", "status": status,
                                            "role": "assistant", "content": self.parts})

    def _open_part(self, part_type: str) -> None:
        if self.part_type:
            self._close_part()
        self.part_type = part_type
        self.part_index += 1
        self.frame = b""
        self.emitter.emit("response.content_part.added", item_id=self.id, output_index=self.index,
                          content_index=self.part_index, part=_part(part_type, ""))

    def _close_part(self) -> None:
        text = self.chunks.value()
        self.chunks = TextBuffer()
        where = {"item_id": self.id, "output_index": self.index, "content_index": self.part_index}
        emit = self.emitter.emit
        if self.part_type == "output_text":
            emit("response.output_text.done", **where, text=text, logprobs=[])
        else:
            emit("response.refusal.done", **where, refusal=text)
        part = _part(self.part_type, text)
        emit("response.content_part.done", **where, part=part)
        self.parts.append(part)


class ReasoningItem:
    """A `reasoning` item: one `reasoning_text` part, mirrored as a summary part when the request asks."""

    __slots__ = ("emitter", "id", "index", "chunks", "summary")

    def __init__(self, emitter: Emitter, summary: bool) -> None:
        """Open the item and its part(s)."""
        self.emitter = emitter
        self.id = emitter.new_id("rs")
        self.index = emitter.take_index()
        self.chunks = TextBuffer()
        self.summary = summary
        emitter.added(self.index, {"id": self.id, "type": "reasoning", "status": "in_progress",
                                   "summary": [], "content": []})
        where = {"item_id": self.id, "output_index": self.index}
        emitter.emit("response.content_part.added", **where, content_index=0,
                     part={"type": "reasoning_text", "text": ""})
        if summary:
            emitter.emit("response.reasoning_summary_part.added", **where, summary_index=0,
                         part={"type": "summary_text", "text": ""})

    def delta(self, text: str) -> None:
        self.chunks.append(text)
        emit = self.emitter.emit
        emit("response.reasoning_text.delta", item_id=self.id, output_index=self.index, content_index=0, delta=text)
        if self.summary:
            emit("response.reasoning_summary_text.delta", item_id=self.id, output_index=self.index,
                 summary_index=0, delta=text)

    def close(self, seal: Callable[[str], str] | None) -> None:
        """Done; `seal` (when given) adds the text as `encrypted_content`, for stateless clients to send back."""
        text = self.chunks.value()
        where = {"item_id": self.id, "output_index": self.index}
        emit = self.emitter.emit
        emit("response.reasoning_text.done", **where, content_index=0, text=text)
        content_part = {"type": "reasoning_text", "text": text}
        emit("response.content_part.done", **where, content_index=0, part=content_part)
        summary = []
        if self.summary:
            summary_part = {"type": "summary_text", "text": text}
            emit("response.reasoning_summary_text.done", **where, summary_index=0, text=text)
            emit("response.reasoning_summary_part.done", **where, summary_index=0, part=summary_part)
            summary.append(summary_part)
        done = {"id": self.id, "type": "reasoning", "status": "completed", "summary": summary,
                "content": [content_part]}
        if seal is not None:
            done["encrypted_content"] = seal(text)
        self.emitter.item_done(self.index, done)


class HostedKind(Protocol):
    """How the calls of a tool the gateway runs itself (gateway/tools) look on the stream: the stream
    announces them and streams their arguments; the tool loop ends their items once they ran."""

    delta_type: str   # the arguments' delta event
    done_type: str    # the arguments' done event
    streams: bool     # False: the item is made whole when the call ends (an approval request)
    id_kind: str      # its item ids' prefix

    def item(self, item_id: str, call_id: str, arguments: str) -> dict[str, Any]: ...


class CallKinds:
    """What decides a call's kind once its name is known: the request's tool names and the tool loop's."""

    __slots__ = ("tool_names", "custom_tools", "hosted")

    def __init__(self, tool_names: Mapping[str, tuple[str, str | None]], custom_tools: frozenset[str],
                 hosted: Mapping[str, HostedKind]) -> None:
        self.tool_names = tool_names        # upstream name → (client name, namespace)
        self.custom_tools = custom_tools    # upstream names of the client's `custom` tools
        self.hosted = hosted                # upstream name → kind, for the tool loop's tools


HostedCall = tuple[int, dict[str, Any], str]  # (output_index, item, call id) of a hosted call


class ToolCallItem:
    """A tool call: a `function_call`, a `custom_tool_call` (streams its decoded input) or a hosted call.

    Arguments may come before the name; the item is announced (opened) once the name is known, and
    the fragments held until then are released in order.
    """

    __slots__ = ("emitter", "warnings", "id", "index", "call_id", "name", "namespace", "chunks", "extra",
                 "announced", "custom", "frame", "hosted", "delta_type")

    def __init__(self, emitter: Emitter, warnings: list[str], call_id: str, name: str, extra: Any) -> None:
        self.emitter = emitter
        self.warnings = warnings
        self.id = ""                  # set when announced: it may carry `extra`
        self.index = -1
        self.call_id = call_id
        self.name = name
        self.namespace: str | None = None
        self.chunks = TextBuffer()
        self.extra = extra            # provider metadata that must survive a turn
        self.announced = False        # output_item.added sent (needs the name)
        self.custom: InputDecoder | None = None  # a custom tool's call: streams the decoded `input`
        self.frame = b""              # the delta frame, a `%` format (fast path)
        self.hosted: HostedKind | None = None  # a call the gateway runs itself (gateway/tools)
        self.delta_type = ARGUMENTS_DELTA

    def announce(self, kinds: CallKinds) -> None:
        """The name is known: the call's kind is decided and, unless it is made whole at its end, it opens."""
        if self.name in kinds.custom_tools:
            self.custom = InputDecoder()
        hosted = kinds.hosted.get(self.name)
        if hosted is not None:
            self.hosted = hosted
            if hosted.streams:
                self._announce_hosted(hosted)
            return
        mapped = kinds.tool_names.get(self.name)
        if mapped is not None:
            self.name, self.namespace = mapped
        emitter = self.emitter
        self.id = id_carrying_extra(emitter.new_id("ctc" if self.custom is not None else "fc"), self.extra)
        self.index = emitter.take_index()
        self.announced = True
        emitter.added(self.index, self._item("in_progress", ""))
        # Fragments that arrived before the name are released now, in order.
        for fragment in self.chunks:
            if self.custom is not None:
                self._custom_input_delta(self.custom.feed(fragment))
            else:
                emitter.emit(ARGUMENTS_DELTA, item_id=self.id, output_index=self.index, delta=fragment)

    def _announce_hosted(self, hosted: HostedKind) -> None:
        emitter = self.emitter
        self.delta_type = hosted.delta_type
        self.id = emitter.new_id(hosted.id_kind)
        self.index = emitter.take_index()
        self.announced = True
        emitter.added(self.index, hosted.item(self.id, self.call_id, ""))
        for fragment in self.chunks:
            emitter.emit(self.delta_type, item_id=self.id, output_index=self.index, delta=fragment)

    def arguments(self, fragment: str) -> None:
        """A non-empty arguments fragment: streamed once announced, held until then (hot path)."""
        self.chunks.append(fragment)
        if self.custom is not None:
            self._custom_input_delta(self.custom.feed(fragment))
        elif self.announced:
            emitter = self.emitter
            seq = emitter.seq
            emitter.seq = seq + 1
            emitter.out.append({"type": self.delta_type, "sequence_number": seq, "item_id": self.id,
                                "output_index": self.index, "delta": fragment})

    def arguments_frame(self) -> bytes | None:
        """The delta frame for the fast path: only a client's announced function call streams that way."""
        if not self.announced or self.custom is not None or self.hosted is not None:
            return None
        if not self.frame:
            self.frame = delta_frame(ARGUMENTS_DELTA, self.id, self.index, None, b'"}\n\n')
        return self.frame

    def set_extra(self, extra: Any) -> None:
        if self.announced:
            self.warnings.append(f"tool call {clip(self.call_id)}: extra_content arrived after the call was "
                                 "announced; it cannot be carried to the next turn")
        self.extra = extra

    def close(self, status: str, kinds: CallKinds) -> HostedCall | None:
        """Done. A hosted call's (index, item, call id) comes back: its item stays open for the tool loop
        when it streamed and `status` is completed; None for a client's call."""
        if not self.announced and self.hosted is None:
            self.name = self.name or "unknown_function"
            self.warnings.append(f"tool call {clip(self.call_id)} arrived without a name")
            self.announce(kinds)
        if self.hosted is not None and not self.announced:  # also one named only after its first fragment
            return self._whole_hosted_item()
        arguments = self.chunks.value()
        if self.hosted is not None:
            self.emitter.emit(self.hosted.done_type, item_id=self.id, output_index=self.index, arguments=arguments)
            item = self.hosted.item(self.id, self.call_id, arguments)
            if status != "completed":  # the response ends without running it
                self.emitter.item_done(self.index, {**item, "status": "incomplete"})
            return self.index, item, self.call_id
        if self.custom is not None:
            self._close_custom(status, arguments)
            return None
        if arguments:
            try:
                orjson.loads(arguments)
            except orjson.JSONDecodeError:
                self.warnings.append(f"tool call {clip(self.name)} ({clip(self.call_id)}): arguments are not "
                                     "valid JSON; delivered as the upstream sent them")
        self.emitter.emit("response.function_call_arguments.done", item_id=self.id, output_index=self.index,
                          name=self.name, arguments=arguments)
        self.emitter.item_done(self.index, self._item(status, arguments))
        return None

    def _whole_hosted_item(self) -> HostedCall:
        """A hosted call that does not stream (an approval request): its item, added and done at once."""
        assert self.hosted is not None
        item = self.hosted.item(self.emitter.new_id(self.hosted.id_kind), self.call_id, self.chunks.value())
        self.index = self.emitter.whole_item(item)
        return self.index, item, self.call_id

    def _close_custom(self, status: str, arguments: str) -> None:
        assert self.custom is not None
        tail, text = self.custom.finish(arguments)
        self._custom_input_delta(tail)
        self.emitter.emit("response.custom_tool_call_input.done", item_id=self.id, output_index=self.index,
                          input=text)
        self.emitter.item_done(self.index, self._item(status, text))

    def _custom_input_delta(self, text: str) -> None:
        if text:
            self.emitter.emit("response.custom_tool_call_input.delta", item_id=self.id, output_index=self.index,
                              delta=text)

    def _item(self, status: str, arguments: str) -> dict[str, Any]:
        if self.custom is not None:
            item = {"id": self.id, "type": "custom_tool_call", "status": status, "call_id": self.call_id,
                    "name": self.name, "input": arguments}
        else:
            item = {"id": self.id, "type": "function_call", "status": status, "arguments": arguments,
                    "call_id": self.call_id, "name": self.name}
        if self.namespace:
            item["namespace"] = self.namespace
        return item


def _part(part_type: str, text: str) -> dict[str, Any]:
    if part_type == "refusal":
        return {"type": "refusal", "refusal": text}
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
