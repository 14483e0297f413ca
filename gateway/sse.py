"""The server-sent events wire format, both ways (sans-I/O).

Decoding an upstream Chat Completions event stream: `SSEDecoder` follows the HTML Living Standard's event-stream interpretation (CR, LF and
CRLF line ends, comments, multi-line data, `event:`/`id:`/`retry:` fields) and adds the
leniency real upstreams need: an `error:` field (old llama.cpp) and a raw JSON line
without `data:` (some proxies) are surfaced as events instead of being dropped, and an
unterminated last event is delivered at EOF instead of discarded.

`ChunkDecoder` turns those events into parsed chunk dicts for the stream processor.

Encoding: Responses events as `event:`/`data:` frames (`encode_events`), the events of one read's
chunks as one batch (`joined`), and the keep-alive comment (`PING`).
"""
from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from typing import Any

import orjson

from .fast_path import EncodedEvent, FastBatch, Recogniser

DONE = "[DONE]"
# The end marker after the terminal event, when `server.sse_done` asks for it (event_stream.py).
DONE_FRAME = b"data: [DONE]\n\n"
PING = b": ping\r\n\r\n"
# `event: <type>\ndata: ` per event type, built once: the type set is small and fixed.
_EVENT_PREFIX: dict[str, bytes] = {}
# Reads and events ChunkDecoder looks at one by one per stream while it may still learn a template
# (see `_runs`).
_LEARN_STEPS = 16
# Below this many events, a read that may teach a template is simply decoded (see `ChunkDecoder.feed`).
_SMALL_READ = 4
# The largest upstream event held while it arrives (the limit of a whole JSON answer too): past it
# the stream fails instead of an upstream growing the gateway's memory without end.
MAX_EVENT_CHARS = 16 * 1024 * 1024


class EventTooLarge(ValueError):
    """An upstream event grew past MAX_EVENT_CHARS before it ended."""


class SSEDecoder:
    """Bytes in, `(event_name, data)` pairs out. Split anywhere, even inside a UTF-8 character."""

    __slots__ = ("_utf8", "_tail", "_skip_lf", "_data", "_event", "held")

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # An incomplete line carried over to the next feed, in pieces: a line arriving over many reads
        # (a 1 MB event in 4 kB reads) is joined once at its end, not copied again at every read.
        self._tail: list[str] = []
        self._skip_lf = False    # the previous feed ended in CR: a leading LF belongs to it
        self._data: list[str] = []
        self._event = ""
        self.held = 0  # the most characters of one unfinished event held between feeds (see MAX_EVENT_CHARS)

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        text = self._utf8.decode(data)
        if self._skip_lf and text:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        tail = self._tail
        if tail:
            tail.append(text)
            if "\n" not in text and "\r" not in text:
                self._hold()
                return []  # still inside the same line
            text = "".join(tail)
            tail.clear()
        if "\r" in text:
            if text.endswith("\r"):
                self._skip_lf = True
            lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        else:
            lines = text.split("\n")
        rest = lines.pop()
        if rest:
            tail.append(rest)
        out: list[tuple[str, str]] = []
        pending = self._data
        for line in lines:
            # The common shapes inline (`data: …` and the blank line ending an event): a method
            # call per line is a measurable share of the per-token cost.
            if line[:6] == "data: ":
                pending.append(line[6:])
            elif not line and not pending:
                self._event = ""
            elif not line:
                out.append((self._event, pending[0] if len(pending) == 1 else "\n".join(pending)))
                pending.clear()
                self._event = ""
            else:
                self._line(line, out)
        if tail or pending:
            self._hold()
        return out

    def _hold(self) -> None:
        """Measure the unfinished event held between feeds (once per read, only when there is one)."""
        held = sum(map(len, self._tail)) + sum(map(len, self._data))
        if held > self.held:
            if held > MAX_EVENT_CHARS:
                raise EventTooLarge(f"the upstream sent an event larger than {MAX_EVENT_CHARS} characters")
            self.held = held

    @property
    def between_events(self) -> bool:
        """Nothing of an event held: no incomplete line, no pending data or event name, no CR or cut
        character waiting for its rest. The fast path may read the next bytes itself."""
        return not (self._tail or self._data or self._event or self._skip_lf or self._utf8.getstate()[0])

    def take_partial(self) -> bytes | None:
        """Between events: give back the incomplete line held (as bytes) and forget it; None mid-event.

        The fast path (ChunkDecoder) reads whole events from the bytes itself and leaves the rest to us.
        """
        if self._data or self._event or self._skip_lf:
            return None
        pending = self._utf8.getstate()[0]  # the first bytes of a character cut by the read
        self._utf8.reset()
        tail = "".join(self._tail)
        self._tail.clear()
        return tail.encode() + pending

    def close(self) -> list[tuple[str, str]]:
        """End of stream: deliver what is pending, even without its blank line."""
        out: list[tuple[str, str]] = []
        tail = "".join(self._tail) + self._utf8.decode(b"", final=True)
        self._tail.clear()
        if tail:
            self._line(tail, out)
        self._line("", out)
        return out

    def _line(self, line: str, out: list[tuple[str, str]]) -> None:
        if not line:
            if self._data:
                out.append((self._event, "\n".join(self._data)))
                self._data.clear()
            self._event = ""
            return
        if line[0] == ":":
            return
        if line[0] in "{[\"":
            out.append(("", line))  # raw JSON without a field name
            return
        name, sep, value = line.partition(":")
        if sep and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "error":
            out.append(("error", value))


class ChunkDecoder:
    """Bytes in, parsed chunks out; `done` turns true at `data: [DONE]`.

    Non-object payloads are normalised so the processor sees one shape for in-band
    errors: `{"error": ...}`. Non-JSON data that is not marked as an error is skipped
    and counted in `skipped`, the first one kept in `skipped_sample` (keep-alive words some
    servers send as data). With `fast_path`, the common delta chunks come out unparsed, as
    `fast_path.FastDelta`, or several in a row of one read as one `fast_path.FastRun` (see fast_path.py).
    """

    __slots__ = ("_sse", "_fast", "_steps", "done", "skipped", "skipped_sample")

    def __init__(self, fast_path: bool = False) -> None:
        self._sse = SSEDecoder()
        self._fast = Recogniser() if fast_path else None
        self._steps = _LEARN_STEPS
        self.done = False
        self.skipped = 0
        self.skipped_sample = ""

    def feed(self, data: bytes) -> list[Any]:
        fast = self._fast
        sse = self._sse
        if fast is None or self.done:
            return self._decode(sse.feed(data))
        if not fast.templates:
            if not (self._steps and fast.learning):
                return self._decode(sse.feed(data))
            self._steps -= 1  # a read looked at for a template to learn (see `_runs`)
            if _fewer_events(data, _SMALL_READ):
                # A stream's first reads are usually a few events (the role, a token): learning as they
                # are decoded loses nothing, and saves `_runs`' machinery on the way to the first token.
                return self._decode(sse.feed(data))
        # The fast path reads whole events from the bytes; it may start only between events.
        if not sse.between_events:
            if b"\n" not in data and b"\r" not in data:
                # The held event goes on and cannot end in this read: handing its rest back to the fast
                # path would copy all of it again at every read of a large event.
                return self._decode(sse.feed(data))
            held = sse.take_partial()
            if held is None:
                return self._decode(sse.feed(data))
            data = held + data
        delta, pos = fast.event(data)  # a paced stream's read: one event, all of it
        if delta is None:
            chunks: list[Any] = []
        elif pos == len(data):
            return [delta]
        else:
            chunks = [delta]
        end = data.find(b"\n\n", pos)
        if end >= 0 and (pos or data.find(b"\n\n", end + 2) >= 0) and b"\r" not in data:
            return self._runs(data)  # two whole events or more (the first again, as part of its run)
        # Fewer, or CRLF line ends: event by event.
        more, pos = fast.scan(data, pos)
        chunks += more
        if pos < len(data):
            chunks += self._decode(sse.feed(data[pos:] if pos else data))
        return chunks

    @property
    def fast(self) -> bool:
        return self._fast is not None

    @property
    def held(self) -> int:
        """The most characters of one unfinished event held between reads so far."""
        return self._sse.held

    def whole_fast(self, data: bytes) -> list[Any] | None:
        """The fast deltas `data` holds when it is nothing else (whole events, read between events),
        else None. Changes nothing: a read it refuses goes to `feed` as usual."""
        fast = self._fast
        if fast is None or not fast.templates or self.done or not self._sse.between_events:
            return None
        delta, pos = fast.event(data)  # the usual read on a paced stream: one event
        if delta is None:
            return None
        if pos == len(data):
            return [delta]
        items, pos = fast.scan(data, pos)
        return [delta, *items] if pos == len(data) else None

    def _runs(self, data: bytes) -> list[Any]:
        """Whole events (LF line ends) and maybe the start of one: each run of fast events as one
        item (fast_path.Recogniser.runs), the others through the SSE decoder, in their order.

        The SSE decoder is fed whole events, so it is between events wherever a run starts. While a
        template may still be learned it is fed them one at a time, so that the events after the one
        that teaches it can take the fast path in the same read; `_LEARN_STEPS` bounds the reads and
        events so looked at, so a stream without fast shapes soon stops paying for it.
        """
        fast = self._fast
        assert fast is not None
        lines = data.split(b"\n")  # memchr: twice as fast as finding each b"\n\n"
        if len(lines) % 2 and not any(lines[1::2]):
            events = lines[::2]  # every event one line: the same as data.split(b"\n\n")
        else:
            events = data.split(b"\n\n")
        rest = events.pop()  # an incomplete event, or b""
        templates = fast.templates
        heads = fast.heads(events)
        chunks: list[Any] = []
        start, count = 0, len(events)
        while start < count:
            found, start = fast.runs(events, heads, start)
            chunks += found
            if start == count:
                break
            if self._steps and fast.learning:
                self._steps -= 1
                stop = start + 1
            else:
                stop = _next_head(heads, start + 1, count)
            chunks += self._decode(self._sse.feed(b"\n\n".join(events[start:stop]) + b"\n\n"))
            if self.done:
                return chunks
            if fast.templates is not templates:
                templates = fast.templates
                heads = fast.heads(events)
            start = stop
        if rest:
            chunks += self._decode(self._sse.feed(rest))
        return chunks

    def close(self) -> list[Any]:
        return self._decode(self._sse.close())

    def _decode(self, events: list[tuple[str, str]]) -> list[Any]:
        chunks: list[Any] = []
        if self.done:
            return chunks
        loads = orjson.loads
        fast = self._fast
        for event, data in events:
            if fast is not None and fast.templates and not event:
                delta = fast.match(data)
                if delta is not None:
                    chunks.append(delta)
                    continue
            if data == DONE:
                self.done = True
                break
            try:
                chunk = loads(data)
            except orjson.JSONDecodeError:
                if event == "error":
                    chunks.append({"error": {"message": data}})
                else:
                    if not self.skipped:
                        self.skipped_sample = data[:200]
                    self.skipped += 1
                continue
            if type(chunk) is dict and not event:
                chunks.append(chunk)  # the usual chunk: nothing to normalise
                if fast is not None:
                    fast.learn(data, chunk)
            elif event == "error" and not (isinstance(chunk, dict) and "error" in chunk):
                chunks.append({"error": chunk})
            elif not isinstance(chunk, dict):
                chunks.append({"error": chunk})
            else:
                chunks.append(chunk)
        return chunks


def _next_head(heads: list[tuple[Any, list[bool]]], start: int, stop: int) -> int:
    """The first event in [start, stop) that starts with a template's head, else `stop`."""
    for _, starts in heads:
        try:
            stop = starts.index(True, start, stop)
        except ValueError:
            pass
    return stop


def _fewer_events(data: bytes, count: int) -> bool:
    """Does `data` hold fewer than `count` whole events? (It looks no further than the count-th blank line.)"""
    end = -2
    for _ in range(count):
        end = data.find(b"\n\n", end + 2)
        if end < 0:
            return True
    return False


def _prefix(event_type: str) -> bytes:
    prefix = _EVENT_PREFIX.get(event_type)
    if prefix is None:
        prefix = _EVENT_PREFIX[event_type] = b"event: " + event_type.encode() + b"\ndata: "
    return prefix


class Joined(Sequence[Any]):
    """The events of several feeds as one batch (the chunks of one read), without building a
    FastBatch among them event by event; read-only, like a FastBatch.

    Its `wire` is not kept: a sink may change an event in place (the store recorder, a terminal).
    """

    __slots__ = ("batches", "_count")

    def __init__(self, batches: list[Sequence[Any]]) -> None:
        self.batches = batches
        self._count = sum(map(len, batches))

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError("Joined index out of range")
        for batch in self.batches:
            if index < len(batch):
                return batch[index]
            index -= len(batch)
        raise AssertionError("unreachable: the count covers every batch")

    def __iter__(self) -> Iterator[Any]:
        return chain.from_iterable(self.batches)

    @property
    def wire(self) -> bytes:
        return b"".join(map(encode_events, self.batches))


def joined(batches: list[Sequence[Any]]) -> Sequence[Any]:
    """The events of several feeds as one batch: a list, or a `Joined` when a FastBatch is among them."""
    if FastBatch in map(type, batches):
        return Joined(batches)
    return [event for batch in batches for event in batch]


def encode_events(events: Iterable[Any]) -> bytes:
    """One SSE frame per event, joined once: the batch becomes one write (one chunk on the wire).

    Each frame is concatenated right away: holding orjson's outputs until the join is ~4x
    slower (its buffers are large mallocs; freeing them at once keeps them cache-hot).
    Events the fast path made (`EncodedEvent`) are already framed.
    """
    if type(events) is FastBatch or type(events) is Joined:
        return events.wire  # type: ignore[attr-defined]
    return b"".join([event.frame if type(event) is EncodedEvent else _prefix(event["type"]) + orjson.dumps(event)
                     + b"\n\n" for event in events])
