"""The one place a Responses event stream is numbered and its output list kept (sans-I/O).

`Emitter` owns what every item lifecycle (output_items.py) and the tool loop share: the sequence
numbers, the allocation of output indexes, the items that are done (the Response's `output`) and the
batch of events the current call of `ResponseStream` returns. The fast path's pre-encoded deltas are
numbered here too, so they run on with the full path's events.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from .fast_path import EncodedEvent, FastBatch

Event = dict[str, Any]


class Emitter:
    """Numbers events, hands out output indexes and keeps the done items, for one response."""

    __slots__ = ("seq", "out", "new_id", "base", "_next_index", "_done_items")

    def __init__(self, base: dict[str, Any], new_id: Callable[[str], str]) -> None:
        """`base` is the Response object every snapshot copies; `new_id(kind)` makes item ids (ids.new_id)."""
        self.seq = 0                  # the next event's sequence number
        self.out: list[Any] = []      # the batch being built
        self.new_id = new_id
        self.base = base
        self._next_index = 0
        self._done_items: list[tuple[int, dict[str, Any]]] = []  # (output_index, item)

    def batch(self) -> list[Any]:
        """Start a new batch (the events of one call into the stream) and return it."""
        out = self.out = []
        return out

    def take_batch(self) -> list[Any]:
        out, self.out = self.out, []
        return out

    def take_index(self) -> int:
        self._next_index += 1
        return self._next_index - 1

    def event(self, event_type: str, **fields: Any) -> Event:
        """A numbered event, not added to the batch (the head's and the terminal's callers place them)."""
        event = {"type": event_type, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def emit(self, event_type: str, **fields: Any) -> Event:
        event = self.event(event_type, **fields)
        self.out.append(event)
        return event

    def added(self, index: int, item: dict[str, Any]) -> None:
        self.emit("response.output_item.added", output_index=index, item=item)

    def item_done(self, index: int, item: dict[str, Any]) -> None:
        self._done_items.append((index, item))
        self.emit("response.output_item.done", output_index=index, item=item)

    def whole_item(self, item: dict[str, Any]) -> int:
        """An item the gateway made whole (a compaction item, an approval request): added and done at once."""
        index = self.take_index()
        self.added(index, item)
        self.item_done(index, item)
        return index

    def encoded(self, event_type: str, frame: bytes, escaped: bytes) -> EncodedEvent:
        """A fast-path delta: `frame` (fast_path.delta_frame) filled with its number and string."""
        seq = self.seq
        self.seq = seq + 1
        return EncodedEvent(event_type, seq, frame % (seq, escaped))

    def encoded_run(self, event_type: str, frame: bytes, bodies: list[bytes]) -> FastBatch:
        """A fast-path run of deltas, numbered on from the next event."""
        seq = self.seq
        self.seq = seq + len(bodies)
        return FastBatch(event_type, seq, frame, bodies)

    def snapshot(self, status: str) -> dict[str, Any]:
        """The Response object at `status`; past `in_progress` with the done items as its output."""
        response = dict(self.base)
        response["status"] = status
        if status != "in_progress":
            response["output"] = [item for _, item in sorted(self._done_items, key=_first)]
        return response

    def salvage(self, code: str, message: str, sequence_number: int) -> Event:
        """A bare `response.failed` numbered `sequence_number`, known to encode; numbering goes on after it."""
        base = self.base
        response = {**base, "status": "failed", "error": {"code": code, "message": message}}
        event = {"type": "response.failed", "sequence_number": sequence_number, "response": response}
        try:
            orjson.dumps(event)
        except orjson.JSONEncodeError:
            event["response"] = {"id": base["id"], "object": "response", "created_at": base["created_at"],
                                 "status": "failed", "error": response["error"], "output": [], "usage": None}
        self.seq = sequence_number + 1
        return event


def _first(pair: tuple[int, Any]) -> int:
    return pair[0]
