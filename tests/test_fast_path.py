"""The fast path (gateway/fast_path.py) against the full path: byte-identical SSE, the same final Response.

Property: for any upstream byte stream (random text with escapes, `\\u` sequences, surrogate pairs,
quotes and backslashes; any escaping style an upstream may use; unusual key order, extra fields,
whitespace; comments, CRLF, errors and garbage between the deltas; any cut into network reads),
decoding and processing it with the fast path on and off gives the same bytes for the client, the
same final Response and the same warnings. Unit cases pin that the fast path does run where it should.
"""
from __future__ import annotations

import itertools
import json
import zlib
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.fast_path import EncodedEvent
from gateway.sse import ChunkDecoder, encode_events
from gateway.stream_processor import ResponseStream, StreamOptions

from .scripted_upstream import chunk
from .test_properties import ERRORS, GARBAGE, NAMES, REALISTIC

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that exercises every escaping rule: quotes, backslashes, controls, `/`, non-ASCII, astral
# characters (surrogate pairs when \u-escaped), U+2028/9, DEL, and `<` for think-tag splitting.
TEXT = st.text(alphabet=st.sampled_from(list('ab <>/"\\\n\r\t\b\f\x00\x1f\x7fé€日😀\u2028\u2029\ufeff'))
               | st.characters(exclude_categories=["Cs"]), min_size=1, max_size=6)


# ------------------------------------------------------------------------------------------- upstream JSON
def _escape(char: str, style: str) -> str:
    """One character as an upstream in `style` writes it inside a JSON string."""
    if style == "orjson":
        return orjson.dumps(char).decode()[1:-1]
    if style == "slash" and char == "/":
        return "\\/"
    escaped = json.dumps(char)[1:-1] if style in ("ascii", "upper", "slash") else orjson.dumps(char).decode()[1:-1]
    if style == "upper" and escaped.startswith("\\u"):
        escaped = escaped.upper().replace("\\U", "\\u")
    if style == "unicode" and (char < " " or char in '"\\'):
        escaped = "\\u%04x" % ord(char)
    return escaped


class Style:
    """How one upstream writes its JSON: escaping, whitespace, key order, extra fields."""

    def __init__(self, escaping: str, spaced: bool, shuffle: int | None, extras: bool, varying: bool) -> None:
        self.escaping = escaping
        self.separators = (", ", ": ") if spaced else (",", ":")
        self.shuffle = shuffle          # a key order of its own, the same in every chunk
        self.extras = extras
        self.varying = varying          # a field that changes every chunk (OpenAI's `obfuscation`)
        self.count = itertools.count()

    def dumps(self, value: Any) -> str:
        if isinstance(value, str):
            return '"' + "".join(_escape(c, self.escaping) for c in value) + '"'
        if isinstance(value, dict):
            items = list(value.items())
            if self.shuffle is not None:
                items.sort(key=lambda item: zlib.crc32(f"{self.shuffle}{item[0]}".encode()))
            comma, colon = self.separators
            return "{" + comma.join(self.dumps(k) + colon + self.dumps(v) for k, v in items) + "}"
        if isinstance(value, list):
            return "[" + self.separators[0].join(self.dumps(v) for v in value) + "]"
        return json.dumps(value)

    def chunk(self, value: Any) -> str:
        if isinstance(value, dict) and self.extras:
            value = {**value, "system_fingerprint": "fp_/é", "meta": {"content": "decoy", "arguments": "x"}}
        if isinstance(value, dict) and self.varying:
            value = {**value, "obfuscation": f"v{next(self.count)}"}
        return self.dumps(value)


STYLES = st.builds(Style, st.sampled_from(["orjson", "orjson", "ascii", "upper", "slash", "unicode"]),
                   st.booleans(), st.none() | st.integers(0, 3), st.booleans(), st.integers(0, 5).map(lambda n: n == 0))


def _content(text: str) -> dict[str, Any]:
    return chunk({"content": text})


def _fragment(text: str, index: int | None) -> dict[str, Any]:
    call: dict[str, Any] = {"function": {"arguments": text}}
    if index is not None:
        call["index"] = index
    return chunk({"tool_calls": [call]})


def _call_start(name: str, index: int | None) -> dict[str, Any]:
    call: dict[str, Any] = {"id": f"call_{name}", "type": "function", "function": {"name": name, "arguments": ""}}
    if index is not None:
        call["index"] = index
    return chunk({"tool_calls": [call]})


# Runs of the fast shapes (what a real stream is mostly made of), mixed with everything else.
RUN_OF_TEXT = st.lists(TEXT.map(_content), min_size=2, max_size=8)
RUN_OF_ARGS = st.builds(lambda name, index, texts: [_call_start(name, index)] + [_fragment(t, index) for t in texts],
                        NAMES, st.none() | st.integers(0, 2), st.lists(TEXT, min_size=2, max_size=6))
OTHER = REALISTIC.map(lambda piece: [piece.chunk])
RUNS = st.lists(st.one_of(*[RUN_OF_TEXT, RUN_OF_ARGS] * 3, OTHER), min_size=1, max_size=10).map(
    lambda runs: [c for run in runs for c in run])


@st.composite
def chunks(draw: Any) -> list[Any]:
    """Runs of the fast shapes and other realistic chunks; sometimes one error or garbage chunk among them
    (these end the stream, so only one, anywhere)."""
    out = draw(RUNS)
    if draw(st.booleans()):
        out.insert(draw(st.integers(0, len(out))), draw(st.one_of(ERRORS, GARBAGE)).chunk)
    return out


@st.composite
def upstream_bytes(draw: Any) -> list[bytes]:
    """An upstream's stream of chunks in one style, framed as SSE and cut into network reads."""
    style = draw(STYLES)
    eol = draw(st.sampled_from(["\n", "\n", "\n", "\r\n"]))
    fields = draw(st.sampled_from([["data: "], ["data: "], ["data:"], ["data: ", "data: ", "data: ", "data:"]]))
    out = []
    for item in draw(chunks()):
        field = draw(st.sampled_from(fields))
        if draw(st.integers(0, 19)) == 0:
            out.append(": ping" + eol + eol)
        out.append(field + style.chunk(item) + eol + eol)
    if draw(st.booleans()):
        out.append("data: [DONE]" + eol + eol)
    raw = "".join(out).encode()
    cuts = draw(st.lists(st.integers(0, len(raw)), max_size=8))
    if draw(st.booleans()):  # paced: also a read per event
        cuts += itertools.accumulate(len(event.encode()) for event in out)
    cuts = sorted(set(cuts))
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]


OPTIONS = st.fixed_dictionaries({
    "think_tags": st.sampled_from(["off", "auto", "on"]),
    "custom_tools": st.sampled_from([frozenset(), frozenset({"search"})]),
    "reasoning_summary": st.booleans(),
})


# ------------------------------------------------------------------------------------------- driving
def run(reads: list[bytes], fast: bool, **options: Any) -> tuple[bytes, ResponseStream, int]:
    """Decode and process `reads`; the client's bytes, the stream, and how many events the fast path made."""
    counter = itertools.count()
    stream = ResponseStream(StreamOptions(model="m", **options), response_id="resp_1", clock=lambda: 1,
                            new_id=lambda kind: f"{kind}_{next(counter)}")
    decoder = ChunkDecoder(fast_path=fast)
    out = [encode_events(stream.start())]
    fast_events = 0
    for chunks in [decoder.feed(data) for data in reads] + [decoder.close()]:
        for item in chunks:
            events = stream.feed(item)
            fast_events += sum(type(event) is EncodedEvent for event in events)
            out.append(encode_events(events))
    out.append(encode_events(stream.finish(decoder.done)))
    return b"".join(out), stream, fast_events


def assert_same(reads: list[bytes], **options: Any) -> int:
    """Both paths give the same bytes, Response and warnings; how many events the fast path made."""
    full, full_stream, none = run(reads, False, **options)
    fast, fast_stream, fast_events = run(reads, True, **options)
    assert none == 0
    assert fast == full
    assert fast_stream.response == full_stream.response
    assert fast_stream.warnings == full_stream.warnings
    assert fast_stream.events_emitted == full_stream.events_emitted
    return fast_events


# ------------------------------------------------------------------------------------------- properties
@SETTINGS
@given(upstream_bytes(), OPTIONS)
def test_fast_and_full_paths_give_the_same_bytes_and_response(reads: list[bytes], options: dict[str, Any]) -> None:
    assert_same(reads, **options)


# ------------------------------------------------------------------------------------------- unit cases
def frames(*chunks: Any, eol: str = "\n") -> list[bytes]:
    """One network read per chunk (a paced stream); str chunks are sent as they are."""
    return [f"data: {c if isinstance(c, str) else orjson.dumps(c).decode()}{eol}{eol}".encode() for c in chunks] + \
        [f"data: [DONE]{eol}{eol}".encode()]


def test_a_plain_text_stream_takes_the_fast_path_after_its_first_delta() -> None:
    reads = frames(chunk({"role": "assistant", "content": ""}), *[_content(w) for w in ["Hel", "lo", " wo", "rld"]],
                   chunk({}, finish="stop"))
    assert assert_same(reads) == 3


def test_argument_fragments_take_the_fast_path_once_the_call_is_announced() -> None:
    reads = frames(_call_start("search", 0), *[_fragment(t, 0) for t in ['{"q', '":"', 'x"}']],
                   chunk({}, finish="tool_calls"))
    assert assert_same(reads) == 2


@pytest.mark.parametrize("body", ["\\/x", "\\u00e9", "\\u00E9", "\\ud83d\\ude00", "\\u2028", "\\u001F", "a\\u0022",
                                  "\u00e9\u2028", "\\\\\\\"\\n"])
def test_other_escaping_is_normalised_to_orjsons(body: str) -> None:
    line = '{"choices":[{"index":0,"delta":{"content":"%s"}}]}'
    reads = frames(line % "first", line % body, line % body, chunk({}, finish="stop"))
    assert assert_same(reads) == 2


@pytest.mark.parametrize("data", [b"\\ud800", b"a\tb", b'a"b', b"a\\"])
def test_bodies_orjson_rejects_take_the_full_path(data: bytes) -> None:
    line = b'data: {"choices":[{"index":0,"delta":{"content":"%s"}}]}\n\n'
    reads = [line % b"first", line % b"second", line % data, line % b"third", b"data: [DONE]\n\n"]
    assert assert_same(reads) == 2


@pytest.mark.parametrize("data", [b"\xff\xfe", b"\xed\xa0\x80", b"\xe2\x82"])
def test_invalid_utf8_is_replaced_as_on_the_full_path(data: bytes) -> None:
    line = b'data: {"choices":[{"index":0,"delta":{"content":"%s"}}]}\n\n'
    reads = [line % b"first", line % b"second", line % data, line % b"third", b"data: [DONE]\n\n"]
    assert assert_same(reads) == 3  # the bytes are decoded (with U+FFFD) first, then the text is recognised


def test_a_field_that_changes_every_chunk_stops_learning_and_stays_exact() -> None:
    reads = frames(*[{**_content(f"w{i}"), "obfuscation": f"x{i}"} for i in range(30)], chunk({}, finish="stop"))
    assert assert_same(reads) == 0


def test_think_tags_auto_starts_the_fast_path_once_the_start_is_decided() -> None:
    reads = frames(*[_content(t) for t in ["<thi", "nk>a", "b</think>", "c", "d", "e"]], chunk({}, finish="stop"))
    assert assert_same(reads, think_tags="auto") == 2


def test_custom_tool_input_is_decoded_on_the_full_path() -> None:
    reads = frames(_call_start("search", 0), *[_fragment(t, 0) for t in ['{"input":"', "a\\nb", '"}']])
    assert assert_same(reads, custom_tools=frozenset({"search"})) == 0


def test_encoded_events_read_as_the_events_they_frame() -> None:
    reads = frames(*[_content(t) for t in ["a", "b\u2028", "c"]], chunk({}, finish="stop"))
    counter = itertools.count()
    stream = ResponseStream(StreamOptions(model="m"), response_id="resp_1", clock=lambda: 1,
                            new_id=lambda kind: f"{kind}_{next(counter)}")
    decoder = ChunkDecoder(fast_path=True)
    events = [event for data in reads for item in decoder.feed(data) for event in stream.feed(item)]
    encoded = [event for event in events if isinstance(event, EncodedEvent)]
    assert len(encoded) == 2
    assert dict(encoded[1]) == {"type": "response.output_text.delta", "sequence_number": 4, "item_id": "msg_0",
                                "output_index": 0, "content_index": 0, "delta": "c", "logprobs": []}
    assert encode_events([dict(event) for event in encoded]) == encode_events(encoded)
