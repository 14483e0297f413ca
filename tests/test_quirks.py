"""Every quirk of shared/spec/upstream-quirks.md, end to end over real HTTP.

scripted upstream (127.0.0.1) → gateway (127.0.0.1) → aiohttp client; each test checks the
captured stream with gateway.check (`assert_valid_stream`) and then the exact text, tool
calls, reasoning, terminal status and usage the client must get. `QUIRK_TESTS` maps each
numbered quirk to its tests; `test_quirk_map_is_complete` fails when a quirk has none.
"""
from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from .conftest import assert_valid_stream
from .helpers import post_stream, stream_reply
from .scripted_upstream import Reply, chunk, error_reply, sse, text_reply, usage

QUIRK_TESTS: dict[int, list[str]] = {
    1: ["test_quirk_01_data_without_space"],
    2: ["test_quirk_02_line_endings"],
    3: ["test_quirk_03_comment_lines"],
    4: ["test_quirk_04_event_retry_id_fields_and_multiline_data"],
    5: ["test_quirk_05_done_without_blank_line", "test_quirk_05_no_done_marker"],
    6: ["test_quirk_06_every_byte_its_own_write", "test_quirk_06_cuts_inside_utf8_and_crlf"],
    7: ["test_quirk_07_azure_filters_and_bursts", "test_quirk_07_azure_content_filter_finish"],
    8: ["test_quirk_08_extra_fields_ignored"],
    9: ["test_quirk_09_eos_finish_reasons", "test_quirk_09_error_finish_reasons",
        "test_quirk_09_empty_finish_reason"],
    10: ["test_quirk_10_null_content_and_repeated_role"],
    11: ["test_quirk_11_finish_reason_on_last_content_chunk"],
    12: ["test_quirk_12_ollama_whole_call_in_one_chunk"],
    13: ["test_quirk_13_gemini_calls_without_index", "test_quirk_13_gemini_thought_signature_round_trip"],
    14: ["test_quirk_14_several_calls_in_one_delta", "test_quirk_14_parallel_calls_all_index_0"],
    15: ["test_quirk_15_empty_argument_fragments"],
    16: ["test_quirk_16_legacy_function_call", "test_quirk_16_legacy_finish_with_tool_calls"],
    17: ["test_quirk_17_mistral_call_id_kept", "test_quirk_17_mistral_ids_normalised_in_history"],
    18: ["test_quirk_18_deepseek_reasoning_content", "test_quirk_18_deepseek_reasoning_sent_back"],
    19: ["test_quirk_19_reasoning_field", "test_quirk_19_openrouter_reasoning_details"],
    20: ["test_quirk_20_inline_think_tags_today", "test_quirk_20_inline_think_tags_parsed"],
    21: ["test_quirk_21_usage_after_finish_chunk"],
    22: ["test_quirk_22_groq_usage"],
    23: ["test_quirk_23_cumulative_usage_last_wins"],
    24: ["test_quirk_24_usage_details"],
    25: ["test_quirk_25_http_error_before_stream", "test_quirk_25_non_json_error_body",
         "test_quirk_25_http_error_after_keepalive_started"],
    26: ["test_quirk_26_inband_error_object", "test_quirk_26_openrouter_error_with_finish"],
    27: ["test_quirk_27_bare_string_and_lm_studio_errors"],
    28: ["test_quirk_28_raw_error_line_without_data"],
    29: ["test_quirk_29_llama_cpp_error_field"],
    30: ["test_quirk_30_drop_mid_stream", "test_quirk_30_abort_mid_stream", "test_quirk_30_silence_forever",
         "test_quirk_30_reset_right_after_done"],
    31: ["test_quirk_31_silence_before_headers", "test_quirk_31_silence_after_headers",
         "test_quirk_31_silence_longer_than_first_byte_timeout"],
}

TOOLS = [{"type": "function", "name": name, "parameters": {"type": "object"}}
         for name in ("get_weather", "get_time", "search")]
USAGE = {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12, "cached_tokens": 0, "reasoning_tokens": 0}


async def run(upstream: Any, gateway: Any, http: Any, *replies: Reply,
              body: dict[str, Any] | None = None) -> tuple[dict[str, Any], bytes]:
    """`stream_reply` with the TOOLS offered."""
    return await stream_reply(upstream, gateway, http, *replies, body={"tools": TOOLS, **(body or {})})


def expect(result: dict[str, Any], *, text: str = "", tool_calls: list[dict[str, Any]] | None = None,
           reasoning: str = "", status: str = "completed", usage: dict[str, Any] | None = USAGE,
           incomplete_reason: str | None = None, error: dict[str, Any] | None = None) -> None:
    """The folded stream equals exactly what the user must receive."""
    got = {k: result[k] for k in ("text", "tool_calls", "reasoning", "status", "usage", "incomplete_reason",
                                  "error")}
    want = {"text": text, "tool_calls": tool_calls or [], "reasoning": reasoning, "status": status,
            "usage": usage, "incomplete_reason": incomplete_reason, "error": error}
    if usage is None:
        got.pop("usage")
        want.pop("usage")
    if error is not None and "message" not in error:
        got["error"] = got["error"] and {"code": got["error"]["code"]}
    assert got == want


def zero_usage() -> dict[str, Any]:
    return {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0, "cached_tokens": 0, "reasoning_tokens": 0}


def text_chunks(*pieces: str, finish: str = "stop") -> list[dict[str, Any]]:
    return ([chunk({"role": "assistant", "content": ""})] + [chunk({"content": p}) for p in pieces]
            + [chunk({}, finish=finish), chunk(choices=False, usage=usage())])


def call(name: str, arguments: str, call_id: str, index: int | None = 0, **extra: Any) -> dict[str, Any]:
    out = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}, **extra}
    if index is not None:
        out["index"] = index
    return out


def fragment(arguments: str, index: int = 0) -> dict[str, Any]:
    return {"index": index, "function": {"arguments": arguments}}


# ---------------------------------------------------------------------------------------------- SSE framing
async def test_quirk_01_data_without_space(upstream, gateway, http):
    """Quirk 1: `data:{...}` without a space after the colon."""
    result, _ = await run(upstream, gateway, http, Reply([sse(*text_chunks("Hel", "lo"), prefix="data:")]))
    expect(result, text="Hello")


@pytest.mark.parametrize("eols", [["\r\n"], ["\r"], ["\n", "\r\n", "\r"], ["\r", "\n", "\r\n"]],
                         ids=["crlf", "cr", "mixed-a", "mixed-b"])
async def test_quirk_02_line_endings(upstream, gateway, http, eols):
    """Quirk 2: CRLF, CR-only and mixed line endings."""
    chunks = text_chunks("Bon", "jour", " à ", "tous")
    framed = b"".join(sse(c, done=False, eol=eols[i % len(eols)]) for i, c in enumerate(chunks))
    framed += sse(done=True, eol=eols[len(chunks) % len(eols)])
    result, _ = await run(upstream, gateway, http, Reply([framed]))
    expect(result, text="Bonjour à tous")


async def test_quirk_03_comment_lines(upstream, gateway, http):
    """Quirk 3: comment lines are never data and never forwarded."""
    comments = [": ping - 2026-05-01 10:00:00\n\n", ": OPENROUTER PROCESSING\n\n", ": keep-alive\n", ":\n\n",
                ": x-latency-ms=337\n\n"]
    chunks = text_chunks("a", "b", "c", "d")
    steps: list[Any] = [comments[0].encode(), comments[1].encode()]
    for i, c in enumerate(chunks):
        steps.append(comments[i % len(comments)].encode() + sse(c, done=False))
    steps.append(b": x-latency-ms=337\n" + sse())
    result, raw = await run(upstream, gateway, http, Reply(steps))
    expect(result, text="abcd")
    for word in (b"OPENROUTER", b"x-latency", b"2026-05-01"):
        assert word not in raw


async def test_quirk_04_event_retry_id_fields_and_multiline_data(upstream, gateway, http):
    """Quirk 4: `event:` lines, blocks with only `retry:`/`id:`, one JSON payload over two `data:` lines."""
    first, *rest = text_chunks("one", " two", " three")
    split = json.dumps(rest[1]).replace(', "choices"', ',\ndata: "choices"', 1)
    assert "\ndata: " in split
    body = (b"retry: 3000\n\n" + b"event: message\n" + sse(first, done=False) + b"id: 7\n\n"
            + b"event: completion\nid: 8\n" + sse(rest[0], done=False)
            + f"data: {split}\n\n".encode() + b"id: 9\nretry: 10\n\n"
            + b"".join(b"event: chunk\n" + sse(c, done=False) for c in rest[2:]) + sse())
    result, _ = await run(upstream, gateway, http, Reply([body]))
    expect(result, text="one two three")


async def test_quirk_05_done_without_blank_line(upstream, gateway, http):
    """Quirk 5: `data: [DONE]` with no trailing blank line (and no line end at all)."""
    body = sse(*text_chunks("fine"), done=False) + b"data: [DONE]"
    result, _ = await run(upstream, gateway, http, Reply([body]))
    expect(result, text="fine")


async def test_quirk_05_no_done_marker(upstream, gateway, http):
    """Quirk 5: no `[DONE]` at all; the finish_reason ends the response normally; the last chunk has no blank line."""
    body = sse(*text_chunks("fine"), done=False).rstrip(b"\n") + b"\n"
    result, _ = await run(upstream, gateway, http, Reply([body]))
    expect(result, text="fine")


UTF8_TEXT = ["Grüße ", "aus ", "Köln — ", "日本語", " 🎉🇫🇷", " ok"]
UTF8_ARGS = '{"city": "São Paulo", "note": "naïve 😀 ✓"}'


def utf8_stream(eol: str) -> bytes:
    chunks = [chunk({"role": "assistant", "content": ""})] + [chunk({"content": p}) for p in UTF8_TEXT]
    chunks.append(chunk({"tool_calls": [call("search", "", "call_utf8")]}))
    chunks += [chunk({"tool_calls": [fragment(UTF8_ARGS[i:i + 9])]}) for i in range(0, len(UTF8_ARGS), 9)]
    chunks += [chunk({}, finish="tool_calls"), chunk(choices=False, usage=usage())]
    # ensure_ascii=False: the multi-byte characters travel as raw UTF-8, as most servers send them;
    # every payload is cut over two `data:` lines, so a line end read twice would split an event.
    payloads = [json.dumps(c, ensure_ascii=False).replace(", ", f",{eol}data: ", 1) for c in chunks]
    return b"".join(f"data: {p}{eol}{eol}".encode() for p in payloads) + f"data: [DONE]{eol}{eol}".encode()


def expect_utf8(result: dict[str, Any]) -> None:
    expect(result, text="".join(UTF8_TEXT),
           tool_calls=[{"name": "search", "arguments": UTF8_ARGS, "call_id": "call_utf8"}])


async def test_quirk_06_every_byte_its_own_write(upstream, gateway, http):
    """Quirk 6: the stream written one byte per network write (cuts at every position)."""
    body = utf8_stream("\r\n")
    steps: list[Any] = []
    for i in range(len(body)):
        steps.append(body[i:i + 1])
        if i % 64 == 0:
            steps.append(0.001)  # let the gateway read between writes so cuts really reach the decoder
    result, _ = await run(upstream, gateway, http, Reply(steps))
    expect_utf8(result)


async def test_quirk_06_cuts_inside_utf8_and_crlf(upstream, gateway, http):
    """Quirk 6: a pause inside every multi-byte character and between every CR and LF."""
    body = utf8_stream("\r\n")
    cuts = [i for i in range(1, len(body)) if (0x80 <= body[i] < 0xC0) or body[i - 1:i + 1] == b"\r\n"]
    assert len(cuts) > 40
    steps: list[Any] = []
    start = 0
    for cut in cuts:
        steps += [body[start:cut], 0.002]
        start = cut
    steps.append(body[start:])
    result, _ = await run(upstream, gateway, http, Reply(steps))
    expect_utf8(result)


# ---------------------------------------------------------------------------------------------- content and finish
def azure_chunks(finish: str) -> list[dict[str, Any]]:
    filters = {"hate": {"filtered": False, "severity": "safe"}, "violence": {"filtered": False, "severity": "safe"}}
    first = {"id": "", "object": "", "created": 0, "model": "", "choices": [],
             "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": filters}]}
    out = [first, chunk({"role": "assistant", "content": ""}, content_filter_results={})]
    for burst in ("The quick brown fox ", "jumps over ", "the lazy dog."):
        out.append(chunk({"content": burst}))
        out[-1]["choices"][0]["content_filter_results"] = filters
    out.append(chunk({}, finish=finish))
    out[-1]["choices"][0]["content_filter_results"] = {}
    out.append(chunk(choices=False, usage=usage(11, 9)))
    return out


async def test_quirk_07_azure_filters_and_bursts(upstream, gateway, http):
    """Quirk 7: Azure's empty first chunk, filter results, burst text."""
    result, _ = await run(upstream, gateway, http, Reply([sse(*azure_chunks("stop"))]))
    expect(result, text="The quick brown fox jumps over the lazy dog.",
           usage={**USAGE, "input_tokens": 11, "output_tokens": 9, "total_tokens": 20})


async def test_quirk_07_azure_content_filter_finish(upstream, gateway, http):
    """Quirk 7: `finish_reason: "content_filter"` → response.incomplete(content_filter), text kept."""
    result, _ = await run(upstream, gateway, http, Reply([sse(*azure_chunks("content_filter"))]))
    expect(result, text="The quick brown fox jumps over the lazy dog.", status="incomplete",
           incomplete_reason="content_filter",
           usage={**USAGE, "input_tokens": 11, "output_tokens": 9, "total_tokens": 20})


async def test_quirk_08_extra_fields_ignored(upstream, gateway, http):
    """Quirk 8: `obfuscation` padding (OpenAI), `timings` (llama.cpp), `x_groq` (Groq) are ignored."""
    chunks = [chunk({"role": "assistant", "content": "", "obfuscation": "a8Xk"}, x_groq={"id": "req_01abc"}),
              chunk({"content": "Hi", "obfuscation": "Q"}),
              chunk({"content": " there", "obfuscation": "zz9"}, timings={"predicted_ms": 12.5, "predicted_n": 2}),
              chunk({}, finish="stop", timings={"prompt_n": 5, "predicted_n": 7}),
              chunk(choices=False, usage=usage(), obfuscation="x")]
    result, raw = await run(upstream, gateway, http, Reply([sse(*chunks)]))
    expect(result, text="Hi there")
    assert b"obfuscation" not in raw and b"predicted_ms" not in raw


async def test_quirk_09_eos_finish_reasons(upstream, gateway, http):
    """Quirk 9: `eos` and `eos_token` count as stop."""
    result, _ = await run(upstream, gateway, http, Reply([sse(*text_chunks("a", finish="eos"))]),
                          Reply([sse(*text_chunks("b", finish="eos_token"), done=False)]))
    expect(result, text="a")
    response, raw = await post_stream(http, gateway, {})
    expect(assert_valid_stream(raw), text="b")


@pytest.mark.parametrize("reason", ["error", "insufficient_system_resource"])
async def test_quirk_09_error_finish_reasons(upstream, gateway, http, reason):
    """Quirk 9: `error` / `insufficient_system_resource` finish → response.failed; partial text kept."""
    result, _ = await run(upstream, gateway, http, Reply([sse(*text_chunks("partial", finish=reason))]))
    expect(result, text="partial", status="failed", usage={**zero_usage()},
           error={"code": "upstream_error", "message": f"the upstream finished with reason {reason!r}"})


async def test_quirk_09_empty_finish_reason(upstream, gateway, http):
    """Quirk 9: `finish_reason: ""` is no finish; `[DONE]` then ends the response normally."""
    chunks = [chunk({"content": "x"}, finish=""), chunk({"content": "y"}, finish=""),
              chunk(choices=False, usage=usage())]
    result, _ = await run(upstream, gateway, http, Reply([sse(*chunks)]))
    expect(result, text="xy")


async def test_quirk_10_null_content_and_repeated_role(upstream, gateway, http):
    """Quirk 10: `content: null` on the opening chunk (llama.cpp); role on every chunk (Ollama)."""
    chunks = [chunk({"role": "assistant", "content": None})]
    chunks += [chunk({"role": "assistant", "content": p}) for p in ("Why", " hello", "", " there")]
    chunks += [chunk({"role": "assistant", "content": None}, finish="stop"), chunk(choices=False, usage=usage())]
    result, _ = await run(upstream, gateway, http, Reply([sse(*chunks)]))
    expect(result, text="Why hello there")


async def test_quirk_11_finish_reason_on_last_content_chunk(upstream, gateway, http):
    """Quirk 11: the last content chunk carries finish_reason (Ollama); its text is not lost."""
    chunks = [chunk({"role": "assistant", "content": "The end"}),
              chunk({"role": "assistant", "content": " is near."}, finish="stop"),
              chunk(choices=False, usage=usage())]
    result, _ = await run(upstream, gateway, http, Reply([sse(*chunks, done=False)]))
    expect(result, text="The end is near.")


# ---------------------------------------------------------------------------------------------- tool calls
async def test_quirk_12_ollama_whole_call_in_one_chunk(upstream, gateway, http):
    """Quirk 12: the whole call, arguments complete, in one chunk; Ollama's id shape."""
    args = '{"city":"Berlin","unit":"celsius"}'
    chunks = [chunk({"role": "assistant", "content": "", "tool_calls": [call("get_weather", args, "call_k3v9x0qa")]}),
              chunk({"role": "assistant", "content": ""}, finish="tool_calls"), chunk(choices=False, usage=usage())]
    result, _ = await run(upstream, gateway, http, Reply([sse(*chunks)]))
    expect(result, tool_calls=[{"name": "get_weather", "arguments": args, "call_id": "call_k3v9x0qa"}])


GEMINI_SIG = {"google": {"thought_signature": "CiQBVKhc7Ms3GZ1/AAECAwQ="}}


def gemini_reply() -> Reply:
    chunks = [chunk({"role": "assistant", "tool_calls": [
                  call("get_weather", '{"city":"Paris"}', "function-call-1", index=None, extra_content=GEMINI_SIG)]}),
              chunk({"tool_calls": [call("get_time", '{"tz":"Europe/Paris"}', "function-call-2", index=None)]}),
              chunk({}, finish="stop"), chunk(choices=False, usage=usage())]
    return Reply([sse(*chunks)])


GEMINI_CALLS = [{"name": "get_weather", "arguments": '{"city":"Paris"}', "call_id": "function-call-1"},
                {"name": "get_time", "arguments": '{"tz":"Europe/Paris"}', "call_id": "function-call-2"}]


async def test_quirk_13_gemini_calls_without_index(upstream, gateway, http):
    """Quirk 13: index-less whole calls, the tool turn finishing with "stop"."""
    result, _ = await run(upstream, gateway, http, gemini_reply())
    expect(result, tool_calls=GEMINI_CALLS)


def final_output(raw: bytes) -> list[dict[str, Any]]:
    for line in raw.decode().splitlines():
        if line.startswith("data: ") and '"response.completed"' in line:
            return json.loads(line[6:])["response"]["output"]
    raise AssertionError("no response.completed")


async def test_quirk_13_gemini_thought_signature_round_trip(upstream, gateway, http):
    """Quirk 13: the thought_signature must reach the upstream again with the call on the next turn."""
    result, raw = await run(upstream, gateway, http, gemini_reply())
    expect(result, tool_calls=GEMINI_CALLS)
    history = final_output(raw) + [{"type": "function_call_output", "call_id": c["call_id"], "output": "ok"}
                                    for c in GEMINI_CALLS]
    await run(upstream, gateway, http, text_reply("Sunny."), body={"input": history})
    sent = upstream.requests[-1].body["messages"]
    calls = next(m for m in sent if m["role"] == "assistant")["tool_calls"]
    assert calls[0]["extra_content"] == GEMINI_SIG


async def test_quirk_14_several_calls_in_one_delta(upstream, gateway, http):
    """Quirk 14: several complete calls in a single delta."""
    calls = [call("get_weather", '{"city":"Oslo"}', "call_1", 0), call("get_weather", '{"city":"Rome"}', "call_2", 1),
             call("get_time", "{}", "call_3", 2)]
    chunks = [chunk({"role": "assistant", "tool_calls": calls}), chunk({}, finish="tool_calls"),
              chunk(choices=False, usage=usage())]
    result, _ = await run(upstream, gateway, http, Reply([sse(*chunks)]))
    expect(result, tool_calls=[{"name": "get_weather", "arguments": '{"city":"Oslo"}', "call_id": "call_1"},
                               {"name": "get_weather", "arguments": '{"city":"Rome"}', "call_id": "call_2"},
                               {"name": "get_time", "arguments": "{}", "call_id": "call_3"}])


async def test_quirk_14_parallel_calls_all_index_0(upstream, gateway, http):
    """Quirk 14: parallel calls all labelled `index: 0`, told apart by their ids; fragments follow each."""
    chunks = [chunk({"role": "assistant", "content": "Checking both."}),
              chunk({"tool_calls": [call("get_weather", "", "call_a", 0)]}),
              chunk({"tool_calls": [fragment('{"city":')]}), chunk({"tool_calls": [fragment('"Oslo"}')]}),
              chunk({"tool_calls": [call("get_weather", '{"city":"Rome"}', "call_b", 0)]}),
              chunk({"tool_calls": [call("get_time", "", "call_c", 0)]}),
              chunk({"tool_calls": [fragment('{"tz":"UTC"}')]}),
              chunk({}, finish="tool_calls"), chunk(choices=False, usage=usage())]
    result, _ = await run(upstream, gateway, http, Reply([sse(*chunks)]))
    expect(result, text="Checking both.",
           tool_calls=[{"name": "get_weather", "arguments": '{"city":"Oslo"}', "call_id": "call_a"},
                       {"name": "get_weather", "arguments": '{"city":"Rome"}', "call_id": "call_b"},
                       {"name": "get_time", "arguments": '{"tz":"UTC"}', "call_id": "call_c"}])


async def test_quirk_15_empty_argument_fragments(upstream, gateway, http):
    """Quirk 15: empty-string argument fragments mid-call change nothing."""
    pieces = ['{"q"', "", ': "ru', "", "", 'st"}']
    chunks = [chunk({"role": "assistant", "content": None, "tool_calls": [call("search", "", "call_q")]})]
    chunks += [chunk({"tool_calls": [fragment(p)]}) for p in pieces]
    chunks += [chunk({}, finish="tool_calls"), chunk(choices=False, usage=usage())]
    result, raw = await run(upstream, gateway, http, Reply([sse(*chunks)]))
    expect(result, tool_calls=[{"name": "search", "arguments": '{"q": "rust"}', "call_id": "call_q"}])
    assert b'"delta":""' not in raw


async def test_quirk_16_legacy_function_call(upstream, gateway, http):
    """Quirk 16: legacy `delta.function_call` (name, then fragments), finish "function_call"."""
    chunks = [chunk({"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": ""}})]
    chunks += [chunk({"function_call": {"arguments": p}}) for p in ('{"ci', 'ty": ', '"Lima"}')]
    chunks += [chunk({}, finish="function_call"), chunk(choices=False, usage=usage())]
    result, _ = await run(upstream, gateway, http, Reply([sse(*chunks)]))
    [got] = result["tool_calls"]
    assert got["call_id"].startswith("call_")
    expect(result, tool_calls=[{"name": "get_weather", "arguments": '{"city": "Lima"}', "call_id": got["call_id"]}])


async def test_quirk_16_legacy_finish_with_tool_calls(upstream, gateway, http):
    """Quirk 16: `tool_calls` deltas closed by the legacy finish reason "function_call"."""
    chunks = [chunk({"tool_calls": [call("get_time", "", "call_t")]}), chunk({"tool_calls": [fragment('{"tz":')]}),
              chunk({"tool_calls": [fragment('"UTC"}')]}), chunk({}, finish="function_call"),
              chunk(choices=False, usage=usage())]
    result, _ = await run(upstream, gateway, http, Reply([sse(*chunks)]))
    expect(result, tool_calls=[{"name": "get_time", "arguments": '{"tz":"UTC"}', "call_id": "call_t"}])


async def test_quirk_17_mistral_call_id_kept(upstream, gateway, http):
    """Quirk 17: a Mistral 9-character id comes through and goes back upstream unchanged on the next turn."""
    chunks = [chunk({"role": "assistant", "content": "", "tool_calls": [call("search", '{"q":"tides"}', "D681PevKs")]}),
              chunk({}, finish="tool_calls"), chunk(choices=False, usage=usage())]
    result, raw = await run(upstream, gateway, http, Reply([sse(*chunks)]))
    expect(result, tool_calls=[{"name": "search", "arguments": '{"q":"tides"}', "call_id": "D681PevKs"}])
    history = final_output(raw) + [{"type": "function_call_output", "call_id": "D681PevKs", "output": "high"}]
    result, _ = await run(upstream, gateway, http, text_reply("High tide."), body={"input": history})
    expect(result, text="High tide.")
    messages = upstream.requests[-1].body["messages"]
    assert messages[-2]["tool_calls"][0]["id"] == "D681PevKs"
    assert messages[-1] == {"role": "tool", "tool_call_id": "D681PevKs", "content": "high"}


async def test_quirk_17_mistral_ids_normalised_in_history(upstream, make_gateway, http):
    """Quirk 17: history with foreign call ids reaches a Mistral upstream with consistent 9-character ids."""
    gateway = await make_gateway(upstream={"tool_call_id_style": "mistral"})
    history = [{"type": "message", "role": "user", "content": "tides?"},
               {"type": "function_call", "call_id": "call_abc123def456", "name": "search", "arguments": "{}"},
               {"type": "function_call_output", "call_id": "call_abc123def456", "output": "high"}]
    await run(upstream, gateway, http, text_reply("High tide."), body={"input": history})
    messages = upstream.requests[-1].body["messages"]
    sent_id = messages[-2]["tool_calls"][0]["id"]
    assert re.fullmatch(r"[A-Za-z0-9]{9}", sent_id)
    assert messages[-1]["tool_call_id"] == sent_id


# ---------------------------------------------------------------------------------------------- reasoning
def deepseek_reply() -> Reply:
    chunks = [chunk({"role": "assistant", "content": None, "reasoning_content": ""})]
    chunks += [chunk({"content": None, "reasoning_content": p}) for p in ("The user ", "greets me; ", "greet back.")]
    chunks += [chunk({"content": p, "reasoning_content": None}) for p in ("Hello", "!")]
    chunks.append(chunk({"content": "", "reasoning_content": None}, finish="stop"))
    chunks.append(chunk(choices=False, usage=usage(20, 30, prompt_cache_hit_tokens=16, prompt_cache_miss_tokens=4,
                                                    completion_tokens_details={"reasoning_tokens": 25})))
    return Reply([sse(*chunks)])


async def test_quirk_18_deepseek_reasoning_content(upstream, gateway, http):
    """Quirk 18: `reasoning_content` (and null) before the content; prompt_cache_hit_tokens → cached_tokens."""
    result, _ = await run(upstream, gateway, http, deepseek_reply())
    expect(result, text="Hello!", reasoning="The user greets me; greet back.",
           usage={"input_tokens": 20, "output_tokens": 30, "total_tokens": 50, "cached_tokens": 16,
                  "reasoning_tokens": 25})


async def test_quirk_18_deepseek_reasoning_sent_back(upstream, gateway, http):
    """Quirk 18: the previous turn's reasoning goes back upstream on the assistant message."""
    _, raw = await run(upstream, gateway, http, deepseek_reply())
    history = [{"type": "message", "role": "user", "content": "hi"}, *final_output(raw),
               {"type": "message", "role": "user", "content": "and again"}]
    await run(upstream, gateway, http, text_reply("Hello again!"), body={"input": history})
    assistant = next(m for m in upstream.requests[-1].body["messages"] if m["role"] == "assistant")
    assert assistant["content"] == "Hello!"
    assert assistant["reasoning_content"] == "The user greets me; greet back."


async def test_quirk_19_reasoning_field(upstream, gateway, http):
    """Quirk 19: `delta.reasoning` (vLLM, Groq, Ollama), then text and a tool call."""
    chunks = [chunk({"role": "assistant", "content": "", "reasoning": "Need "}), chunk({"reasoning": "the weather."}),
              chunk({"content": "Let me check."}),
              chunk({"tool_calls": [call("get_weather", '{"city":"Nice"}', "call_w")]}),
              chunk({}, finish="tool_calls"), chunk(choices=False, usage=usage())]
    result, _ = await run(upstream, gateway, http, Reply([sse(*chunks)]))
    expect(result, text="Let me check.", reasoning="Need the weather.",
           tool_calls=[{"name": "get_weather", "arguments": '{"city":"Nice"}', "call_id": "call_w"}])


async def test_quirk_19_openrouter_reasoning_details(upstream, gateway, http):
    """Quirk 19: OpenRouter sends `reasoning` and `reasoning_details` with the same text: counted once."""
    def both(text: str) -> dict[str, Any]:
        return {"content": "", "reasoning": text,
                "reasoning_details": [{"type": "reasoning.text", "text": text, "format": "unknown", "index": 0}]}
    chunks = [chunk({"role": "assistant", **both("Two plus ")}), chunk(both("two.")),
              chunk({"content": "4"}), chunk({}, finish="stop", provider="OpenRouterTest"),
              chunk(choices=False, usage=usage())]
    result, _ = await run(upstream, gateway, http, Reply([b": OPENROUTER PROCESSING\n\n" + sse(*chunks)]))
    expect(result, text="4", reasoning="Two plus two.")


THINK_PIECES = ["<th", "ink>", "Let me ", "think", "</thi", "nk>", "\n\nThe answer", " is 4."]


async def test_quirk_20_inline_think_tags_today(upstream, gateway, http):
    """Quirk 20 (today): tags split across chunks do not break the stream; the answer arrives."""
    result, _ = await run(upstream, gateway, http, text_reply(*THINK_PIECES))
    assert result["status"] == "completed" and result["usage"] == USAGE
    assert result["text"].endswith("The answer is 4.")
    assert "Let me think" in result["text"] + result["reasoning"]


async def test_quirk_20_inline_think_tags_parsed(upstream, gateway, http):
    """Quirk 20: inline `<think>…</think>` becomes a reasoning item, the rest the answer."""
    result, _ = await run(upstream, gateway, http, text_reply(*THINK_PIECES))
    expect(result, text="The answer is 4.", reasoning="Let me think")


# ---------------------------------------------------------------------------------------------- usage
async def test_quirk_21_usage_after_finish_chunk(upstream, gateway, http):
    """Quirk 21: usage arrives in a `choices: []` chunk well after the finish chunk."""
    chunks = text_chunks("late", " usage")
    steps = [sse(*chunks[:-1], done=False), 0.3, sse(chunks[-1], done=False), 0.2, sse()]
    result, _ = await run(upstream, gateway, http, Reply(steps))
    expect(result, text="late usage")


async def test_quirk_22_groq_usage(upstream, gateway, http):
    """Quirk 22: usage only under `x_groq.usage` on the last chunk."""
    groq_usage = {"queue_time": 0.02, "prompt_tokens": 40, "prompt_time": 0.01, "completion_tokens": 3,
                  "completion_time": 0.004, "total_tokens": 43, "total_time": 0.014}
    chunks = [chunk({"role": "assistant", "content": ""}, x_groq={"id": "req_01j"}), chunk({"content": "Yes."}),
              chunk({}, finish="stop", x_groq={"id": "req_01j", "usage": groq_usage})]
    result, _ = await run(upstream, gateway, http, Reply([sse(*chunks)]))
    expect(result, text="Yes.", usage={**USAGE, "input_tokens": 40, "output_tokens": 3, "total_tokens": 43})


async def test_quirk_23_cumulative_usage_last_wins(upstream, gateway, http):
    """Quirk 23: cumulative usage on every chunk (SiliconFlow, continuous_usage_stats): the last, never a sum."""
    pieces = ["one", " two", " three", " four"]
    chunks = [chunk({"role": "assistant", "content": ""}, usage=usage(9, 0))]
    chunks += [chunk({"content": p}, usage=usage(9, i + 1)) for i, p in enumerate(pieces)]
    chunks += [chunk({}, finish="stop", usage=usage(9, 5)), chunk(choices=False, usage=usage(9, 5))]
    result, _ = await run(upstream, gateway, http, Reply([sse(*chunks)]))
    expect(result, text="one two three four", usage={**USAGE, "input_tokens": 9, "output_tokens": 5,
                                                      "total_tokens": 14})


async def test_quirk_24_usage_details(upstream, gateway, http):
    """Quirk 24: completion_tokens_details.reasoning_tokens and prompt_tokens_details.cached_tokens."""
    use = usage(100, 50, prompt_tokens_details={"cached_tokens": 64, "audio_tokens": 0},
                completion_tokens_details={"reasoning_tokens": 32, "accepted_prediction_tokens": 0})
    result, _ = await run(upstream, gateway, http, text_reply("ok", use=use))
    expect(result, text="ok", usage={"input_tokens": 100, "output_tokens": 50, "total_tokens": 150,
                                     "cached_tokens": 64, "reasoning_tokens": 32})


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("status,code,headers", [
    (400, "context_length_exceeded", {}), (401, "invalid_api_key", {}), (404, "model_not_found", {}),
    (429, None, {"Retry-After": "17"}), (500, None, {}), (503, None, {})])
async def test_quirk_25_http_error_before_stream(upstream, gateway, http, status, code, headers):
    """Quirk 25: HTTP 4xx/5xx before any stream → same status, upstream message, OpenAI envelope; Retry-After kept."""
    message = f"upstream says no ({status})"
    upstream.enqueue(error_reply(status, message, code, **headers))
    response, raw = await post_stream(http, gateway, {})
    assert response.status == status
    assert response.content_type == "application/json"
    error = json.loads(raw)["error"]
    assert error["message"] == message
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == (code or ("rate_limit_exceeded" if status == 429 else "upstream_error"))
    assert response.headers.get("Retry-After") == headers.get("Retry-After")
    assert len(upstream.requests) == 1


async def test_quirk_25_non_json_error_body(upstream, gateway, http):
    """Quirk 25: a proxy's plain-text 502 page still becomes an OpenAI envelope with the status."""
    upstream.enqueue(Reply([b"Bad Gateway: upstream connect error"], status=502,
                           headers={"Content-Type": "text/plain"}))
    response, raw = await post_stream(http, gateway, {})
    assert response.status == 502
    error = json.loads(raw)["error"]
    assert "Bad Gateway: upstream connect error" in error["message"]


async def test_quirk_26_inband_error_object(upstream, gateway, http):
    """Quirk 26: `data: {"error": {...}}` inside HTTP 200 (vLLM engine failure), then `[DONE]`."""
    chunks = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Partial"}),
              {"error": {"message": "EngineCore encountered an issue.", "type": "InternalServerError", "code": 500}}]
    result, _ = await run(upstream, gateway, http, Reply([sse(*chunks)]))
    expect(result, text="Partial", status="failed", usage=zero_usage(),
           error={"code": "upstream_error", "message": "EngineCore encountered an issue."})


async def test_quirk_26_openrouter_error_with_finish(upstream, gateway, http):
    """Quirk 26: OpenRouter's top-level `error` with a choice finishing "error": the upstream's message wins."""
    bad = chunk({"content": ""}, finish="error",
                error={"message": "Provider returned error", "code": 502, "metadata": {"provider_name": "X"}})
    chunks = [chunk({"role": "assistant", "content": "So far"}), bad]
    result, _ = await run(upstream, gateway, http, Reply([sse(*chunks, done=False)]))
    expect(result, text="So far", status="failed", usage=zero_usage(),
           error={"code": "upstream_error", "message": "Provider returned error"})


@pytest.mark.parametrize("payload,message", [
    ({"error": "Model has unloaded or crashed."}, "Model has unloaded or crashed."),
    ('"Model has unloaded or crashed."', "Model has unloaded or crashed."),
    ({"error": {"type": "model_error"}, "message": "Context overflow: 5000 > 4096"}, "Context overflow: 5000 > 4096"),
    ({"error": "Error rendering prompt", "message": "Error rendering prompt"}, "Error rendering prompt"),
], ids=["error-string", "bare-json-string", "lm-studio-message", "lm-studio-both"])
async def test_quirk_27_bare_string_and_lm_studio_errors(upstream, gateway, http, payload, message):
    """Quirk 27: the error as a bare string; LM Studio's `error` plus top-level `message`."""
    chunks = [chunk({"role": "assistant", "content": "Hm"}), payload]
    result, _ = await run(upstream, gateway, http, Reply([sse(*chunks)]))
    expect(result, text="Hm", status="failed", usage=zero_usage(), error={"code": "upstream_error", "message": message})


@pytest.mark.parametrize("tail", [b"\n", b""], ids=["newline", "no-newline"])
async def test_quirk_28_raw_error_line_without_data(upstream, gateway, http, tail):
    """Quirk 28: a raw error JSON line with no `data:` prefix inside a 200 stream, then close."""
    raw_error = b'{"error": {"message": "upstream request timeout", "type": "proxy_error", "code": 504}}'
    body = sse(*text_chunks("Start")[:2], done=False) + raw_error + tail
    result, _ = await run(upstream, gateway, http, Reply([body]))
    expect(result, text="Start", status="failed", usage=zero_usage(),
           error={"code": "upstream_error", "message": "upstream request timeout"})


@pytest.mark.parametrize("field,message,code", [
    (b'error: {"code": 500, "message": "slot unavailable", "type": "server_error"}', "slot unavailable",
     "server_error"),
    (b"error: prompt too long for the context window", "prompt too long for the context window",
     "context_length_exceeded"),
], ids=["json", "text"])
async def test_quirk_29_llama_cpp_error_field(upstream, gateway, http, field, message, code):
    """Quirk 29: old llama.cpp's non-standard `error:` SSE field followed by `[DONE]`."""
    body = sse(*text_chunks("Sure")[:2], done=False) + field + b"\n\n" + sse()
    result, _ = await run(upstream, gateway, http, Reply([body]))
    expect(result, text="Sure", status="failed", usage=zero_usage(),
           error={"code": code, "message": message})


# ---------------------------------------------------------------------------------------------- connection faults
def truncated_body() -> bytes:
    return sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "Half a sent"}),
               chunk({"tool_calls": [call("search", '{"q": "hal', "call_h")]}), done=False)


async def test_quirk_30_drop_mid_stream(upstream, gateway, http):
    """Quirk 30: the upstream closes mid-stream with no finish_reason and no `[DONE]` → upstream_truncated."""
    result, _ = await run(upstream, gateway, http, Reply([truncated_body()]))
    expect(result, text="Half a sent", status="failed", usage=zero_usage(),
           tool_calls=[{"name": "search", "arguments": '{"q": "hal', "call_id": "call_h"}],
           error={"code": "upstream_truncated"})


async def test_quirk_30_abort_mid_stream(upstream, gateway, http):
    """Quirk 30: the connection is reset mid-stream → response.failed, what arrived is kept (also the bytes
    that arrived together with the reset)."""
    result, _ = await run(upstream, gateway, http, Reply([truncated_body()], end="abort"))
    expect(result, text="Half a sent", status="failed", usage=zero_usage(),
           tool_calls=[{"name": "search", "arguments": '{"q": "hal', "call_id": "call_h"}],
           error={"code": "upstream_disconnected"})


async def test_quirk_30_silence_forever(upstream, make_gateway, http):
    """Quirk 30: content then silence forever → response.failed(upstream_timeout) after idle_timeout."""
    gateway = await make_gateway(upstream={"idle_timeout": 0.5})
    result, _ = await run(upstream, gateway, http, Reply([truncated_body()], end="hang"))
    expect(result, text="Half a sent", status="failed", usage=zero_usage(),
           tool_calls=[{"name": "search", "arguments": '{"q": "hal', "call_id": "call_h"}],
           error={"code": "upstream_timeout", "message": "the upstream sent nothing for 0.5s"})
    for _ in range(100):  # the gateway hung up on the silent upstream
        if upstream.disconnects:
            break
        await asyncio.sleep(0.02)
    assert upstream.disconnects == 1


def comment_lines_before_output(raw: bytes) -> int:
    lines = raw.decode().splitlines()
    first_output = next(i for i, line in enumerate(lines) if "response.output_item.added" in line)
    return sum(1 for line in lines[:first_output] if line.startswith(":"))


async def test_quirk_31_silence_before_headers(upstream, make_gateway, http):
    """Quirk 31: no status line for a long while: the client gets the stream start and `:` keep-alives."""
    gateway = await make_gateway(keepalive_interval=0.2, upstream={"first_byte_timeout": 2})
    result, raw = await run(upstream, gateway, http, text_reply("Finally", " here", delay_headers=1.2))
    expect(result, text="Finally here")
    assert comment_lines_before_output(raw) >= 3


async def test_quirk_31_silence_after_headers(upstream, make_gateway, http):
    """Quirk 31: headers at once, then a long silence (once with upstream pings, once without)."""
    gateway = await make_gateway(keepalive_interval=0.2, upstream={"first_byte_timeout": 2, "idle_timeout": 0.5})
    quiet = Reply([1.2, sse(*text_chunks("Finally", " here"))])
    pinging = Reply([b": ping\n\n", 0.4, b": ping\n\n", 0.4, b": ping\n\n", 0.4, sse(*text_chunks("Again"))])
    result, raw = await run(upstream, gateway, http, quiet)
    expect(result, text="Finally here")
    assert comment_lines_before_output(raw) >= 3
    result, raw = await run(upstream, gateway, http, pinging)
    expect(result, text="Again")
    assert comment_lines_before_output(raw) >= 3


async def test_quirk_31_silence_longer_than_first_byte_timeout(upstream, make_gateway, http):
    """Quirk 31: past first_byte_timeout the started stream ends with response.failed(upstream_timeout)."""
    gateway = await make_gateway(keepalive_interval=0.2, upstream={"first_byte_timeout": 0.8})
    result, raw = await run(upstream, gateway, http, text_reply("too late", delay_headers=3))
    expect(result, status="failed", usage=zero_usage(),
           error={"code": "upstream_timeout", "message": "the upstream did not answer within 0.8s"})
    assert raw.count(b"\n:") + raw.startswith(b":") >= 2


async def test_quirk_25_http_error_after_keepalive_started(upstream, make_gateway, http):
    """Quirk 25: the error status arrives after the stream has started (keep-alive): response.failed keeps
    the upstream's message and code."""
    gateway = await make_gateway(keepalive_interval=0.2)
    reply = error_reply(429, "Rate limit reached, try again in 7s", None, **{"Retry-After": "7"})
    reply.delay_headers = 0.6
    result, _ = await run(upstream, gateway, http, reply)
    expect(result, status="failed", usage=zero_usage(),
           error={"code": "rate_limit_exceeded", "message": "Rate limit reached, try again in 7s"})


def test_quirk_map_is_complete():
    """Every quirk 1-31 has at least one test, and every mapped test exists."""
    assert sorted(QUIRK_TESTS) == list(range(1, 32))
    names = {name for tests in QUIRK_TESTS.values() for name in tests}
    assert all(callable(globals().get(name)) for name in names), names - set(globals())
    assert {n for n in globals() if n.startswith("test_quirk_") and n != "test_quirk_map_is_complete"} == names


async def test_quirk_30_reset_right_after_done(upstream, gateway, http):
    """Quirk 30: a complete stream whose connection is reset right after `[DONE]` is still a normal response."""
    result, _ = await run(upstream, gateway, http, Reply([sse(*text_chunks("All", " there"))], end="abort"))
    expect(result, text="All there")
