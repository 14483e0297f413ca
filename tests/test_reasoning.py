"""Reasoning out and back in, provider metadata across turns, Codex's tools (custom tools, call ids).

Unit tests drive the sans-I/O pieces (ThinkSplitter, InputDecoder, Sealer, ResponseStream);
end-to-end tests run scripted upstream → gateway → client over real HTTP, the round trips with
the openai SDK acting as a history-resending client. Every stream passes gateway.check.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai import AsyncOpenAI

from gateway.call_ids import upstream_call_id
from gateway.config import UpstreamConfig, parse_config
from gateway.custom_tools import InputDecoder
from gateway.errors import ConfigError
from gateway.ids import new_id
from gateway.provider_metadata import extra_from_item_id, id_carrying_extra
from gateway.sealing import Sealer, sealer_for
from gateway.think_tags import ThinkSplitter
from gateway.translate import translate_request

from .helpers import drive, new_stream, stream_reply
from .scripted_upstream import Reply, chunk, sse, text_reply, usage

ROOT = Path(__file__).resolve().parents[1]
THOUGHT = "The user greets me; greet back."
SIG = {"google": {"thought_signature": "CiQBVKhc7Ms3GZ1/AAECAwQ=" * 20}}


# ---------------------------------------------------------------------------------------------- helpers
def terminal(raw: bytes) -> dict[str, Any]:
    for line in raw.decode().splitlines():
        if line.startswith("data: ") and '"response.completed"' in line:
            return json.loads(line[6:])["response"]
    raise AssertionError("no response.completed:\n" + raw.decode())


async def post(upstream: Any, gateway: Any, http: Any, reply: Reply | None, body: dict[str, Any]) -> tuple[
        dict[str, Any], dict[str, Any], bytes]:
    """`stream_reply`, also returning the final response: (folded result, final response, raw bytes)."""
    result, raw = await stream_reply(upstream, gateway, http, *([reply] if reply else []), body=body)
    return result, terminal(raw), raw


def sdk(gateway: Any) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key="test-key", max_retries=0)


async def sdk_turn(client: AsyncOpenAI, **body: Any) -> Any:
    """A streamed turn the way Codex makes it; the SDK's own parsing of the final response."""
    stream = await client.responses.create(model="scripted", stream=True, **body)
    final, types = None, []
    async for event in stream:
        types.append(event.type)
        if event.type == "response.completed":
            final = event.response
    assert final is not None, types
    return final


def reasoning_reply(*pieces: str, text: str = "Hello!", field: str = "reasoning_content") -> Reply:
    chunks = [chunk({"role": "assistant", "content": None})]
    chunks += [chunk({field: p}) for p in pieces]
    chunks += [chunk({"content": text}), chunk({}, finish="stop"),
               chunk(choices=False, usage=usage(20, 30, completion_tokens_details={"reasoning_tokens": 25}))]
    return Reply([sse(*chunks)])


def call_chunk(name: str, arguments: str, call_id: str | None, index: int | None = 0, **extra: Any) -> dict[str, Any]:
    call: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}, **extra}
    if call_id is not None:
        call["id"] = call_id
    if index is not None:
        call["index"] = index
    return call


def tool_call_reply(name: str, arguments: str, call_id: str | None = "call_1", reasoning: str | None = None,
                    fragments: list[str] | None = None, **extra: Any) -> Reply:
    chunks = [chunk({"role": "assistant", "content": None})]
    if reasoning:
        chunks.append(chunk({"reasoning_content": reasoning}))
    if fragments is None:
        chunks.append(chunk({"tool_calls": [call_chunk(name, arguments, call_id, **extra)]}))
    else:
        chunks.append(chunk({"tool_calls": [call_chunk(name, "", call_id, **extra)]}))
        chunks += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}) for f in fragments]
    chunks += [chunk({}, finish="tool_calls"), chunk(choices=False, usage=usage())]
    return Reply([sse(*chunks)])


def assistant_messages(upstream: Any) -> list[dict[str, Any]]:
    return [m for m in upstream.requests[-1].body["messages"] if m["role"] == "assistant"]


# ---------------------------------------------------------------------------------------------- 1. reasoning out
REASONING_SHAPES = {
    "reasoning_content": lambda p: {"reasoning_content": p},                              # DeepSeek
    "reasoning": lambda p: {"reasoning": p},                                              # vLLM, Groq, Ollama
    "reasoning_details": lambda p: {"reasoning_details": [{"type": "reasoning.text", "text": p, "index": 0}]},
    "reasoning_and_details": lambda p: {"reasoning": p, "reasoning_details": [                # OpenRouter
        {"type": "reasoning.text", "text": p, "format": "unknown", "index": 0}]},
}


@pytest.mark.parametrize("summary", [None, "auto"])
@pytest.mark.parametrize("shape", sorted(REASONING_SHAPES) + ["think_tags"])
async def test_reasoning_shapes_become_a_reasoning_item(upstream, gateway, http, shape, summary):
    pieces = ["The user ", "greets me; ", "greet back."]
    if shape == "think_tags":
        chunks = [chunk({"role": "assistant", "content": ""})]
        chunks += [chunk({"content": p}) for p in ["<think>", *pieces, "</think>\n\n"]]
    else:
        chunks = [chunk({"role": "assistant", "content": None})]
        chunks += [chunk(REASONING_SHAPES[shape](p)) for p in pieces]
    chunks += [chunk({"content": "Hello"}), chunk({"content": "!"}), chunk({}, finish="stop"),
               chunk(choices=False, usage=usage(20, 30, completion_tokens_details={"reasoning_tokens": 25}))]
    body = {"reasoning": {"effort": "high", "summary": summary}} if summary else {}
    result, final, raw = await post(upstream, gateway, http, Reply([sse(*chunks)]), body)
    assert result["text"] == "Hello!" and result["reasoning"] == THOUGHT
    assert result["usage"]["reasoning_tokens"] == 25
    reasoning, message = final["output"]
    assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_")
    assert message["type"] == "message"
    assert reasoning["content"] == [{"type": "reasoning_text", "text": THOUGHT}]
    assert b"<think" not in raw and b"think>" not in raw
    assert b'"encrypted_content"' not in raw  # not asked for in include
    if summary:
        assert reasoning["summary"] == [{"type": "summary_text", "text": THOUGHT}]
        deltas = [json.loads(line[6:])["delta"] for line in raw.decode().splitlines()
                  if line.startswith("data: ") and "reasoning_summary_text.delta" in line]
        assert "".join(deltas) == THOUGHT
        for event in ("reasoning_summary_part.added", "reasoning_summary_text.done", "reasoning_summary_part.done"):
            assert f"response.{event}".encode() in raw
    else:
        assert reasoning["summary"] == [] and b"reasoning_summary" not in raw


THINK_TEXT = "<think>\nLet me think: 2 < 3, so\n</think>\n\nThe answer is 4."


def split_runs(text: str, cuts: tuple[int, ...]) -> list[str]:
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def think_chunks(pieces: list[str]) -> list[dict[str, Any]]:
    return ([chunk({"role": "assistant", "content": ""})] + [chunk({"content": p}) for p in pieces]
            + [chunk({}, finish="stop"), chunk(choices=False, usage=usage())])


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_think_tags_split_at_every_position(mode):
    """Every single cut and every pair of cuts through the tags: same reasoning, same text, no tag leaks."""
    cut_sets = [(i,) for i in range(1, len(THINK_TEXT))]
    tag_zone = [i for i in range(1, len(THINK_TEXT)) if i < 10 or 26 <= i <= 40]
    cut_sets += [(i, j) for i in tag_zone for j in tag_zone if i < j]
    for cuts in cut_sets:
        stream, _, result = drive(think_chunks(split_runs(THINK_TEXT, cuts)), think_tags=mode)
        assert (result["reasoning"], result["text"]) == ("Let me think: 2 < 3, so", "The answer is 4."), cuts
        assert [item["type"] for item in stream.response["output"]] == ["reasoning", "message"], cuts


async def test_think_tags_every_character_its_own_chunk_end_to_end(upstream, gateway, http):
    result, final, raw = await post(upstream, gateway, http, Reply([sse(*think_chunks(list(THINK_TEXT)))]), {})
    assert result["reasoning"] == "Let me think: 2 < 3, so" and result["text"] == "The answer is 4."
    assert b"think>" not in raw


@pytest.mark.parametrize("mode, text, want_reasoning, want_text", [
    ("auto", "Use <think> tags like <think>this</think>.", "", "Use <think> tags like <think>this</think>."),
    ("on", "Plan: <think>hidden</think> done.", "hidden", "Plan: done."),
    ("off", "<think>shown</think>answer", "", "<think>shown</think>answer"),
    ("auto", "  <think>lead</think> rest", "lead", "rest"),
    ("auto", "<think>never closed", "never closed", ""),
    ("auto", "<thi", "", "<thi"),
    ("on", "a < b and a <thin", "", "a < b and a <thin"),
])
def test_think_tag_modes(mode, text, want_reasoning, want_text):
    for size in (1, 3, len(text)):
        pieces = [text[i:i + size] for i in range(0, len(text), size)]
        _, _, result = drive(think_chunks(pieces), think_tags=mode)
        assert (result["reasoning"], result["text"]) == (want_reasoning, want_text), (mode, size)


def test_think_splitter_is_dropped_after_an_ordinary_start():
    """auto: once the content did not start with <think>, nothing is split any more (hot path)."""
    splitter = ThinkSplitter("auto")
    assert splitter.feed("Hel") == [(False, "Hel")] and splitter.done
    stream = new_stream(think_tags="auto")
    stream.start()
    stream.feed(chunk({"content": "Hello"}))
    assert stream._think is None
    on = ThinkSplitter("on")
    on.feed("x")
    assert on.idle  # the caller skips feeding fragments without '<'


def test_reasoning_tokens_top_level_usage_fallback():
    chunks = [chunk({"reasoning": "hm"}), chunk({"content": "ok"}), chunk({}, finish="stop"),
              chunk(choices=False, usage=usage(3, 9, reasoning_tokens=6))]
    _, _, result = drive(chunks)
    assert result["usage"]["reasoning_tokens"] == 6


# ---------------------------------------------------------------------------------------------- 2. reasoning back in
async def test_encrypted_reasoning_round_trip_with_history_resending_sdk_client(upstream, gateway):
    """Codex-style: store false, include encrypted_content, the history resent by the client next turn."""
    client = sdk(gateway)
    codex = {"store": False, "include": ["reasoning.encrypted_content"], "reasoning": {"summary": "auto"}}
    upstream.enqueue(tool_call_reply("exec_command", '{"cmd":"date"}', "call_x1", reasoning="I should run date."))
    tools = [{"type": "function", "name": "exec_command", "parameters": {"type": "object"}}]
    history: list[Any] = [{"type": "message", "role": "user", "content": "What time is it?"}]
    first = await sdk_turn(client, input=history, tools=tools, **codex)
    reasoning, call = first.output
    assert reasoning.type == "reasoning" and reasoning.encrypted_content
    assert reasoning.summary[0].text == "I should run date."
    # A client that keeps only the opaque token (as with OpenAI's own reasoning items).
    history += [{"type": "reasoning", "id": reasoning.id, "summary": [], "encrypted_content": reasoning.encrypted_content},
                call.model_dump(exclude_none=True),
                {"type": "function_call_output", "call_id": call.call_id, "output": "12:00"}]
    upstream.enqueue(reasoning_reply("It printed noon.", text="It is noon."))
    second = await sdk_turn(client, input=history, tools=tools, **codex)
    assert second.output_text == "It is noon."
    [assistant] = assistant_messages(upstream)
    assert assistant["reasoning_content"] == "I should run date."
    assert assistant["tool_calls"][0]["id"] == "call_x1"
    # Third turn: both earlier reasoning items go back, each on its own assistant message.
    history += [item.model_dump(exclude_none=True) for item in second.output]
    history.append({"type": "message", "role": "user", "content": "thanks"})
    upstream.enqueue(text_reply("You're welcome."))
    await sdk_turn(client, input=history, tools=tools, **codex)
    assert [m.get("reasoning_content") for m in assistant_messages(upstream)] == ["I should run date.",
                                                                                  "It printed noon."]
    await client.close()


async def test_encrypted_content_only_when_included_and_valid_stream(upstream, gateway, http):
    _, final, raw = await post(upstream, gateway, http, reasoning_reply(THOUGHT), {"include": ["reasoning.encrypted_content"]})
    token = final["output"][0]["encrypted_content"]
    assert token.startswith("gwr1.") and THOUGHT not in token
    _, final, _ = await post(upstream, gateway, http, reasoning_reply(THOUGHT), {"include": []})
    assert "encrypted_content" not in final["output"][0]


async def test_reasoning_content_sent_back_from_content_or_summary(upstream, gateway, http):
    for item in ({"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "from content"}]},
                 {"type": "reasoning", "summary": [{"type": "summary_text", "text": "from summary"}]}):
        history = [{"role": "user", "content": "hi"}, item,
                   {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi!"}]},
                   {"role": "user", "content": "again"}]
        await post(upstream, gateway, http, text_reply("ok"), {"input": history})
        [assistant] = assistant_messages(upstream)
        assert assistant == {"role": "assistant", "content": "Hi!",
                             "reasoning_content": item.get("content", item["summary"])[0]["text"]}


def test_unopenable_token_gives_a_warning_not_an_error():
    body = {"model": "m", "input": [{"type": "reasoning", "summary": [], "encrypted_content": "gAAAAABforeign"},
                                    {"type": "message", "role": "assistant", "content": "Hi"}]}
    chat = translate_request(body, UpstreamConfig())
    assert "reasoning_content" not in chat.body["messages"][0]
    assert any("input[0].encrypted_content" in w for w in chat.warnings)


async def test_bad_or_foreign_token_is_ignored_with_a_warning(upstream, make_gateway, http):
    gateway = await make_gateway(upstream={"reasoning_key": "key-one"})
    other = await make_gateway(upstream={"reasoning_key": "key-two"})
    _, final, _ = await post(upstream, other, http, reasoning_reply(THOUGHT), {"include": ["reasoning.encrypted_content"]})
    foreign = final["output"][0]["encrypted_content"]
    tampered = foreign[:-4] + ("AAAA" if not foreign.endswith("AAAA") else "BBBB")
    for token in (foreign, tampered, "gAAAAABopenai-token", "gwr1.!!!", "gwr1."):
        history = [{"role": "user", "content": "hi"},
                   {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": token},
                   {"type": "message", "role": "assistant", "content": "Hi!"}, {"role": "user", "content": "more"}]
        result, _, _ = await post(upstream, gateway, http, text_reply("ok"), {"input": history})
        assert result["status"] == "completed"
        [assistant] = assistant_messages(upstream)
        assert "reasoning_content" not in assistant


async def test_same_reasoning_key_opens_across_gateway_instances(upstream, make_gateway, http):
    """A configured key survives restarts: a token sealed by one instance opens on another."""
    first = await make_gateway(upstream={"reasoning_key": "shared-secret"})
    second = await make_gateway(upstream={"reasoning_key": "shared-secret"})
    _, final, _ = await post(upstream, first, http, reasoning_reply(THOUGHT), {"include": ["reasoning.encrypted_content"]})
    history = [{"role": "user", "content": "hi"},
               {**final["output"][0], "content": None, "summary": []}, final["output"][1],
               {"role": "user", "content": "more"}]
    await post(upstream, second, http, text_reply("ok"), {"input": history})
    assert assistant_messages(upstream)[0]["reasoning_content"] == THOUGHT


@pytest.mark.parametrize("field, want", [("reasoning", {"reasoning": THOUGHT}), ("none", {})])
async def test_reasoning_field_config(upstream, make_gateway, http, field, want):
    gateway = await make_gateway(upstream={"reasoning_field": field})
    history = [{"role": "user", "content": "hi"},
               {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": THOUGHT}]},
               {"type": "message", "role": "assistant", "content": "Hi!"}, {"role": "user", "content": "more"}]
    await post(upstream, gateway, http, text_reply("ok"), {"input": history})
    assert assistant_messages(upstream) == [{"role": "assistant", "content": "Hi!", **want}]


def test_sealer_rejects_other_keys_and_tampering():
    sealer = Sealer("k1")
    token = sealer.seal({"r": "thought"})
    assert sealer.open(token) == {"r": "thought"}
    assert Sealer("k2").open(token) is None
    assert sealer.open(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert sealer.open(None) is None and sealer.open("gwr1.") is None and sealer.open("x") is None
    assert sealer_for("") is sealer_for("")  # one random key per process when none is configured
    assert sealer.seal({"r": "a"}) != sealer.seal({"r": "a"})  # fresh nonce each time


def test_config_keys_named_in_errors():
    config = parse_config({"upstream": {"think_tags": "on", "reasoning_field": "reasoning",
                                        "tool_call_id_style": "mistral", "reasoning_key": "${NOPE_UNSET:-abc}"}})
    assert config.upstream.reasoning_key == "abc" and "abc" not in repr(config)
    for key, value in (("think_tags", "yes"), ("reasoning_field", "thinking"), ("tool_call_id_style", "x")):
        with pytest.raises(ConfigError, match=f"upstream.{key}"):
            parse_config({"upstream": {key: value}})


# ---------------------------------------------------------------------------------------------- 3. metadata across turns
async def test_gemini_thought_signature_round_trip_with_sdk_client(upstream, make_gateway):
    """The signature rides in the function_call item's id; a restarted gateway (new instance) still finds it."""
    gateway = await make_gateway()
    chunks = [chunk({"role": "assistant", "tool_calls": [
                  call_chunk("get_weather", '{"city":"Paris"}', "function-call-1", index=None, extra_content=SIG)]}),
              chunk({"tool_calls": [call_chunk("get_time", '{"tz":"CET"}', "function-call-2", index=None)]}),
              chunk({}, finish="stop"), chunk(choices=False, usage=usage())]
    upstream.enqueue(Reply([sse(*chunks)]))
    tools = [{"type": "function", "name": n, "parameters": {"type": "object"}} for n in ("get_weather", "get_time")]
    client = sdk(gateway)
    first = await sdk_turn(client, input="weather and time in Paris?", tools=tools, store=False)
    weather, clock = first.output
    assert weather.call_id == "function-call-1" and clock.call_id == "function-call-2"
    assert weather.id.startswith("fc_") and extra_from_item_id(weather.id) == SIG
    assert extra_from_item_id(clock.id) is None
    await client.close()
    restarted = await make_gateway()
    client = sdk(restarted)
    history = [{"role": "user", "content": "weather and time in Paris?"},
               *(item.model_dump(exclude_none=True) for item in first.output),
               *({"type": "function_call_output", "call_id": c, "output": "ok"}
                 for c in ("function-call-1", "function-call-2"))]
    upstream.enqueue(text_reply("Sunny, 12:00."))
    await sdk_turn(client, input=history, tools=tools, store=False)
    [assistant] = assistant_messages(upstream)
    assert assistant["tool_calls"][0] == {"id": "function-call-1", "type": "function", "extra_content": SIG,
                                          "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    assert "extra_content" not in assistant["tool_calls"][1]
    await client.close()


def test_item_id_metadata_encoding():
    item_id = id_carrying_extra(new_id("fc"), SIG)
    assert re.fullmatch(r"fc_[0-9a-f]{20}x[A-Za-z0-9_-]+", item_id)
    assert extra_from_item_id(item_id) == SIG
    for plain in (id_carrying_extra(new_id("fc"), None), "fc_68a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f607",
                  "fc_d24f39526ab747d6835b128f", "fc_0123456789abcdef0123x!!!", None, 42, "call_1"):
        assert extra_from_item_id(plain) is None


async def test_mistral_ids_in_history_rewritten_consistently(upstream, make_gateway, http):
    gateway = await make_gateway(upstream={"tool_call_id_style": "mistral"})
    history = [{"type": "message", "role": "user", "content": "tides?"},
               {"type": "function_call", "call_id": "call_abc123def456", "name": "search", "arguments": "{}"},
               {"type": "function_call", "call_id": "D681PevKs", "name": "search", "arguments": '{"q":1}'},
               {"type": "custom_tool_call", "call_id": "toolu_01ABC-def", "name": "apply_patch", "input": "x"},
               {"type": "function_call_output", "call_id": "call_abc123def456", "output": "high"},
               {"type": "function_call_output", "call_id": "D681PevKs", "output": "low"},
               {"type": "custom_tool_call_output", "call_id": "toolu_01ABC-def", "output": "done"}]
    await post(upstream, gateway, http, text_reply("High tide."), {"input": history})
    messages = upstream.requests[-1].body["messages"]
    ids = [c["id"] for c in messages[1]["tool_calls"]]
    assert all(re.fullmatch(r"[A-Za-z0-9]{9}", i) for i in ids) and len(set(ids)) == 3
    assert ids[1] == "D681PevKs"  # already in Mistral's form: exactly as the upstream gave it
    assert [m["tool_call_id"] for m in messages[2:]] == ids
    assert upstream_call_id("call_abc123def456", "mistral") == ids[0]  # stateless: same id every turn
    assert upstream_call_id("call_abc123def456", "openai") == "call_abc123def456"


async def test_mistral_style_invents_nine_character_ids(upstream, make_gateway, http):
    gateway = await make_gateway(upstream={"tool_call_id_style": "mistral"})
    chunks = [chunk({"role": "assistant", "content": None, "function_call": {"name": "search", "arguments": ""}}),
              chunk({"function_call": {"arguments": '{"q":"x"}'}}), chunk({}, finish="function_call"),
              chunk(choices=False, usage=usage())]
    result, _, _ = await post(upstream, gateway, http, Reply([sse(*chunks)]), {})
    [call] = result["tool_calls"]
    assert re.fullmatch(r"[A-Za-z0-9]{9}", call["call_id"])
    history = [{"role": "user", "content": "x"},
               {"type": "function_call", "call_id": call["call_id"], "name": "search", "arguments": call["arguments"]},
               {"type": "function_call_output", "call_id": call["call_id"], "output": "found"}]
    await post(upstream, gateway, http, text_reply("ok"), {"input": history})
    messages = upstream.requests[-1].body["messages"]
    assert messages[1]["tool_calls"][0]["id"] == call["call_id"] == messages[2]["tool_call_id"]


# ---------------------------------------------------------------------------------------------- 4. Codex's tools
APPLY_PATCH = {"type": "custom", "name": "apply_patch", "description": "Use the `apply_patch` tool to edit files.",
               "format": {"type": "grammar", "syntax": "lark",
                          "definition": 'start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch" LF'}}
PATCH = '*** Begin Patch\n*** Add File: hello.txt\n+Hello "wörld" \\ 😀\tend\n*** End Patch\n'


async def test_custom_tool_offered_as_function_and_called_back(upstream, gateway, http):
    arguments = json.dumps({"input": PATCH})  # ASCII escapes: \n, \", \\, \u00f6, surrogate pair
    step = 5
    fragments = [arguments[i:i + step] for i in range(0, len(arguments), step)]
    reply = tool_call_reply("apply_patch", "", "call_p1", fragments=fragments)
    result, final, raw = await post(upstream, gateway, http, reply, {"tools": [APPLY_PATCH]})
    [tool] = upstream.requests[-1].body["tools"]
    assert tool["function"]["name"] == "apply_patch"
    assert tool["function"]["parameters"]["properties"] == {"input": {"type": "string",
                                                                      "description": tool["function"]["parameters"]
                                                                      ["properties"]["input"]["description"]}}
    assert tool["function"]["parameters"]["required"] == ["input"]
    assert APPLY_PATCH["format"]["definition"] in tool["function"]["description"]
    [item] = final["output"]
    assert item["type"] == "custom_tool_call" and item["input"] == PATCH and item["call_id"] == "call_p1"
    assert item["name"] == "apply_patch" and item["status"] == "completed" and item["id"].startswith("ctc_")
    events = [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: {")]
    deltas = [e["delta"] for e in events if e["type"] == "response.custom_tool_call_input.delta"]
    assert len(deltas) > 5 and "".join(deltas) == PATCH  # streamed as it arrived, decoded
    assert [e["input"] for e in events if e["type"] == "response.custom_tool_call_input.done"] == [PATCH]
    assert not any(e["type"].startswith("response.function_call_arguments") for e in events)


@pytest.mark.parametrize("arguments, want", [
    (json.dumps({"input": PATCH}, ensure_ascii=False), PATCH),
    ('{ "input" : "a\\u00e9\\ud83d\\ude00b" }', "aé😀b"),
    ('{"patch": "raw"}', "raw"),          # another key: the single string value
    ("*** Begin Patch\nraw text", "*** Begin Patch\nraw text"),  # not JSON at all
    ('"just a string"', "just a string"),
    ("", ""),
])
def test_custom_tool_input_split_at_every_position(arguments, want):
    for cut in range(len(arguments) + 1):
        fragments = [f for f in (arguments[:cut], arguments[cut:]) if f]
        chunks = [chunk({"tool_calls": [call_chunk("apply_patch", "", "call_1")]})]
        chunks += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}) for f in fragments]
        chunks += [chunk({}, finish="tool_calls"), chunk(choices=False, usage=usage())]
        stream, events, _ = drive(chunks, custom_tools=frozenset({"apply_patch"}))
        assert stream.response["output"][0]["input"] == want, cut
        deltas = "".join(e["delta"] for e in events if e["type"] == "response.custom_tool_call_input.delta")
        assert deltas == want, cut


def test_input_decoder_every_split_pair():
    arguments = json.dumps({"input": 'x\\"\n\u00e9\U0001F600'})
    for i in range(len(arguments) + 1):
        for j in range(i, len(arguments) + 1):
            decoder = InputDecoder()
            streamed = decoder.feed(arguments[:i]) + decoder.feed(arguments[i:j]) + decoder.feed(arguments[j:])
            tail, final = decoder.finish(arguments)
            assert streamed + tail == final == 'x\\"\n\u00e9\U0001F600', (i, j)


async def test_custom_tool_history_becomes_tool_calls(upstream, gateway, http):
    history = [{"type": "message", "role": "user", "content": "add hello.txt"},
               {"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_p1", "name": "apply_patch", "input": PATCH},
               {"type": "custom_tool_call_output", "call_id": "call_p1", "output": "Success."}]
    await post(upstream, gateway, http, text_reply("Done."), {"input": history, "tools": [APPLY_PATCH]})
    messages = upstream.requests[-1].body["messages"]
    assert messages[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_p1", "type": "function", "function": {"name": "apply_patch",
                                                          "arguments": orjson.dumps({"input": PATCH}).decode()}}]}
    assert messages[2] == {"role": "tool", "tool_call_id": "call_p1", "content": "Success."}


async def test_custom_tool_round_trip_with_sdk_client(upstream, gateway):
    client = sdk(gateway)
    upstream.enqueue(tool_call_reply("apply_patch", json.dumps({"input": PATCH}), "call_p9"))
    first = await sdk_turn(client, input="make hello.txt", tools=[APPLY_PATCH], store=False)
    [call] = first.output
    assert call.type == "custom_tool_call" and call.input == PATCH
    history = [{"role": "user", "content": "make hello.txt"}, call.model_dump(exclude_none=True),
               {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "ok"}]
    upstream.enqueue(text_reply("Created."))
    second = await sdk_turn(client, input=history, tools=[APPLY_PATCH], store=False)
    assert second.output_text == "Created."
    [assistant] = assistant_messages(upstream)
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"input": PATCH}
    await client.close()


async def test_namespaced_and_long_tool_names_mapped_there_and_back(upstream, gateway, http):
    long_name = "mcp.server-with.dots/" + "x" * 70
    tools = [{"type": "namespace", "name": "multi_agent_v1", "description": "agents", "tools": [
                 {"type": "function", "name": "spawn_agent", "parameters": {"type": "object"}},
                 {"type": "custom", "name": "agent_script"}]},
             {"type": "function", "name": long_name, "parameters": {"type": "object"}}]
    for client_name, namespace, kind in (("spawn_agent", "multi_agent_v1", "function_call"),
                                         ("agent_script", "multi_agent_v1", "custom_tool_call"),
                                         (long_name, None, "function_call")):
        upstream.responder = None
        # Find the name the upstream was offered by asking once.
        await post(upstream, gateway, http, text_reply("x"), {"tools": tools})
        offered = [t["function"]["name"] for t in upstream.requests[-1].body["tools"]]
        assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", n) for n in offered)
        index = {"spawn_agent": 0, "agent_script": 1}.get(client_name, 2)
        arguments = '{"input":"go"}' if kind == "custom_tool_call" else "{}"
        _, final, _ = await post(upstream, gateway, http, tool_call_reply(offered[index], arguments), {"tools": tools})
        [item] = final["output"]
        assert (item["type"], item["name"], item.get("namespace")) == (kind, client_name, namespace)
        # ...and the history item goes back under the same upstream name.
        history = [{"role": "user", "content": "go"}, item,
                   {"type": f"{'custom_tool_call' if kind == 'custom_tool_call' else 'function_call'}_output",
                    "call_id": item["call_id"], "output": "ok"}]
        await post(upstream, gateway, http, text_reply("ok"), {"tools": tools, "input": history})
        assert assistant_messages(upstream)[0]["tool_calls"][0]["function"]["name"] == offered[index]


async def test_additional_tools_item_is_honoured(upstream, gateway, http):
    history = [{"type": "additional_tools", "role": "developer", "tools": [
                   {"type": "function", "name": "late_tool", "parameters": {"type": "object"}}, APPLY_PATCH]},
               {"type": "message", "role": "user", "content": "go"}]
    tools = [{"type": "function", "name": "exec_command", "parameters": {"type": "object"}}]
    await post(upstream, gateway, http, None, {"input": history, "tools": tools})
    body = upstream.requests[-1].body
    assert [t["function"]["name"] for t in body["tools"]] == ["exec_command", "late_tool", "apply_patch"]
    assert body["messages"] == [{"role": "user", "content": "go"}]
    upstream.enqueue(tool_call_reply("apply_patch", '{"input":"p"}'))
    _, final, _ = await post(upstream, gateway, http, None, {"input": history, "tools": tools})
    assert final["output"][0]["type"] == "custom_tool_call" and final["output"][0]["input"] == "p"


def test_codex_captured_request_translates_with_reasoning_on_the_tool_call_turn():
    samples = json.loads((ROOT / "e2e" / "samples" / "codex_0.169.0_requests.json").read_text())
    chat = translate_request(samples[2]["body"], UpstreamConfig())
    messages = chat.body["messages"]
    assert messages[0]["role"] == "system"
    assistant = next(m for m in messages if m["role"] == "assistant")
    assert assistant["reasoning_content"] == "Thinking about the request."
    assert assistant["tool_calls"][0]["id"] == "call_a0f24c3abe1d44a2a4517955"
    assert messages[-1]["role"] == "tool"
    names = [t["function"]["name"] for t in chat.body["tools"]]
    assert "multi_agent_v1__close_agent" in names and "exec_command" in names
    assert chat.options.reasoning_summary and chat.options.seal is not None
