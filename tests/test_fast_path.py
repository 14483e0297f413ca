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

from gateway.fast_path import EncodedEvent, FastBatch, FastRun, canonical, canonical_run, plain
from gateway.sse import ChunkDecoder, encode_events, joined
from gateway.stream_processor import ResponseStream, StreamOptions

from .scripted_upstream import chunk
from .test_properties import ERRORS, GARBAGE, NAMES, REALISTIC

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that exercises every escaping rule: quotes, backslashes, controls, `/`, non-ASCII, astral
# characters (surrogate pairs when \u-escaped), U+2028/9, DEL, `<` for think-tag splitting, and `,`
# (a run's strings are parsed as one JSON array).
TEXT = st.text(alphabet=st.sampled_from(list('ab <>/",\\\n\r\t\b\f\x00\x1f\x7fé€日😀\u2028\u2029\ufeff'))
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


ESCAPING = st.sampled_from(["orjson", "orjson", "ascii", "upper", "slash", "unicode"])
STYLES = st.builds(Style, ESCAPING, st.booleans(), st.none() | st.integers(0, 3), st.booleans(),
                   st.integers(0, 5).map(lambda n: n == 0))
STEADY_STYLES = st.builds(Style, ESCAPING, st.booleans(), st.none() | st.integers(0, 3), st.booleans(), st.just(False))


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
def chunks(draw: Any, bulk: bool = False) -> list[Any]:
    """Runs of the fast shapes and other realistic chunks; sometimes one error or garbage chunk among them
    (these end the stream, so only one, anywhere). `bulk`: a run of a fast shape first."""
    out = draw(RUNS)
    if bulk:
        out = draw(st.one_of(RUN_OF_TEXT, RUN_OF_ARGS)) + out
    if draw(st.booleans()):
        out.insert(draw(st.integers(0, len(out))), draw(st.one_of(ERRORS, GARBAGE)).chunk)
    return out


@st.composite
def upstream_bytes(draw: Any, bulk: bool = False) -> list[bytes]:
    """An upstream's stream of chunks in one style, framed as SSE and cut into network reads.

    `bulk`: a fast upstream's reads, each holding many whole events (runs of them, fast_path.FastRun),
    with LF line ends, `data: ` fields mostly and chunks that repeat their text (templates are learned).
    """
    style = draw(STEADY_STYLES if bulk else STYLES)
    if bulk:
        eol = "\n"
        fields = draw(st.sampled_from([["data: "], ["data: "], ["data: ", "data: ", "data: ", "data:"]]))
    else:
        eol = draw(st.sampled_from(["\n", "\n", "\n", "\r\n"]))
        fields = draw(st.sampled_from([["data: "], ["data: "], ["data:"], ["data: ", "data: ", "data: ", "data:"]]))
    out = []
    for item in draw(chunks(bulk)):
        field = draw(st.sampled_from(fields))
        if draw(st.integers(0, 19)) == 0:
            out.append(": ping" + eol + eol)
        out.append(field + style.chunk(item) + eol + eol)
    if draw(st.booleans()):
        out.append("data: [DONE]" + eol + eol)
    raw = "".join(out).encode()
    cuts = draw(st.lists(st.integers(0, len(raw)), max_size=2 if bulk else 8))
    if not bulk and draw(st.booleans()):  # paced: also a read per event
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


@SETTINGS
@given(upstream_bytes(bulk=True), OPTIONS)
def test_reads_of_many_whole_events_give_the_same_bytes_and_response(reads: list[bytes],
                                                                     options: dict[str, Any]) -> None:
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


# ------------------------------------------------------------------------------ runs (one read, many events)
TEXT_LINE = b'data: {"choices":[{"index":0,"delta":{"content":"%s"}}]}\n\n'
ARGS_LINE = b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"%s"}}]}}]}\n\n'
CALL_START = b"data: " + orjson.dumps(_call_start("search", 0)) + b"\n\n"


def items(reads: list[bytes]) -> list[Any]:
    """What the fast decoder makes of each read: a FastRun as ("run", its bodies), a FastDelta as ("one", its
    body), a parsed chunk as "chunk"."""
    decoder = ChunkDecoder(fast_path=True)
    out = []
    for data in reads:
        for item in decoder.feed(data):
            if type(item) is FastRun:
                out.append(("run", item.bodies))
            elif type(item) is tuple:
                out.append(("one", item[1]))
            else:
                out.append("chunk")
    return out


def test_a_read_of_whole_events_is_one_run_per_template_in_turn() -> None:
    text, args = [TEXT_LINE % w for w in (b"a", b"b", b"c")], [ARGS_LINE % w for w in (b"x", b"y")]
    reads = [TEXT_LINE % b"first", CALL_START, ARGS_LINE % b"{",  # paced: each template learned
             b"".join([*text, *args, *text[:2], ARGS_LINE % b"z", b"data: [DONE]\n\n"])]
    assert items(reads) == ["chunk", "chunk", "chunk", ("run", [b"a", b"b", b"c"]), ("run", [b"x", b"y"]),
                            ("run", [b"a", b"b"]), ("one", b"z")]
    # The text after the call opens a new message: its first delta takes the full path, the rest of the run not.
    assert assert_same(reads) == 3 + 2 + 1 + 1


def test_a_body_not_in_orjsons_form_is_canonicalised_inside_a_run() -> None:
    bodies = [b"a", b"\\u00e9\\/", b"\\ud83d\\ude00", b"\\u001F\\t", b"\xc3\xa9", b'\\",', b'\\"', b"\\\\"]
    reads = [TEXT_LINE % b"first", b"".join(TEXT_LINE % b for b in bodies) + b"data: [DONE]\n\n"]
    expected = [b"a", "é/".encode(), "😀".encode(), b"\\u001f\\t", b"\xc3\xa9", b'\\",', b'\\"', b"\\\\"]
    assert items(reads) == ["chunk", ("run", expected)]
    assert assert_same(reads) == len(bodies)


@pytest.mark.parametrize("bad", [b"\\ud800", b"a\tb", b'a"b', b"a\\", b"\\x", b"\xff", b""])
def test_an_invalid_body_ends_the_run_and_takes_the_full_path(bad: bytes) -> None:
    reads = [TEXT_LINE % b"first",
             b"".join(TEXT_LINE % b for b in (b"a", b"b\\n", bad, b"c", b"d")) + b"data: [DONE]\n\n"]
    found = items(reads)
    assert found[:2] == ["chunk", ("run", [b"a", b"b\\n"])] and found[-1] == ("run", [b"c", b"d"])
    assert assert_same(reads) >= 4


@pytest.mark.parametrize("event", [
    b'data: {"choices":[{"index":0,"delta":{"content":"b\nc"}}]}\n\n',          # a line the SSE reader drops
    b'data: {"choices":[{"index":0,"delta":{"content":"b\ndata: c"}}]}\n\n',    # data on two lines
    b'data: {"choices":[{"index":0,"delta":{"content":"b\n{"}}]}\n\n',          # a raw JSON line
])
def test_an_event_of_two_lines_is_never_a_fast_event(event: bytes) -> None:
    reads = [TEXT_LINE % b"first", TEXT_LINE % b"a" + event + TEXT_LINE % b"d" + TEXT_LINE % b"e"]
    assert ("run", [b"d", b"e"]) in items(reads)
    assert assert_same(reads) == 3


def test_data_on_several_lines_teaches_no_template() -> None:
    # A template learned across a line break would match one-line events the SSE reader reads otherwise.
    reads = [b'data: {"choices":[{"index":0,"delta":\ndata: {"content":"a"}}]}\n\n',
             b'data: {"choices":[{"index":0,"delta":\n{"content":"b"}}]}\n\n' * 3, b"data: [DONE]\n\n"]
    assert assert_same(reads) == 0


def test_the_first_read_learns_a_template_and_runs_in_the_same_read() -> None:
    role = b"data: " + orjson.dumps(chunk({"role": "assistant", "content": ""})) + b"\n\n"
    reads = [role + b"".join(TEXT_LINE % w for w in (b"a", b"b", b"c", b"d")) + b"data: [DONE]\n\n"]
    assert items(reads) == ["chunk", "chunk", ("run", [b"b", b"c", b"d"])]
    assert assert_same(reads) == 3


def test_a_fast_batch_reads_as_the_events_it_frames() -> None:
    counter = itertools.count()
    stream = ResponseStream(StreamOptions(model="m"), response_id="resp_1", clock=lambda: 1,
                            new_id=lambda kind: f"{kind}_{next(counter)}")
    decoder = ChunkDecoder(fast_path=True)
    stream.start()
    for item in decoder.feed(TEXT_LINE % b"first"):
        stream.feed(item)
    (run,) = decoder.feed(b"".join(TEXT_LINE % w for w in (b"a", b"b\\\"", b"c")))
    batch = stream.feed(run)
    assert type(batch) is FastBatch and len(batch) == 3 and bool(batch)
    assert [event["sequence_number"] for event in batch] == [5, 6, 7]
    assert batch[-1]["type"] == "response.output_text.delta" and batch[-3]["delta"] == "a"
    assert batch[1] == batch[-2] and dict(batch[1])["delta"] == 'b"'
    with pytest.raises(IndexError):
        batch[3]
    with pytest.raises(IndexError):
        batch[-4]
    assert encode_events(batch) == b"".join(event.frame for event in batch) == encode_events([dict(e) for e in batch])
    assert plain(batch) == [dict(e) for e in batch]
    joined_batch = joined([[{"type": "x", "sequence_number": 4}], batch, []])
    assert len(joined_batch) == 4 and joined_batch[-1]["sequence_number"] == 7 and joined_batch[0]["type"] == "x"
    assert [e["sequence_number"] for e in joined_batch] == [4, 5, 6, 7]
    assert encode_events(joined_batch) == encode_events(list(joined_batch))
    assert joined([[{"type": "x"}], [{"type": "y"}]]) == [{"type": "x"}, {"type": "y"}]


BODY = st.one_of(
    st.builds(lambda texts, style: "".join(_escape(c, style) for c in "".join(texts)).encode(),
              st.lists(TEXT | st.sampled_from(['",', '","', '\\', '"', ',', '\\"']), min_size=1, max_size=3),
              ESCAPING),
    st.sampled_from([b"", b'a"b', b"a\\", b"\\x", b"\\ud800", b"a\tb", b"a\nb", b"\xff", b"\\u12"]),
)


@SETTINGS
@given(st.lists(BODY, min_size=1, max_size=8))
def test_a_run_is_canonicalised_as_each_body_alone_up_to_the_first_invalid(bodies: list[bytes]) -> None:
    expected = []
    for body in bodies:
        escaped = canonical(body) if body else None
        if escaped is None:
            break
        expected.append(escaped)
    assert canonical_run(bodies) == expected
