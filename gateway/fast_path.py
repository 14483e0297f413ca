"""The byte-level fast path for the two common upstream chunk shapes (sans-I/O).

Almost every chunk of a long stream is one choice whose delta holds only `content`, or only
one tool call's `arguments` fragment, with no finish reason, and every such chunk of one
stream is the same text around a different JSON string. `Recogniser` learns that text once
from a chunk the full path parsed (`learn`), then recognises later `data:` lines by their
prefix and suffix (`match`) and hands the processor a `FastDelta` holding the string still
escaped. The processor copies it straight into a pre-encoded delta event (`EncodedEvent`) and
decodes the pieces once, for the `.done` event and the final Response.

A read holding many whole events (a fast upstream) is cut at its blank lines once (sse.ChunkDecoder)
and each run of events of one template becomes one `FastRun` (`Recogniser.runs`): matched, sliced
and canonicalised by a few C-level calls over the whole run (`canonical_run`) instead of a Python
loop per event. The processor answers it with one `FastBatch`, whose frames are joined once (`wire`)
and whose `EncodedEvent`s are made only for a consumer that reads them one by one.

Why this is exact: a template is kept only after the full path has parsed its chunk and a probe
line (the same prefix and suffix around another string) parsed to the same chunk with only that
string changed; so any line made of that prefix, a complete JSON string body and that suffix
parses to the same chunk around its own string (templates come only from data of one line, so
such a line is the whole event). The body is copied only in the form orjson writes (raw UTF-8;
escapes only for `"`, `\\` and control characters); any other escaping (`\\/`, `\\u00e9`,
surrogate pairs, upper-case hex) is decoded and re-encoded by orjson, and a body orjson rejects
leaves the line to the full path. Anything else also takes the full path.
A run makes the same checks, over all its events at once, and its state checks once: the fast
case only appends to the open item, which changes nothing they look at.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from itertools import repeat
from operator import itemgetter
from typing import Any

import orjson

TEXT = "content"
ARGS = "arguments"
# Characters orjson would escape: where none occurs, a body is already in orjson's form.
_SPECIAL = re.compile(rb'["\\\x00-\x1f]')
_KEYS = {TEXT: re.compile(r'"content"[ \t\r\n]*:[ \t\r\n]*"'),
         ARGS: re.compile(r'"arguments"[ \t\r\n]*:[ \t\r\n]*"')}
_STRING_BODY = re.compile(r'(?:[^"\\]|\\.)*')
# Valid JSON string bodies (non-empty), one a line: which bytes belong to which string is then
# certain, so the joined run can be parsed as one JSON array.
_BODY = rb'(?:[^"\\\x00-\x1f]++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))+'
_BODY_LINES = re.compile(_BODY + rb"(?:\n" + _BODY + rb")*").fullmatch
_UNQUOTED = itemgetter(slice(1, -1))
_PROBE = "fast-path probe"
# Learning is bounded: an upstream whose chunks never repeat their text (a random field per
# chunk) stops paying for it after this many attempts.
_LEARN_ATTEMPTS = 8
# Chunks longer than this teach no template: finding the string's end is a regex over it (about
# 80 ms per MB), and the text around a 1 MB delta is the same as around a small one, which comes too.
_LEARN_MAX_CHARS = 4096

# A recognised chunk: (its template, its string body as orjson writes it, without quotes). A plain
# tuple: an object per token would cost as much again as building it (ResponseStream checks its type).
FastDelta = tuple  # tuple[_Template, bytes]


class FastRun:
    """Consecutive recognised chunks of one template (two or more): their bodies as orjson writes them."""

    __slots__ = ("template", "bodies")

    def __init__(self, template: _Template, bodies: list[bytes]) -> None:
        self.template = template
        self.bodies = bodies


def as_chunk(delta: FastDelta) -> dict[str, Any]:
    """The parsed chunk a fast delta stands for (the full path takes it where the state needs more)."""
    template, escaped = delta
    chunk: dict[str, Any] = orjson.loads(template.prefix + escaped + template.suffix)
    return chunk


class EncodedEvent(Mapping[str, Any]):
    """An event already framed for SSE; a read-only mapping (parsed on demand) for anyone wanting fields.

    Its `type` is known without parsing: sinks that only look at the type of the last event of a
    batch (the store recorder, the final-JSON sink) cost nothing on the fast path.
    """

    __slots__ = ("type", "sequence_number", "frame", "_fields")

    def __init__(self, event_type: str, sequence_number: int, frame: bytes) -> None:
        self.type = event_type
        self.sequence_number = sequence_number
        self.frame = frame       # `event: …\ndata: {…}\n\n`, exactly what encode_events writes
        self._fields: dict[str, Any] | None = None

    def _dict(self) -> dict[str, Any]:
        fields = self._fields
        if fields is None:
            fields = self._fields = orjson.loads(self.frame[self.frame.index(b"\ndata: ") + 7:])
        return fields

    def __getitem__(self, key: str) -> Any:
        if key == "type":
            return self.type
        if key == "sequence_number":
            return self.sequence_number
        return self._dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in ("type", "sequence_number") else self._dict().get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __repr__(self) -> str:
        return f"EncodedEvent({self._dict()!r})"


class FastBatch(Sequence[EncodedEvent]):
    """The delta events for a `FastRun`, numbered from `first`: a read-only sequence whose
    `EncodedEvent`s are made only when someone reads them; `wire` is all their frames, joined once.

    Each frame is `frame % (its sequence number, its body)` (`delta_frame`), one C call.
    """

    __slots__ = ("type", "first", "frame", "bodies", "_wire")

    def __init__(self, event_type: str, first: int, frame: bytes, bodies: list[bytes]) -> None:
        self.type = event_type
        self.first = first
        self.frame = frame
        self.bodies = bodies
        self._wire: bytes | None = None

    def __len__(self) -> int:
        return len(self.bodies)

    def __getitem__(self, index: int) -> EncodedEvent:  # type: ignore[override]
        count = len(self.bodies)
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError("FastBatch index out of range")
        number = self.first + index
        return EncodedEvent(self.type, number, self.frame % (number, self.bodies[index]))

    def __iter__(self) -> Iterator[EncodedEvent]:
        numbers = range(self.first, self.first + len(self.bodies))
        return map(EncodedEvent, repeat(self.type), numbers, self._frames(numbers))

    @property
    def wire(self) -> bytes:
        """The frames joined: what encode_events writes for these events."""
        wire = self._wire
        if wire is None:
            wire = self._wire = b"".join(self._frames(range(self.first, self.first + len(self.bodies))))
        return wire

    def _frames(self, numbers: range) -> Iterator[bytes]:
        return map(self.frame.__mod__, zip(numbers, self.bodies))


def delta_frame(event_type: str, item_id: str, output_index: int, content_index: int | None, end: bytes) -> bytes:
    """A delta event's SSE frame as a bytes `%` format: `%d` its sequence number, `%s` its string as
    orjson writes it (no quotes); the fields in the full path's order, `end` what follows the string."""
    head = b"event: " + event_type.encode() + b'\ndata: {"type":' + orjson.dumps(event_type) + b',"sequence_number":'
    fields = b',"item_id":' + orjson.dumps(item_id) + b',"output_index":' + str(output_index).encode()
    if content_index is not None:
        fields += b',"content_index":' + str(content_index).encode()
    return (head.replace(b"%", b"%%") + b"%d" + fields.replace(b"%", b"%%") + b',"delta":"%s'
            + end.replace(b"%", b"%%"))


def canonical(body: bytes) -> bytes | None:
    """A JSON string body as orjson writes it, or None when it is not a valid body (or not UTF-8)."""
    if body.isascii() and _SPECIAL.search(body) is None:
        return body  # already in orjson's form
    try:
        value = orjson.loads(b'"' + body + b'"')
    except orjson.JSONDecodeError:
        return None
    return orjson.dumps(value)[1:-1] if type(value) is str else None


def canonical_run(bodies: list[bytes]) -> list[bytes]:
    """`canonical` of each body up to the first that is empty or not a valid body.

    Usually C-level calls over the whole run: one search when every body is already in orjson's
    form; else, once each body is known to be a well-formed string body (so that in the joined
    array each string is exactly one body), one parse of them all as a JSON array and a dump of
    each string. (Not one dump of the array cut at its `","`: a string ending in `",` fools that.)
    """
    if all(bodies):
        joined = b"".join(bodies)
        if joined.isascii() and _SPECIAL.search(joined) is None:
            return bodies
        lines = b"\n".join(bodies)
        if lines.count(b"\n") == len(bodies) - 1 and _BODY_LINES(lines) is not None:
            try:
                values = orjson.loads(b'["' + b'","'.join(bodies) + b'"]')
            except orjson.JSONDecodeError:
                pass  # not UTF-8, or a lone surrogate: find which one below
            else:
                return list(map(_UNQUOTED, map(orjson.dumps, values)))
    out = []
    for body in bodies:
        escaped = canonical(body) if body else None
        if escaped is None:
            break
        out.append(escaped)
    return out


def decode_body(escaped: bytes) -> str:
    """Escaped pieces (joined) back to text: one parse for a whole part."""
    text: str = orjson.loads(b'"' + escaped + b'"')
    return text


class _Template:
    """The bytes of a `data:` payload around the string; `head` is the whole line's start."""

    __slots__ = ("kind", "index", "text", "prefix", "suffix", "head", "head_len", "suffix_len", "body")

    def __init__(self, kind: str, index: Any, prefix: str, suffix: str) -> None:
        self.kind = kind
        self.index = index        # the tool call's `index` (ARGS)
        self.text = (prefix, suffix)
        self.prefix = prefix = prefix.encode()  # up to and with the string's opening quote
        self.suffix = suffix = suffix.encode()  # from the string's closing quote
        self.head = b"data: " + prefix
        self.head_len = len(self.head)
        self.suffix_len = len(suffix)
        # An event's body, given an event that starts with `head` and ends with `suffix`. (No regex
        # per template: the prefix holds the stream's chunk id, so each stream would compile one,
        # about 150 µs on the way to its first token, and startswith/endswith are as fast.)
        self.body = itemgetter(slice(self.head_len, -self.suffix_len))


class Recogniser:
    """Recognises the fast shapes in the upstream's bytes, per upstream stream."""

    __slots__ = ("templates", "_attempts")

    def __init__(self) -> None:
        self.templates: list[_Template] = []   # at most one per kind
        self._attempts = _LEARN_ATTEMPTS

    @property
    def learning(self) -> bool:
        """May a chunk still teach a template?"""
        return self._attempts > 0

    def scan(self, buf: bytes, pos: int = 0) -> tuple[list[Any], int]:
        """The fast deltas of the complete events from `pos` in `buf` that match a template, and where
        the first other event (or an incomplete one) starts.

        An event matches only as one whole line, `data: ` + prefix + body + suffix, then a blank
        line (LF or CRLF): a valid body holds no raw line break, so the line ends where it seems to.
        """
        out: list[Any] = []
        while True:
            delta, next_pos = self.event(buf, pos)
            if delta is None:
                return out, pos
            out.append(delta)
            pos = next_pos

    def event(self, buf: bytes, pos: int = 0) -> tuple[FastDelta | None, int]:
        """The event at `pos` when it is a template's: (delta, where the next starts), else (None, pos)."""
        newline = buf.find(b"\n", pos)
        if newline < 0:
            return None, pos
        end = newline - 1 if newline > pos and buf[newline - 1] == 13 else newline  # CRLF
        if buf.startswith(b"\n", newline + 1):
            next_pos = newline + 2
        elif buf.startswith(b"\r\n", newline + 1):
            next_pos = newline + 3
        else:
            return None, pos  # not one line then a blank line (or not all here yet)
        for template in self.templates:
            start, stop = pos + template.head_len, end - template.suffix_len
            if stop > start and buf.startswith(template.head, pos) and buf.endswith(template.suffix, start, end):
                body = canonical(buf[start:stop])
                return (None, pos) if body is None else ((template, body), next_pos)
        return None, pos

    def heads(self, events: list[bytes]) -> list[tuple[_Template, list[bool]]]:
        """Per template, which of `events` (a read cut at its blank lines) start with its head, and
        one False more to end any search for the end of a run."""
        return [(template, [*map(bytes.startswith, events, repeat(template.head)), False])
                for template in self.templates]

    def runs(self, events: list[bytes], heads: list[tuple[_Template, list[bool]]],
             start: int) -> tuple[list[Any], int]:
        """The fast deltas of the events from `start` on, one `FastRun` per run of one template (a
        `FastDelta` for a run of one), and where the first other event is.

        An event matches as `head + body + suffix`, nothing else: a valid body holds no line break,
        nor do a template's head and suffix, so the event is the one line `scan` would match.
        """
        out: list[Any] = []
        count = len(events)
        while start < count:
            for template, starts in heads:
                if starts[start]:
                    break
            else:
                break
            run = events[start:starts.index(False, start)]
            ends = list(map(bytes.endswith, run, repeat(template.suffix)))
            if False in ends:
                del run[ends.index(False):]
                if not run:
                    break
            bodies = canonical_run(list(map(template.body, run)))
            if bodies:
                out.append(FastRun(template, bodies) if len(bodies) > 1 else (template, bodies[0]))
                start += len(bodies)
            if len(bodies) < len(run):
                break
        return out, start

    def match(self, data: str) -> FastDelta | None:
        """A `data:` payload already decoded (the rest of the read in which a template was learned)."""
        for template in self.templates:
            prefix, suffix = template.text
            if len(data) > len(prefix) + len(suffix) and data.startswith(prefix) and data.endswith(suffix):
                body = canonical(data[len(prefix):len(data) - len(suffix)].encode())
                return None if body is None else (template, body)
        return None

    def learn(self, data: str, chunk: dict[str, Any]) -> None:
        """A chunk the full path parsed from `data`: keep its text as a template if it has a fast shape."""
        if self._attempts <= 0 or len(data) > _LEARN_MAX_CHARS:
            return
        shape = _shape(chunk)
        if shape is None or "\n" in data:
            return  # not a fast shape; or data from several `data:` lines, which no one-line event matches
        self._attempts -= 1
        kind, index, holder = shape
        value = holder[kind]
        for key in _KEYS[kind].finditer(data):
            start = key.end()
            end = _STRING_BODY.match(data, start).end()  # type: ignore[union-attr]
            if end >= len(data):
                continue
            prefix, suffix = data[:start], data[end:]
            if _probe(prefix, suffix, chunk, kind, index, value):
                template = _Template(kind, index, prefix, suffix)
                self.templates = [t for t in self.templates if t.kind != kind] + [template]
                return


def _probe(prefix: str, suffix: str, chunk: dict[str, Any], kind: str, index: Any, value: str) -> bool:
    """Does `prefix + probe + suffix` parse to `chunk` with only its `kind` string changed?"""
    try:
        probed = orjson.loads(prefix + _PROBE + suffix)
    except orjson.JSONDecodeError:
        return False
    shape = _shape(probed) if type(probed) is dict else None
    if shape is None or shape[0] != kind or shape[1] != index or shape[2][kind] != _PROBE:
        return False
    shape[2][kind] = value
    return bool(probed == chunk)


def _shape(chunk: dict[str, Any]) -> tuple[str, Any, dict[str, Any]] | None:
    """(kind, tool call index, the dict holding the string) when the processor's only work for
    `chunk` is to append one non-empty string to the text or to one call's arguments.

    It mirrors what ResponseStream reads of a chunk (a field it ignores may hold anything).
    """
    if chunk.get("error") or chunk.get("usage"):
        return None
    groq = chunk.get("x_groq")
    if groq and (type(groq) is not dict or groq.get("usage")):
        return None
    choices = chunk.get("choices")
    if type(choices) is not list or len(choices) != 1:
        return None
    choice = choices[0]
    if type(choice) is not dict or choice.get("index", 0) or choice.get("finish_reason"):
        return None
    delta = choice.get("delta") or choice.get("message")
    if type(delta) is not dict or any(delta[key] for key in _OTHER_DELTA_KEYS.intersection(delta)):
        return None
    content, calls = delta.get("content"), delta.get("tool_calls")
    if content:
        return (TEXT, None, delta) if type(content) is str and content and not calls else None
    if type(calls) is not list or len(calls) != 1:
        return None
    call = calls[0]
    if type(call) is not dict or call.get("extra_content") is not None or _nonempty_str(call.get("id")):
        return None
    function, index = call.get("function"), call.get("index")
    if type(function) is not dict or _nonempty_str(function.get("name")) or type(index) not in _INDEX_TYPES:
        return None
    arguments = function.get("arguments")
    return (ARGS, index, function) if type(arguments) is str and arguments else None


_OTHER_DELTA_KEYS = frozenset({"reasoning_content", "reasoning", "reasoning_details", "refusal", "function_call"})
_INDEX_TYPES = (int, str, type(None))


def _nonempty_str(value: Any) -> bool:
    return type(value) is str and value != ""


def plain(events: list[Any]) -> list[dict[str, Any]]:
    """The events as plain dicts, for consumers that serialise them as JSON values (capture, inspector)."""
    return [dict(event) if type(event) is EncodedEvent else event for event in events]
