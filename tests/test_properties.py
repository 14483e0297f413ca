"""Property tests (hypothesis) for the sans-I/O core: decoding, the event stream, request translation.

(a) however a valid upstream byte stream is cut into network writes (inside multi-byte UTF-8
    characters, between CR and LF), ChunkDecoder yields the same chunks and ResponseStream the
    same events (ids normalised);
(b) any sequence of realistic chunk shapes yields a stream that keeps the Responses invariants
    and passes gateway.check, with exactly the text, reasoning and arguments fed in;
(c) random bytes into the decoders and random JSON-ish documents into translate_request raise
    nothing but GatewayError subclasses.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import UpstreamConfig
from gateway.errors import GatewayError
from gateway.sse import ChunkDecoder, SSEDecoder, encode_events
from gateway.translate import ChatRequest, translate_request

from .conftest import assert_valid_stream
from .helpers import new_stream
from .scripted_upstream import chunk, usage

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TERMINAL = ("response.completed", "response.incomplete", "response.failed")

# ------------------------------------------------------------------------------------------- chunk grammar
# Text with multi-byte characters, CR/LF and JSON-special characters, so framing and escaping are exercised.
TEXT = st.text(alphabet=st.sampled_from(list("ab xyz{}\":,\\\n\r\té€日本😀🇫🇷")) | st.characters(exclude_categories=["Cs"]), max_size=8)
NAMES = st.sampled_from(["get_weather", "search", "get_time"])
IDS = st.sampled_from(["call_a", "call_b", "call_c", "D681PevKs"])
FINISH = st.sampled_from(["stop", "length", "tool_calls", "function_call", "content_filter", "eos", "eos_token",
                          "end_turn", "error", "insufficient_system_resource", "", "weird_reason", None])


@dataclass
class Piece:
    """One upstream chunk and what it contributes if the stream is still open when it arrives."""

    chunk: Any
    text: str = ""
    reasoning: str = ""
    args: int = 0                 # characters of argument fragments
    finish: str | None = None
    error: str | None = None      # the message the failed response must carry
    garbage: bool = False


def _content(t: str) -> Piece:
    return Piece(chunk({"content": t}), text=t)


def _reasoning(kind: str, t: str) -> Piece:
    delta = {"reasoning_content": {"reasoning_content": t}, "reasoning": {"reasoning": t},
             "details": {"reasoning_details": [{"type": "reasoning.text", "text": t}]},
             "openrouter": {"reasoning": t, "reasoning_details": [{"type": "reasoning.text", "text": t}]}}[kind]
    return Piece(chunk({"content": None, **delta}), reasoning=t)


@st.composite
def tool_piece(draw: Any) -> Piece:
    calls, total = [], 0
    for _ in range(draw(st.integers(1, 3))):
        call: dict[str, Any] = {}
        if draw(st.booleans()):
            call["index"] = draw(st.integers(0, 2))
        if draw(st.booleans()):
            call["id"] = draw(IDS)
            call["type"] = "function"
        function: dict[str, Any] = {}
        if draw(st.booleans()):
            function["name"] = draw(NAMES)
        if draw(st.booleans()):
            function["arguments"] = draw(TEXT)
            total += len(function["arguments"])
        call["function"] = function
        calls.append(call)
    return Piece(chunk({"tool_calls": calls}), args=total)


@st.composite
def legacy_piece(draw: Any) -> Piece:
    function: dict[str, Any] = {}
    if draw(st.booleans()):
        function["name"] = draw(NAMES)
    arguments = draw(st.none() | TEXT)
    if arguments is not None:
        function["arguments"] = arguments
    return Piece(chunk({"function_call": function}), args=len(arguments or ""))


@st.composite
def finish_piece(draw: Any) -> Piece:
    reason = draw(FINISH)
    text = draw(st.sampled_from(["", "fin"]))
    piece = Piece(chunk({"content": text} if text else {}, finish=reason), text=text, finish=reason or None)
    if reason in ("error", "insufficient_system_resource"):
        piece.error = f"the upstream finished with reason {reason!r}"
    return piece


USAGE = st.builds(lambda p, c, cached, r: usage(p, c, prompt_tokens_details={"cached_tokens": cached},
                                                completion_tokens_details={"reasoning_tokens": r}),
                  st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 100), st.integers(0, 100))
ERRORS = st.one_of(
    TEXT.filter(bool).map(lambda m: Piece({"error": {"message": m, "code": 500}}, error=m)),
    TEXT.filter(bool).map(lambda m: Piece({"error": m}, error=m)),
    TEXT.filter(bool).map(lambda m: Piece({"error": {"type": "x"}, "message": m}, error=m)),
    TEXT.filter(bool).map(lambda m: Piece(chunk({"content": "lost"}, finish="error", error={"message": m}), error=m)),
)
GARBAGE = st.sampled_from([
    {"choices": "x"}, {"choices": [None]}, {"choices": [{"delta": "str"}]}, {"choices": [{"delta": {"content": 5}}]},
    {"choices": [{"delta": {"tool_calls": [None]}}]}, {"choices": [{"delta": {"tool_calls": "abc"}}]},
    {"choices": [{"delta": {"tool_calls": [{"index": [1], "function": {"arguments": "x"}}]}}]},
    {"choices": [{"delta": {"tool_calls": [{"id": 7, "function": {"name": {"n": 1}, "arguments": 3}}]}}]},
    {"choices": [{"delta": {"function_call": {"name": ["x"], "arguments": {"a": 1}}}}]},
    {"choices": [{"index": 1, "delta": {"content": "second choice"}}]}, {"choices": [{"finish_reason": 5}]},
    {"usage": "x"}, {"usage": {"prompt_tokens": "5", "completion_tokens": -1, "prompt_tokens_details": []}},
    {"x_groq": "str"}, {"x_groq": {"usage": [1]}}, {"error": {"message": None, "code": {"a": 1}}},
    {"error": [1, 2]}, {"error": 0}, {}, {"object": "chat.completion.chunk"},
    {"choices": [{"message": {"role": "assistant", "content": "whole"}, "finish_reason": "stop"}]},
]).map(lambda c: Piece(c, garbage=True))

REALISTIC = st.one_of(
    TEXT.map(_content),
    st.tuples(st.sampled_from(["reasoning_content", "reasoning", "details", "openrouter"]), TEXT.filter(bool))
    .map(lambda a: _reasoning(*a)),
    st.just(Piece(chunk({"role": "assistant", "content": None}))),
    st.just(Piece(chunk({"reasoning_content": None, "content": ""}))),
    tool_piece(), legacy_piece(), finish_piece(),
    USAGE.map(lambda u: Piece(chunk(choices=False, usage=u))),
    USAGE.map(lambda u: Piece(chunk({}, x_groq={"usage": u}))),
)
PIECES = st.lists(REALISTIC, max_size=25)
WITH_ERRORS = st.lists(st.one_of(REALISTIC, REALISTIC, REALISTIC, ERRORS), max_size=25)
ANYTHING = st.lists(st.one_of(REALISTIC, ERRORS, GARBAGE), max_size=25)


# ------------------------------------------------------------------------------------------- helpers
def run_stream(chunks: list[Any], saw_done: bool) -> tuple[list[dict[str, Any]], int]:
    """Feed the chunks; return the events and how many chunks arrived before the terminal event."""
    stream = new_stream(model="m", response_id="resp_test", created_at=1)
    events = stream.start()
    fed = len(chunks)
    for i, item in enumerate(chunks):
        events += stream.feed(item)
        if stream.terminal is not None:
            fed = i + 1
            break
    events += stream.finish(saw_done)
    return events, fed


_ID = re.compile(r"\b(?:msg|fc|rs|call)_[0-9a-f]{20}\b")


def normalised(events: list[dict[str, Any]]) -> str:
    """Events as JSON with generated ids replaced by their order of appearance and clocks removed."""
    text = orjson.dumps(events).decode()
    seen: dict[str, str] = {}
    text = _ID.sub(lambda m: seen.setdefault(m.group(0), f"<id{len(seen)}>"), text)
    return re.sub(r'"completed_at":\d+', '"completed_at":0', text)


def check_invariants(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The structural rules of responses-stream.md, checked directly and with gateway.check."""
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    terminals = [i for i, e in enumerate(events) if e["type"] in TERMINAL]
    assert terminals == [len(events) - 1]
    added: dict[int, dict[str, Any]] = {}
    done: dict[int, dict[str, Any]] = {}
    deltas: dict[tuple[str, int, Any], list[str]] = {}
    finals: dict[tuple[str, int, Any], str] = {}
    for e in events:
        t = e["type"]
        if t == "response.output_item.added":
            assert e["output_index"] == len(added) and e["output_index"] not in added
            added[e["output_index"]] = e["item"]
        elif t == "response.output_item.done":
            index = e["output_index"]
            assert index in added and index not in done
            assert {k: e["item"].get(k) for k in ("id", "type", "call_id")} == \
                   {k: added[index].get(k) for k in ("id", "type", "call_id")}
            done[index] = e["item"]
        elif t.endswith(".delta"):
            assert e["output_index"] in added and e["output_index"] not in done
            deltas.setdefault((t[:-6], e["output_index"], e.get("content_index")), []).append(e["delta"])
        elif t in ("response.output_text.done", "response.reasoning_text.done",
                   "response.function_call_arguments.done"):
            finals[(t[:-5], e["output_index"], e.get("content_index"))] = e.get("text", e.get("arguments"))
    assert sorted(added) == sorted(done)
    for key, value in finals.items():
        assert "".join(deltas.get(key, [])) == value
    for index, item in done.items():
        if item["type"] == "function_call":
            assert item["arguments"] == finals[("response.function_call_arguments", index, None)]
        elif item["type"] == "message":
            for ci, part in enumerate(item["content"]):
                if part["type"] == "output_text":
                    assert part["text"] == finals[("response.output_text", index, ci)]
        elif item["type"] == "reasoning":
            assert item["content"][0]["text"] == finals[("response.reasoning_text", index, 0)]
    response = events[-1]["response"]
    assert response["output"] == [done[i] for i in sorted(done)]
    assert_valid_stream(encode_events(events))
    return response


def fold(response: dict[str, Any]) -> tuple[str, str, int]:
    text = reasoning = ""
    args = 0
    for item in response["output"]:
        if item["type"] == "message":
            text += "".join(p["text"] for p in item["content"] if p["type"] == "output_text")
        elif item["type"] == "reasoning":
            reasoning += item["content"][0]["text"]
        elif item["type"] == "function_call":
            args += len(item["arguments"])
    return text, reasoning, args


# ------------------------------------------------------------------------------------------- (a) splits
EOLS = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def framed_stream(draw: Any) -> bytes:
    """A valid upstream byte stream: realistic chunks, any legal framing, comments, maybe no [DONE]."""
    out = []
    for piece in draw(WITH_ERRORS):
        eol = draw(EOLS)
        if draw(st.integers(0, 4)) == 0:
            out.append(draw(st.sampled_from([":", ": ping - 2026-05-01 10:00:00", ": OPENROUTER PROCESSING"])) + eol)
        if draw(st.integers(0, 4)) == 0:
            out.append(draw(st.sampled_from(["event: message", "id: 3", "retry: 100"])) + eol)
        prefix = draw(st.sampled_from(["data: ", "data:"]))
        payload = json.dumps(piece.chunk, ensure_ascii=draw(st.booleans()))
        if draw(st.booleans()):  # one payload over several `data:` lines, cut where JSON allows a newline
            payload = payload.replace(", ", "," + eol + prefix, draw(st.integers(1, 3)))
        out.append(prefix + payload + eol + eol)
    if draw(st.booleans()):
        out.append("data: [DONE]" + draw(st.sampled_from(["", "\n", "\r\n\r\n", "\n\n"])))
    return "".join(out).encode()


@st.composite
def cut_points(draw: Any, body: bytes) -> list[int]:
    # Bias cuts towards the interesting places: inside multi-byte characters and between CR and LF.
    tricky = [i for i in range(1, len(body)) if 0x80 <= body[i] < 0xC0 or body[i - 1:i + 1] == b"\r\n"]
    anywhere = st.integers(0, len(body))
    chosen = draw(st.lists(st.sampled_from(tricky) | anywhere if tricky else anywhere, max_size=40))
    return sorted(set(chosen))


def decode(pieces: list[bytes]) -> tuple[list[Any], bool]:
    decoder = ChunkDecoder()
    chunks: list[Any] = []
    for data in pieces:
        chunks += decoder.feed(data)
        if decoder.done:
            break
    if not decoder.done:
        chunks += decoder.close()
    return chunks, decoder.done


@SETTINGS
@given(st.data())
def test_any_split_gives_the_same_chunks_and_events(data: Any) -> None:
    body = data.draw(framed_stream())
    cuts = data.draw(cut_points(body))
    bounds = [0, *cuts, len(body)]
    pieces = [body[a:b] for a, b in zip(bounds, bounds[1:])]
    assert b"".join(pieces) == body
    whole, whole_done = decode([body])
    split, split_done = decode(pieces)
    bytewise, bytewise_done = decode([body[i:i + 1] for i in range(len(body))])
    assert split == whole and bytewise == whole
    assert split_done == whole_done == bytewise_done
    assert normalised(run_stream(split, split_done)[0]) == normalised(run_stream(whole, whole_done)[0])


@SETTINGS
@given(WITH_ERRORS, st.booleans())
def test_framing_round_trip(pieces: list[Piece], done: bool) -> None:
    """The decoder returns exactly the chunks that were framed (the oracle for the split test)."""
    body = "".join(f"data: {json.dumps(p.chunk, ensure_ascii=False)}\r\n\r\n" for p in pieces)
    body += "data: [DONE]\n\n" if done else ""
    chunks, saw_done = decode([body.encode()])
    assert chunks == [p.chunk for p in pieces] and saw_done == done


# ------------------------------------------------------------------------------------------- (b) invariants
def expected(pieces: list[Piece], fed: int, saw_done: bool) -> dict[str, Any]:
    text = reasoning = ""
    args = 0
    error = None
    finish = None
    for piece in pieces[:fed]:
        if piece.error is not None and piece.finish is None and not piece.text:
            error = piece.error   # an in-band error: nothing else in the chunk counts
            break
        text += piece.text
        reasoning += piece.reasoning
        args += piece.args
        finish = piece.finish or finish
        if piece.error is not None:
            error = piece.error
            break
    if error is not None:
        status = "failed"
    elif finish is None and not saw_done:
        status, error = "failed", "the upstream closed the stream before a finish_reason or [DONE]"
    else:
        status = {"length": "incomplete", "content_filter": "incomplete"}.get(finish or "", "completed")
    return {"text": text, "reasoning": reasoning, "args": args, "status": status, "error": error}


@SETTINGS
@given(WITH_ERRORS, st.booleans())
def test_realistic_chunks_keep_the_invariants_and_the_content(pieces: list[Piece], saw_done: bool) -> None:
    events, fed = run_stream([p.chunk for p in pieces], saw_done)
    response = check_invariants(events)
    want = expected(pieces, fed, saw_done)
    text, reasoning, args = fold(response)
    got = {"text": text, "reasoning": reasoning, "args": args, "status": response["status"],
           "error": (response["error"] or {}).get("message")}
    assert got == want
    if response["status"] == "incomplete":
        assert response["incomplete_details"]["reason"] in ("max_output_tokens", "content_filter")


@SETTINGS
@given(ANYTHING, st.booleans())
def test_any_chunks_keep_the_invariants(pieces: list[Piece], saw_done: bool) -> None:
    """Garbage included: the stream may fail, but it stays well-formed and nothing escapes."""
    events, _ = run_stream([p.chunk for p in pieces], saw_done)
    response = check_invariants(events)
    usage_ = response["usage"]
    assert usage_["total_tokens"] == usage_["input_tokens"] + usage_["output_tokens"]


# ------------------------------------------------------------------------------------------- (c) fuzzing
@SETTINGS
@given(st.lists(st.binary(max_size=64), max_size=12))
def test_decoders_survive_random_bytes(writes: list[bytes]) -> None:
    sse = SSEDecoder()
    for data in writes:
        for name, value in sse.feed(data):
            assert isinstance(name, str) and isinstance(value, str)
    sse.close()
    _decode_and_check(writes)


def _decode_and_check(writes: list[bytes]) -> None:
    """Whatever the bytes, the chunk decoder yields dicts and the stream keeps its invariants."""
    decoder = ChunkDecoder()
    chunks: list[Any] = []
    for data in writes:
        chunks += decoder.feed(data)
    chunks += decoder.close()
    assert all(isinstance(c, dict) for c in chunks)
    check_invariants(run_stream(chunks, decoder.done)[0])


SSE_WORDS = st.sampled_from([b"data:", b"data: ", b"event: ", b"error: ", b"id: ", b"retry: ", b":", b"\n", b"\r",
                             b"\r\n", b"[DONE]", b"{", b"}", b'"', b'{"error": "x"}', b'{"choices": []}',
                             b"\xe2\x82", b"\xac", b"\xff"])


@SETTINGS
@given(st.lists(st.lists(SSE_WORDS, max_size=10).map(b"".join), max_size=10))
def test_decoders_survive_sse_like_bytes(writes: list[bytes]) -> None:
    _decode_and_check(writes)


JSON_SCALARS = st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False) | TEXT
JSON = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=6) | st.sampled_from(["type", "role", "content", "text"]),
                                      inner, max_size=4), max_leaves=20)


@SETTINGS
@given(st.lists(JSON, max_size=8), st.booleans())
def test_stream_processor_survives_any_json(chunks: list[Any], saw_done: bool) -> None:
    check_invariants(run_stream(chunks, saw_done)[0])


KEYS = ["model", "input", "instructions", "tools", "tool_choice", "text", "reasoning", "temperature", "top_p",
        "max_output_tokens", "parallel_tool_calls", "stream", "metadata", "store", "user", "truncation",
        "previous_response_id", "include", "presence_penalty", "frequency_penalty", "top_logprobs", "service_tier",
        "max_tool_calls", "safety_identifier", "prompt_cache_key"]
ITEM_KEYS = ["type", "role", "content", "call_id", "name", "arguments", "output", "id", "status", "namespace",
             "text", "image_url", "summary", "tools", "parameters", "format", "effort", "mode"]
ITEM_VALUES = st.sampled_from(["message", "function_call", "function_call_output", "reasoning", "user", "assistant",
                               "system", "developer", "function", "namespace", "input_text", "output_text",
                               "input_image", "refusal", "json_schema", "json_object", "text", "auto", "required",
                               "web_search", "x", ""])
DOC_VALUE = st.recursive(JSON_SCALARS | ITEM_VALUES,
                         lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.sampled_from(ITEM_KEYS), inner, max_size=5), max_leaves=25)
DOCUMENTS = st.one_of(
    JSON,
    st.dictionaries(st.sampled_from(KEYS), DOC_VALUE, max_size=8),
    st.fixed_dictionaries({"model": st.just("m"), "input": DOC_VALUE},
                          optional={k: DOC_VALUE for k in ("tools", "tool_choice", "text", "reasoning", "instructions")}),
)
CONFIGS = st.builds(UpstreamConfig, max_tokens_param=st.sampled_from(["max_tokens", "max_completion_tokens"]),
                    hosted_tools=st.sampled_from(["drop", "reject"]), send_reasoning_effort=st.booleans(),
                    send_parallel_tool_calls=st.booleans())


@SETTINGS
@given(DOCUMENTS, CONFIGS)
def test_translate_request_raises_only_gateway_errors(document: Any, config: UpstreamConfig) -> None:
    try:
        chat = translate_request(document, config)
    except GatewayError as exc:
        # 404: an item_reference no stored chain resolved (as at OpenAI); everything else is the request's fault.
        assert (exc.status == 400 or exc.status == 404 and "item_reference" in exc.message) and exc.message
        assert exc.param is None or isinstance(exc.param, str)
        return
    assert isinstance(chat, ChatRequest)
    orjson.dumps(chat.body)   # what goes upstream is serialisable...
    orjson.dumps(chat.options.echo)   # ...and so is what the Response echoes
    assert isinstance(chat.body["messages"], list) and chat.body["model"] == document["model"]
