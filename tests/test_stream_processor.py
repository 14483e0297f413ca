"""Unit tests of the sans-I/O stream processor: lists of chunk dicts in, Responses events out.

Every event sequence is encoded with `encode_events` and validated by shared/tools/gateway.check.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.sse import encode_events
from gateway.stream_processor import ResponseStream, map_usage, response_defaults, stream_generator

from .conftest import assert_valid_stream
from .helpers import RESPONSE_ID as RID
from .helpers import drive, new_stream
from .scripted_upstream import chunk, usage

ROOT = Path(__file__).resolve().parents[1]


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"].removeprefix("response.") for e in events]


def call_delta(index: int | None = None, call_id: str | None = None, name: str | None = None,
               arguments: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {}
    if index is not None:
        call["index"] = index
    if call_id is not None:
        call["id"] = call_id
        call["type"] = "function"
    function: dict[str, Any] = {}
    if name is not None:
        function["name"] = name
    if arguments is not None:
        function["arguments"] = arguments
    call["function"] = function
    return call


def tools(*calls: dict[str, Any], **delta: Any) -> dict[str, Any]:
    return chunk({"tool_calls": list(calls), **delta})


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == f"response.{kind}"]


# ---------------------------------------------------------------------------------------- text
def test_text_canonical_sequence():
    chunks = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), chunk({"content": "lo"}),
              chunk({"content": " wörld"}), chunk({}, finish="stop"), chunk(choices=False, usage=usage(5, 7))]
    stream, events, result = drive(chunks)
    assert types(events) == [
        "created", "in_progress", "output_item.added", "content_part.added",
        "output_text.delta", "output_text.delta", "output_text.delta", "output_text.done",
        "content_part.done", "output_item.done", "completed"]
    assert [e["delta"] for e in of_type(events, "output_text.delta")] == ["Hel", "lo", " wörld"]
    assert of_type(events, "output_text.done")[0]["text"] == "Hello wörld"
    assert result["text"] == "Hello wörld"
    assert result["status"] == "completed"
    assert result["id"] == RID
    response = stream.terminal["response"]
    assert response["id"] == RID and response["object"] == "response" and response["model"] == "test-model"
    assert response["status"] == "completed" and response["error"] is None
    assert response["incomplete_details"] is None
    assert isinstance(response["completed_at"], int)
    message = response["output"][0]
    assert message["type"] == "message" and message["role"] == "assistant" and message["status"] == "completed"
    assert message["id"].startswith("msg_")
    assert message["content"] == [{"type": "output_text", "text": "Hello wörld", "annotations": [], "logprobs": []}]
    assert stream.finish_reason == "stop"
    assert stream.warnings == []


def test_stream_generator_same_events_as_response_stream():
    chunks = [chunk({"content": "Hi"}), chunk({}, finish="stop")]
    events = list(stream_generator(chunks, model="m", response_id=RID))
    result = assert_valid_stream(encode_events(events))
    assert result["text"] == "Hi" and result["status"] == "completed"
    assert events[0]["type"] == "response.created" and events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["id"] == RID and events[0]["response"]["model"] == "m"
    assert events[-1]["type"] == "response.completed"


def test_stream_generator_without_done_is_truncated():
    events = list(stream_generator([chunk({"content": "Hi"})], model="m", response_id=RID, saw_done=False))
    result = assert_valid_stream(encode_events(events))
    assert result["status"] == "failed"
    assert result["error"]["code"] == "upstream_truncated"
    assert result["text"] == "Hi"


def test_echo_fields_in_every_lifecycle_response():
    echo = {**response_defaults(), "instructions": "Be brief.", "metadata": {"k": "v"}, "temperature": 0.5,
            "model": "ignored"}
    stream, events, _ = drive([chunk({"content": "x"}), chunk({}, finish="stop")], echo=echo)
    for event in (events[0], events[1], events[-1]):
        assert event["response"]["instructions"] == "Be brief."
        assert event["response"]["metadata"] == {"k": "v"}
        assert event["response"]["temperature"] == 0.5
        assert event["response"]["model"] == "test-model"


def test_refusal_part():
    _, events, _ = drive([chunk({"refusal": "I can't"}), chunk({"refusal": " help."}), chunk({}, finish="stop")])
    assert of_type(events, "refusal.done")[0]["refusal"] == "I can't help."
    item = of_type(events, "output_item.done")[0]["item"]
    assert item["content"] == [{"type": "refusal", "refusal": "I can't help."}]


def test_reasoning_then_text():
    chunks = [chunk({"reasoning_content": "Think"}), chunk({"reasoning_content": "ing."}),
              chunk({"content": "Answer"}), chunk({}, finish="stop")]
    _, events, result = drive(chunks)
    assert result["reasoning"] == "Thinking." and result["text"] == "Answer"
    items = [e["item"] for e in of_type(events, "output_item.done")]
    assert [i["type"] for i in items] == ["reasoning", "message"]
    assert items[0]["id"].startswith("rs_")
    assert items[0]["content"] == [{"type": "reasoning_text", "text": "Thinking."}]


# ---------------------------------------------------------------------------------------- tool calls
def assert_call_events(events: list[dict[str, Any]], expected: list[tuple[str, str, str]]) -> None:
    """Each function call has added → deltas → arguments.done → output_item.done, exactly."""
    added = [e for e in of_type(events, "output_item.added") if e["item"]["type"] == "function_call"]
    assert [(e["item"]["name"], e["item"]["call_id"]) for e in added] == [(n, c) for n, _, c in expected]
    for event, (name, arguments, call_id) in zip(added, expected):
        item_id, index = event["item"]["id"], event["output_index"]
        assert item_id.startswith("fc_")
        assert event["item"]["arguments"] == "" and event["item"]["status"] == "in_progress"
        deltas = [e["delta"] for e in of_type(events, "function_call_arguments.delta") if e["item_id"] == item_id]
        assert "".join(deltas) == arguments
        dones = [e for e in of_type(events, "function_call_arguments.done") if e["item_id"] == item_id]
        assert len(dones) == 1
        assert dones[0]["arguments"] == arguments and dones[0]["name"] == name
        assert dones[0]["output_index"] == index
        items = [e for e in of_type(events, "output_item.done") if e["item"]["id"] == item_id]
        assert len(items) == 1 and items[0]["output_index"] == index
        assert items[0]["item"] == {"id": item_id, "type": "function_call", "status": items[0]["item"]["status"],
                                    "arguments": arguments, "call_id": call_id, "name": name}


def test_tool_calls_format_streamed_arguments():
    args = '{"city": "Paris", "unit": "c"}'
    chunks = [chunk({"role": "assistant", "content": None,
                     "tool_calls": [call_delta(0, "call_abc123", "get_weather", "")]}),
              tools(call_delta(0, arguments=args[:7])), tools(call_delta(0, arguments="")),
              tools(call_delta(0, arguments=args[7:20])), tools(call_delta(0, arguments=args[20:])),
              chunk({}, finish="tool_calls"), chunk(choices=False, usage=usage())]
    stream, events, result = drive(chunks)
    assert result["status"] == "completed"
    assert result["tool_calls"] == [{"name": "get_weather", "arguments": args, "call_id": "call_abc123"}]
    assert result["text"] == ""
    assert types(events) == ["created", "in_progress", "output_item.added"] + ["function_call_arguments.delta"] * 3 + [
        "function_call_arguments.done", "output_item.done", "completed"]
    assert_call_events(events, [("get_weather", args, "call_abc123")])
    assert stream.terminal["response"]["output"][0]["status"] == "completed"
    assert stream.warnings == []


def test_legacy_function_call_format():
    args = '{"query": "weather"}'
    chunks = [chunk({"role": "assistant", "function_call": {"name": "search", "arguments": ""}}),
              chunk({"function_call": {"arguments": args[:5]}}), chunk({"function_call": {"arguments": args[5:]}}),
              chunk({}, finish="function_call")]
    stream, events, result = drive(chunks)
    assert result["status"] == "completed"
    assert len(result["tool_calls"]) == 1
    call = result["tool_calls"][0]
    assert call["name"] == "search" and call["arguments"] == args
    assert call["call_id"].startswith("call_")
    assert_call_events(events, [("search", args, call["call_id"])])
    assert stream.finish_reason == "function_call"


def test_legacy_function_call_name_after_arguments_started():
    """A legacy call whose name arrives in the same delta as the first arguments."""
    chunks = [chunk({"function_call": {"name": "f", "arguments": '{"a"'}}),
              chunk({"function_call": {"arguments": ": 1}"}}), chunk({}, finish="function_call")]
    _, events, result = drive(chunks)
    assert [(c["name"], c["arguments"]) for c in result["tool_calls"]] == [("f", '{"a": 1}')]


def test_parallel_calls_interleaved():
    chunks = [tools(call_delta(0, "call_1", "get_weather", "")),
              tools(call_delta(1, "call_2", "get_time", "")),
              tools(call_delta(0, arguments='{"city": ')), tools(call_delta(1, arguments='{"tz": "CET"}')),
              tools(call_delta(0, arguments='"Paris"}')), chunk({}, finish="tool_calls")]
    _, events, result = drive(chunks)
    assert result["tool_calls"] == [
        {"name": "get_weather", "arguments": '{"city": "Paris"}', "call_id": "call_1"},
        {"name": "get_time", "arguments": '{"tz": "CET"}', "call_id": "call_2"}]
    assert_call_events(events, [("get_weather", '{"city": "Paris"}', "call_1"),
                                ("get_time", '{"tz": "CET"}', "call_2")])
    assert [e["output_index"] for e in of_type(events, "output_item.added")] == [0, 1]


def test_parallel_calls_sequential():
    chunks = [tools(call_delta(0, "call_1", "a", "")), tools(call_delta(0, arguments='{"x": 1}')),
              tools(call_delta(1, "call_2", "b", "")), tools(call_delta(1, arguments='{"y": 2}')),
              tools(call_delta(2, "call_3", "c", "{}")), chunk({}, finish="tool_calls")]
    _, events, result = drive(chunks)
    assert [(c["name"], c["arguments"], c["call_id"]) for c in result["tool_calls"]] == [
        ("a", '{"x": 1}', "call_1"), ("b", '{"y": 2}', "call_2"), ("c", "{}", "call_3")]
    assert_call_events(events, [(c["name"], c["arguments"], c["call_id"]) for c in result["tool_calls"]])


def test_parallel_calls_all_labelled_index_zero():
    chunks = [tools(call_delta(0, "call_1", "a", '{"x": 1}')), tools(call_delta(0, "call_2", "b", '{"y": 2}')),
              chunk({}, finish="tool_calls")]
    _, _, result = drive(chunks)
    assert result["tool_calls"] == [{"name": "a", "arguments": '{"x": 1}', "call_id": "call_1"},
                                    {"name": "b", "arguments": '{"y": 2}', "call_id": "call_2"}]


def test_text_then_calls():
    chunks = [chunk({"role": "assistant", "content": "Let me "}), chunk({"content": "check."}),
              tools(call_delta(0, "call_1", "get_weather", "")), tools(call_delta(0, arguments='{"city": "Oslo"}')),
              chunk({}, finish="tool_calls"), chunk(choices=False, usage=usage(10, 20))]
    stream, events, result = drive(chunks)
    assert result["text"] == "Let me check."
    assert result["tool_calls"] == [{"name": "get_weather", "arguments": '{"city": "Oslo"}', "call_id": "call_1"}]
    # The message is finished before the call is announced.
    assert types(events) == [
        "created", "in_progress", "output_item.added", "content_part.added", "output_text.delta",
        "output_text.delta", "output_text.done", "content_part.done", "output_item.done",
        "output_item.added", "function_call_arguments.delta", "function_call_arguments.done",
        "output_item.done", "completed"]
    output = stream.terminal["response"]["output"]
    assert [o["type"] for o in output] == ["message", "function_call"]
    assert [o["status"] for o in output] == ["completed", "completed"]
    assert result["usage"]["total_tokens"] == 30


def test_whole_call_in_one_chunk():
    """Ollama: the whole call, arguments complete, in one chunk that also finishes."""
    chunks = [{"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [{
        "index": 0, "finish_reason": "tool_calls", "delta": {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_k3v9x0qa", "index": 0, "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}}]}]
    _, events, result = drive(chunks)
    assert result["status"] == "completed"
    assert result["tool_calls"] == [{"name": "get_weather", "arguments": '{"city":"Paris"}',
                                     "call_id": "call_k3v9x0qa"}]
    assert [e["delta"] for e in of_type(events, "function_call_arguments.delta")] == ['{"city":"Paris"}']
    assert_call_events(events, [("get_weather", '{"city":"Paris"}', "call_k3v9x0qa")])


def test_calls_without_index():
    """Gemini: tool calls without `index`, each whole; the tool turn finishes with "stop"."""
    chunks = [tools({"id": "call_g1", "type": "function", "function": {"name": "a", "arguments": '{"n": 1}'}}),
              tools({"id": "call_g2", "type": "function", "function": {"name": "b", "arguments": '{"n": 2}'}}),
              chunk({}, finish="stop")]
    _, events, result = drive(chunks)
    assert result["status"] == "completed"
    assert result["tool_calls"] == [{"name": "a", "arguments": '{"n": 1}', "call_id": "call_g1"},
                                    {"name": "b", "arguments": '{"n": 2}', "call_id": "call_g2"}]
    assert_call_events(events, [("a", '{"n": 1}', "call_g1"), ("b", '{"n": 2}', "call_g2")])


def test_calls_without_index_or_id_fragments_continue_last_call():
    chunks = [tools({"function": {"name": "a", "arguments": '{"n"'}}), tools({"function": {"arguments": ": 1}"}}),
              chunk({}, finish="tool_calls")]
    _, _, result = drive(chunks)
    assert len(result["tool_calls"]) == 1
    assert result["tool_calls"][0]["name"] == "a" and result["tool_calls"][0]["arguments"] == '{"n": 1}'


def test_several_calls_in_one_delta():
    chunks = [tools(call_delta(0, "call_1", "a", '{"x": 1}'), call_delta(1, "call_2", "b", '{"y": 2}'),
                    call_delta(2, "call_3", "c", '{"z": 3}')),
              chunk({}, finish="tool_calls")]
    _, events, result = drive(chunks)
    expected = [("a", '{"x": 1}', "call_1"), ("b", '{"y": 2}', "call_2"), ("c", '{"z": 3}', "call_3")]
    assert [(c["name"], c["arguments"], c["call_id"]) for c in result["tool_calls"]] == expected
    assert_call_events(events, expected)
    assert [e["output_index"] for e in of_type(events, "output_item.done")] == [0, 1, 2]


def test_arguments_not_valid_json_delivered_exactly_with_warning():
    broken = "{'city': 'Paris',"  # single quotes, truncated: exactly what some models produce
    chunks = [tools(call_delta(0, "call_1", "get_weather", "")), tools(call_delta(0, arguments=broken[:6])),
              tools(call_delta(0, arguments=broken[6:])), chunk({}, finish="tool_calls")]
    stream, events, result = drive(chunks)
    assert result["status"] == "completed"
    assert result["tool_calls"] == [{"name": "get_weather", "arguments": broken, "call_id": "call_1"}]
    assert of_type(events, "function_call_arguments.done")[0]["arguments"] == broken
    assert len(stream.warnings) == 1
    assert "not valid JSON" in stream.warnings[0] and "call_1" in stream.warnings[0]


def test_arguments_sent_as_object_are_serialised():
    chunks = [tools(call_delta(0, "call_1", "f")), tools({"index": 0, "function": {"arguments": {"a": 1}}}),
              chunk({}, finish="tool_calls")]
    _, _, result = drive(chunks)
    assert json.loads(result["tool_calls"][0]["arguments"]) == {"a": 1}


def test_call_name_arriving_after_arguments():
    chunks = [tools({"index": 0, "id": "call_1", "function": {"arguments": '{"a"'}}),
              tools({"index": 0, "function": {"name": "late", "arguments": ": 1}"}}),
              chunk({}, finish="tool_calls")]
    _, events, result = drive(chunks)
    assert result["tool_calls"] == [{"name": "late", "arguments": '{"a": 1}', "call_id": "call_1"}]
    assert_call_events(events, [("late", '{"a": 1}', "call_1")])


def test_namespace_tool_names_mapped_back():
    names = {"mcp__search": ("search", "mcp"), "weird_name_1a2b3c4d": ("weird.name", None)}
    chunks = [tools(call_delta(0, "call_1", "mcp__search", '{"q": "x"}'),
                    call_delta(1, "call_2", "weird_name_1a2b3c4d", "{}"),
                    call_delta(2, "call_3", "plain", "{}")),
              chunk({}, finish="tool_calls")]
    stream, events, result = drive(chunks, tool_names=names)
    assert [c["name"] for c in result["tool_calls"]] == ["search", "weird.name", "plain"]
    output = stream.terminal["response"]["output"]
    assert output[0]["namespace"] == "mcp" and output[0]["name"] == "search"
    assert "namespace" not in output[1] and "namespace" not in output[2]
    added = of_type(events, "output_item.added")
    assert added[0]["item"]["namespace"] == "mcp" and added[0]["item"]["name"] == "search"
    assert [e["name"] for e in of_type(events, "function_call_arguments.done")] == ["search", "weird.name", "plain"]


def test_namespace_mapping_from_translated_request():
    from gateway.config import UpstreamConfig
    from gateway.translate import translate_request
    chat = translate_request({"model": "m", "input": "hi", "tools": [
        {"type": "namespace", "name": "files", "tools": [{"type": "function", "name": "read"}]}]}, UpstreamConfig())
    upstream_name = chat.body["tools"][0]["function"]["name"]
    stream, _, result = drive([tools(call_delta(0, "call_1", upstream_name, "{}")), chunk({}, finish="tool_calls")],
                            tool_names=chat.options.tool_names)
    assert result["tool_calls"][0]["name"] == "read"
    assert stream.terminal["response"]["output"][0]["namespace"] == "files"


# ---------------------------------------------------------------------------------------- finish reasons
@pytest.mark.parametrize("reason, status, incomplete", [
    ("stop", "completed", None),
    ("tool_calls", "completed", None),
    ("function_call", "completed", None),
    ("length", "incomplete", "max_output_tokens"),
    ("content_filter", "incomplete", "content_filter"),
])
def test_finish_reason_to_status(reason, status, incomplete):
    chunks = [chunk({"content": "Some text"}), chunk({}, finish=reason), chunk(choices=False, usage=usage(3, 4))]
    stream, events, result = drive(chunks)
    assert result["status"] == status
    assert events[-1]["type"] == f"response.{status}"
    assert result["incomplete_reason"] == incomplete
    response = stream.terminal["response"]
    assert response["status"] == status
    if incomplete:
        assert response["incomplete_details"] == {"reason": incomplete}
        assert response["output"][0]["status"] == "incomplete"
    else:
        assert response["incomplete_details"] is None
        assert response["output"][0]["status"] == "completed"
    assert result["text"] == "Some text"
    assert result["usage"]["total_tokens"] == 7
    assert stream.finish_reason == reason


def test_length_with_open_tool_call_closes_it_incomplete():
    chunks = [tools(call_delta(0, "call_1", "f", '{"a": ')), chunk({}, finish="length")]
    stream, events, result = drive(chunks)
    assert result["status"] == "incomplete" and result["incomplete_reason"] == "max_output_tokens"
    assert result["tool_calls"] == [{"name": "f", "arguments": '{"a": ', "call_id": "call_1"}]
    assert stream.terminal["response"]["output"][0]["status"] == "incomplete"


def test_no_finish_reason_but_done_is_completed():
    _, _, result = drive([chunk({"content": "ok"})], saw_done=True)
    assert result["status"] == "completed" and result["text"] == "ok"


def test_finish_reason_then_eof_without_done_is_completed():
    _, _, result = drive([chunk({"content": "ok"}), chunk({}, finish="stop")], saw_done=False)
    assert result["status"] == "completed"


# ---------------------------------------------------------------------------------------- usage
def test_usage_mapping_with_cached_and_reasoning_tokens():
    use = usage(100, 40, prompt_tokens_details={"cached_tokens": 64},
                completion_tokens_details={"reasoning_tokens": 12})
    stream, _, result = drive([chunk({"content": "x"}), chunk({}, finish="stop"), chunk(choices=False, usage=use)])
    assert stream.terminal["response"]["usage"] == {
        "input_tokens": 100, "input_tokens_details": {"cached_tokens": 64, "cache_write_tokens": 0},
        "output_tokens": 40, "output_tokens_details": {"reasoning_tokens": 12}, "total_tokens": 140}
    assert result["usage"] == {"input_tokens": 100, "output_tokens": 40, "total_tokens": 140,
                               "cached_tokens": 64, "reasoning_tokens": 12}


def test_usage_chunk_after_finish_chunk_is_not_lost():
    stream = new_stream(model="m")
    events = stream.start()
    events += stream.feed(chunk({"content": "x"}))
    events += stream.feed(chunk({}, finish="stop"))
    # The finish chunk must not end the response: the usage chunk is still to come.
    assert stream.terminal is None
    assert not any(e["type"] == "response.completed" for e in events)
    events += stream.feed(chunk(choices=False, usage=usage(11, 22)))
    events += stream.finish(True)
    result = assert_valid_stream(encode_events(events))
    assert result["usage"]["input_tokens"] == 11 and result["usage"]["output_tokens"] == 22
    assert result["usage"]["total_tokens"] == 33


def test_usage_on_every_chunk_takes_the_last():
    chunks = [chunk({"content": "a"}, usage=usage(5, 1)), chunk({"content": "b"}, usage=usage(5, 2)),
              chunk({}, finish="stop", usage=usage(5, 3))]
    _, _, result = drive(chunks)
    assert result["usage"]["input_tokens"] == 5 and result["usage"]["output_tokens"] == 3


def test_usage_null_on_chunks_is_ignored():
    chunks = [chunk({"content": "a"}, usage=None), chunk({}, finish="stop"), chunk(choices=False, usage=usage(2, 3)),
              ]
    chunks[0]["usage"] = None
    _, _, result = drive(chunks)
    assert result["usage"]["total_tokens"] == 5


def test_usage_missing_is_zero():
    stream, _, result = drive([chunk({"content": "a"}), chunk({}, finish="stop")])
    assert result["usage"] == {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0, "cached_tokens": 0,
                               "reasoning_tokens": 0}


def test_usage_total_is_the_sum_and_deepseek_cache_hits():
    use = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 999, "prompt_cache_hit_tokens": 8,
           "prompt_cache_miss_tokens": 2}
    assert map_usage(use) == {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 0},
                              "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0},
                              "total_tokens": 15}


def test_usage_groq_x_groq():
    chunks = [chunk({"content": "a"}), chunk({}, finish="stop", x_groq={"usage": usage(4, 6)})]
    _, _, result = drive(chunks)
    assert result["usage"]["input_tokens"] == 4 and result["usage"]["output_tokens"] == 6


# ---------------------------------------------------------------------------------------- failures
def assert_closed_before_terminal(events: list[dict[str, Any]]) -> None:
    added = {e["output_index"] for e in of_type(events, "output_item.added")}
    done = {e["output_index"] for e in of_type(events, "output_item.done")}
    assert added == done
    assert events[-1]["type"] == "response.failed"
    assert all(e["type"] != "response.failed" for e in events[:-1])


def test_inband_error_closes_open_items_then_fails():
    chunks = [chunk({"content": "Partial"}), tools(call_delta(0, "call_1", "f", '{"a": 1')),
              {"error": {"message": "engine died", "code": 500, "type": "internal"}}]
    stream, events, result = drive(chunks)
    assert result["status"] == "failed"
    assert result["error"] == {"code": "upstream_error", "message": "engine died"}
    assert stream.terminal["response"]["error"] == {"code": "upstream_error", "message": "engine died"}
    assert result["text"] == "Partial"
    assert result["tool_calls"] == [{"name": "f", "arguments": '{"a": 1', "call_id": "call_1"}]
    assert_closed_before_terminal(events)
    assert_call_events(events, [("f", '{"a": 1', "call_1")])
    # The message was finished when the call started; the open call is closed as incomplete.
    assert [o["status"] for o in stream.terminal["response"]["output"]] == ["completed", "incomplete"]


def test_inband_error_known_code_kept():
    _, _, result = drive([{"error": {"message": "too long", "code": "context_length_exceeded"}}])
    assert result["error"] == {"code": "context_length_exceeded", "message": "too long"}


def test_inband_error_as_bare_string_and_lm_studio_shape():
    _, _, result = drive([{"error": "model crashed"}])
    assert result["error"] == {"code": "upstream_error", "message": "model crashed"}
    _, _, result = drive([{"error": {"code": "model_unloaded"}, "message": "LM Studio says no"}])
    # The upstream's own string code is kept: it tells the user more than a generic one.
    assert result["error"] == {"code": "model_unloaded", "message": "LM Studio says no"}


def test_chunks_after_error_are_ignored():
    stream = new_stream(model="m")
    events = stream.start() + stream.feed({"error": {"message": "boom"}})
    assert stream.feed(chunk({"content": "late"})) == []
    assert stream.finish(True) == []
    result = assert_valid_stream(encode_events(events))
    assert result["status"] == "failed" and result["text"] == ""


def test_cut_stream_closes_open_items_then_fails_truncated():
    chunks = [chunk({"content": "Half a sen"}), tools(call_delta(0, "call_1", "f", '{"x": ')),
              tools(call_delta(1, "call_2", "g", '{"y": 2}'))]
    stream, events, result = drive(chunks, saw_done=False)
    assert result["status"] == "failed"
    assert result["error"]["code"] == "upstream_truncated"
    assert stream.terminal["response"]["error"]["code"] == "upstream_truncated"
    assert isinstance(result["error"]["message"], str) and result["error"]["message"]
    assert result["text"] == "Half a sen"
    assert_closed_before_terminal(events)
    assert_call_events(events, [("f", '{"x": ', "call_1"), ("g", '{"y": 2}', "call_2")])
    assert [o["status"] for o in stream.terminal["response"]["output"]] == ["completed", "incomplete", "incomplete"]


def test_cut_stream_with_open_text_only():
    stream, events, result = drive([chunk({"content": "Half"})], saw_done=False)
    assert result["error"]["code"] == "upstream_truncated" and result["text"] == "Half"
    assert_closed_before_terminal(events)
    assert stream.terminal["response"]["output"][0]["status"] == "incomplete"
    assert stream.terminal["response"]["output"][0]["content"][0]["text"] == "Half"


def test_cut_stream_nothing_received():
    _, events, result = drive([], saw_done=False)
    assert types(events) == ["created", "in_progress", "failed"]
    assert result["error"]["code"] == "upstream_truncated"


def test_fail_from_outside_closes_items():
    stream = new_stream(model="m")
    events = stream.start() + stream.feed(tools(call_delta(0, "call_1", "f", "{")))
    events += stream.fail("upstream_timeout", "the upstream sent nothing for 5s")
    result = assert_valid_stream(encode_events(events))
    assert result["error"] == {"code": "upstream_timeout", "message": "the upstream sent nothing for 5s"}
    assert_closed_before_terminal(events)
    assert stream.fail("again", "ignored") == []


@pytest.mark.parametrize("reason", ["error", "insufficient_system_resource"])
def test_failure_finish_reasons(reason):
    _, events, result = drive([chunk({"content": "x"}), chunk({}, finish=reason)])
    assert result["status"] == "failed" and result["error"]["code"] == "upstream_error"
    assert reason in result["error"]["message"]
    assert_closed_before_terminal(events)


def test_malformed_chunk_fails_cleanly():
    _, events, result = drive([chunk({"content": "x"}), {"choices": "not a list of choices"}])
    assert result["status"] == "failed"
    assert result["error"]["code"] == "upstream_protocol_error"


@pytest.mark.parametrize("bad, says", [
    ([1, 2], "a chunk must be a JSON object"),
    ({"choices": [5]}, "a choice must be an object"),
    ({"choices": [{"delta": "text"}]}, "delta must be an object"),
    ({"choices": [{"delta": {}, "finish_reason": {"a": 1}}]}, "finish_reason must be a string"),
    ({"choices": [{"delta": {"tool_calls": {"index": 0}}}]}, "tool_calls must be a list"),
    ({"choices": [{"delta": {"tool_calls": [{"index": [0], "function": {"name": "f"}}]}}]}, "index must be an integer"),
    ({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": "f"}]}}]}, "function must be an object"),
    ({"choices": [{"delta": {"reasoning_details": [{"text": 5}]}}]}, "reasoning_details text must be a string"),
    ({"x_groq": "usage"}, "x_groq must be an object"),
])
def test_malformed_shapes_are_named_where_they_enter(bad, says):
    _, _, result = drive([chunk({"content": "x"}), bad])
    assert result["error"]["code"] == "upstream_protocol_error"
    assert says in result["error"]["message"]


def test_a_gateway_bug_is_not_blamed_on_the_upstream(monkeypatch):
    """Only the shape checks speak for the upstream: any other exception leaves feed() for the crash handler."""
    def bug(self: Any, text: str, part_type: str) -> None:
        raise TypeError("a bug of ours")
    monkeypatch.setattr(ResponseStream, "_text_delta", bug)
    stream = new_stream(model="m", response_id=RID)
    stream.start()
    with pytest.raises(TypeError, match="a bug of ours"):
        stream.feed(chunk({"content": "x"}))


def test_salvage_numbers_the_terminal_after_the_last_delivered_event():
    stream = new_stream(model="m", response_id=RID, created_at=1764000000)
    delivered = stream.start() + stream.feed(chunk({"content": "x"}))
    stream.finish(True)  # built, but say its encoding failed: never delivered
    events = delivered + stream.salvage("server_error", "bug", len(delivered))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1] is stream.terminal and stream.terminal["type"] == "response.failed"
    assert stream.terminal["response"]["error"] == {"code": "server_error", "message": "bug"}


def test_usage_counts_out_of_range_count_zero_with_a_warning():
    warnings: list[str] = []
    mapped = map_usage({"prompt_tokens": 2 ** 64, "completion_tokens": -3, "total_tokens": 1}, warnings)
    assert mapped["input_tokens"] == 0 and mapped["output_tokens"] == 0 and mapped["total_tokens"] == 0
    assert len(warnings) == 2 and "prompt_tokens" in warnings[0]


def test_unknown_finish_reason_is_stop_with_warning():
    stream, _, result = drive([chunk({"content": "x"}), chunk({}, finish="weird")])
    assert result["status"] == "completed"
    assert any("weird" in w for w in stream.warnings)


# ---------------------------------------------------------------------------------------- purity
def test_stream_processor_imports_no_io_library():
    for module in ("stream_processor", "emitter", "output_items", "usage"):  # the core and its parts
        source = (ROOT / "gateway" / f"{module}.py").read_text()
        assert "aiohttp" not in source and "asyncio" not in source, module
    code = ("import sys, gateway.stream_processor; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'aiohttp_sse', 'structlog')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_background_stream_starts_queued_then_in_progress():
    stream = new_stream()
    events = stream.queued() + stream.start()
    assert [(e["type"], e["sequence_number"], e["response"]["status"]) for e in events] == [
        ("response.created", 0, "queued"), ("response.queued", 1, "queued"), ("response.in_progress", 2, "in_progress")]
    assert stream.feed({"choices": [{"index": 0, "delta": {"content": "x"}}]})[0]["sequence_number"] == 3
