"""The server-sent events wire format, both ways (sans-I/O).

Decoding an upstream Chat Completions event stream: `SSEDecoder` follows the HTML Living Standard's event-stream interpretation (CR, LF and
CRLF line ends, comments, multi-line data, `event:`/`id:`/`retry:` fields) and adds the
leniency real upstreams need: an `error:` field (old llama.cpp) and a raw JSON line
without `data:` (some proxies) are surfaced as events instead of being dropped, and an
unterminated last event is delivered at EOF instead of discarded.

`ChunkDecoder` turns those events into parsed chunk dicts for the stream processor.

Encoding: Responses events as `event:`/`data:` frames (`encode_events`), and the keep-alive
comment (`PING`).
"""
from __future__ import annotations

import codecs
from collections.abc import Iterable
from typing import Any

import orjson

from .fast_path import EncodedEvent, Recogniser

DONE = "[DONE]"
PING = b": ping\r\n\r\n"
# `event: <type>\ndata: ` per event type, built once: the type set is small and fixed.
_EVENT_PREFIX: dict[str, bytes] = {}


class SSEDecoder:
    """Bytes in, `(event_name, data)` pairs out. Split anywhere, even inside a UTF-8 character."""

    __slots__ = ("_utf8", "_tail", "_skip_lf", "_data", "_event")

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._tail = ""          # an incomplete line carried over to the next feed
        self._skip_lf = False    # the previous feed ended in CR: a leading LF belongs to it
        self._data: list[str] = []
        self._event = ""

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        text = self._utf8.decode(data)
        if self._skip_lf and text:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        if self._tail:
            text = self._tail + text
        if "\r" in text:
            if text.endswith("\r"):
                self._skip_lf = True
            lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        else:
            lines = text.split("\n")
        self._tail = lines.pop()
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
        return out

    def take_partial(self) -> bytes | None:
        """Between events: give back the incomplete line held (as bytes) and forget it; None mid-event.

        The fast path (ChunkDecoder) reads whole events from the bytes itself and leaves the rest to us.
        """
        if self._data or self._event or self._skip_lf:
            return None
        pending = self._utf8.getstate()[0]  # the first bytes of a character cut by the read
        self._utf8.reset()
        tail, self._tail = self._tail, ""
        return tail.encode() + pending

    def close(self) -> list[tuple[str, str]]:
        """End of stream: deliver what is pending, even without its blank line."""
        out: list[tuple[str, str]] = []
        tail = self._tail + self._utf8.decode(b"", final=True)
        self._tail = ""
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
    `fast_path.FastDelta` (see fast_path.py).
    """

    __slots__ = ("_sse", "_fast", "done", "skipped", "skipped_sample")

    def __init__(self, fast_path: bool = False) -> None:
        self._sse = SSEDecoder()
        self._fast = Recogniser() if fast_path else None
        self.done = False
        self.skipped = 0
        self.skipped_sample = ""

    def feed(self, data: bytes) -> list[Any]:
        fast = self._fast
        sse = self._sse
        if fast is None or not fast.templates or self.done:
            return self._decode(sse.feed(data))
        # The fast path reads whole events from the bytes; it may start only between events.
        if sse._tail or sse._data or sse._event or sse._skip_lf or sse._utf8.getstate()[0]:  # noqa: SLF001
            held = sse.take_partial()
            if held is None:
                return self._decode(sse.feed(data))
            data = held + data
        chunks, pos = fast.scan(data)
        if pos < len(data):
            chunks += self._decode(sse.feed(data[pos:] if pos else data))
        return chunks

    @property
    def fast(self) -> bool:
        return self._fast is not None

    def whole_fast(self, data: bytes) -> list[Any] | None:
        """The fast deltas `data` holds when it is nothing else (whole events, read between events),
        else None. Changes nothing: a read it refuses goes to `feed` as usual."""
        fast, sse = self._fast, self._sse
        if (fast is None or not fast.templates or self.done or sse._tail or sse._data or sse._event  # noqa: SLF001
                or sse._skip_lf or sse._utf8.getstate()[0]):  # noqa: SLF001
            return None
        items, pos = fast.scan(data)
        return items if items and pos == len(data) else None

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


def _prefix(event_type: str) -> bytes:
    prefix = _EVENT_PREFIX.get(event_type)
    if prefix is None:
        prefix = _EVENT_PREFIX[event_type] = b"event: " + event_type.encode() + b"\ndata: "
    return prefix


def encode_events(events: Iterable[Any]) -> bytes:
    """One SSE frame per event, joined once: the batch becomes one write (one chunk on the wire).

    Each frame is concatenated right away: holding orjson's outputs until the join is ~4x
    slower (its buffers are large mallocs; freeing them at once keeps them cache-hot).
    Events the fast path made (`EncodedEvent`) are already framed.
    """
    return b"".join([event.frame if type(event) is EncodedEvent else _prefix(event["type"]) + orjson.dumps(event)
                     + b"\n\n" for event in events])
