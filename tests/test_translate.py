"""Responses request → Chat Completions request: every mapping rule and every validation error."""
from __future__ import annotations

from typing import Any

import pytest

from gateway.config import UpstreamConfig
from gateway.errors import InvalidRequest
from gateway.translate import translate_request

CONFIG = UpstreamConfig()


def tr(config: UpstreamConfig = CONFIG, **body: Any) -> Any:
    return translate_request({"model": "m", "input": "hi", **body}, config)


def messages(**body: Any) -> list[dict[str, Any]]:
    return tr(**body).body["messages"]


def invalid(body: Any, config: UpstreamConfig = CONFIG) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        translate_request(body, config)
    assert info.value.status == 400
    assert info.value.envelope()["error"]["type"] == "invalid_request_error"
    return info.value


# ---------------------------------------------------------------------------------------- basics
def test_minimal_request():
    chat = tr()
    assert chat.body == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                         "stream_options": {"include_usage": True}}
    assert chat.stream is False
    assert chat.warnings == [] and chat.options.tool_names == {}


def test_stream_flag_kept_for_the_client_upstream_always_streams():
    chat = tr(stream=True)
    assert chat.stream is True and chat.body["stream"] is True


def test_unknown_fields_ignored():
    chat = tr(include=["reasoning.encrypted_content"], prompt_cache_key="abc", client_metadata={"x": 1},
              text={"verbosity": "low"}, service_tier="auto", store=False, background=False)
    assert set(chat.body) == {"model", "messages", "stream", "stream_options"}


def test_metadata_is_echoed_only():
    chat = tr(metadata={"trace": "t1"})
    assert "metadata" not in chat.body
    assert chat.options.echo["metadata"] == {"trace": "t1"}


def test_echo_fields():
    tools = [{"type": "function", "name": "f"}, {"type": "web_search"}]
    chat = tr(instructions="Be brief.", temperature=0.3, top_p=0.9, max_output_tokens=50, tools=tools,
              tool_choice="required", parallel_tool_calls=False, store=False, user="u1",
              reasoning={"effort": "low"}, text={"format": {"type": "json_object"}}, truncation="auto",
              presence_penalty=0.5, frequency_penalty=-1, top_logprobs=2, max_tool_calls=3, service_tier="flex",
              safety_identifier="s1", prompt_cache_key="k1")
    assert chat.options.echo == {
        "background": False, "instructions": "Be brief.", "max_output_tokens": 50, "metadata": {}, "parallel_tool_calls": False,
        "previous_response_id": None, "reasoning": {"effort": "low", "summary": None}, "store": False, "temperature": 0.3,
        "text": {"format": {"type": "json_object"}}, "tool_choice": "required", "top_p": 0.9,
        "tools": [{"type": "function", "name": "f", "description": None, "parameters": None, "strict": None},
                  {"type": "web_search"}],
        "truncation": "auto", "user": "u1", "presence_penalty": 0.5, "frequency_penalty": -1, "top_logprobs": 2,
        "max_tool_calls": 3, "service_tier": "flex", "safety_identifier": "s1", "prompt_cache_key": "k1"}


def test_echo_defaults():
    assert tr().options.echo == {
        "background": False, "frequency_penalty": 0, "instructions": None, "max_output_tokens": None,
        "max_tool_calls": None, "metadata": {}, "parallel_tool_calls": True, "presence_penalty": 0,
        "previous_response_id": None, "prompt_cache_key": None, "reasoning": None, "safety_identifier": None,
        "service_tier": "default", "store": True, "temperature": 1, "text": {"format": {"type": "text"}},
        "tool_choice": "auto", "tools": [], "top_logprobs": 0, "top_p": 1, "truncation": "disabled", "user": None}


def test_echoed_tools_and_formats_have_every_field_a_client_reads_back():
    echo = tr(tools=[{"type": "namespace", "name": "mcp", "tools": [{"type": "function", "name": "g"}]},
                     {"type": "function", "name": "f", "description": "d", "strict": True}],
              text={"verbosity": "low"}, reasoning={"summary": "auto"}).options.echo
    assert echo["tools"] == [
        {"type": "namespace", "name": "mcp", "tools": [
            {"type": "function", "name": "g", "description": None, "parameters": None, "strict": None}]},
        {"type": "function", "name": "f", "description": "d", "parameters": None, "strict": True}]
    assert echo["text"] == {"format": {"type": "text"}, "verbosity": "low"}
    assert echo["reasoning"] == {"effort": None, "summary": "auto"}
    schema = {"type": "object"}
    echo = tr(text={"format": {"type": "json_schema", "schema": schema}}).options.echo
    assert echo["text"] == {"format": {"type": "json_schema", "name": "response", "description": None,
                                       "strict": False, "schema": schema}}


# ---------------------------------------------------------------------------------------- input
def test_input_string_becomes_user_message():
    assert messages(input="Hello there") == [{"role": "user", "content": "Hello there"}]


def test_message_items_with_and_without_type():
    assert messages(input=[{"role": "user", "content": "a"}, {"type": "message", "role": "user", "content": "b"}]) == [
        {"role": "user", "content": "a"}, {"role": "user", "content": "b"}]


def test_roles_and_system_merging():
    msgs = messages(instructions="Instructions.", input=[
        {"role": "developer", "content": "Dev one."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "system", "content": [{"type": "input_text", "text": "Sys two."}]},
        {"role": "user", "content": "Q2"}])
    assert msgs == [
        {"role": "system", "content": "Instructions.\n\nDev one.\n\nSys two."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"}]


def test_developer_without_instructions_becomes_system():
    assert messages(input=[{"role": "developer", "content": "D"}, {"role": "user", "content": "U"}]) == [
        {"role": "system", "content": "D"}, {"role": "user", "content": "U"}]


def test_instructions_alone():
    assert messages(instructions="I") == [{"role": "system", "content": "I"}, {"role": "user", "content": "hi"}]


def test_content_parts_text():
    msgs = messages(input=[
        {"role": "user", "content": [{"type": "input_text", "text": "one "}, {"type": "input_text", "text": "two"}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "three", "annotations": []}]}])
    assert msgs == [{"role": "user", "content": "one two"}, {"role": "assistant", "content": "three"}]


def test_input_image_url_and_data_url_with_detail():
    msgs = messages(input=[{"role": "user", "content": [
        {"type": "input_text", "text": "Compare"},
        {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "high"},
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}])
    assert msgs == [{"role": "user", "content": [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]


def test_function_calls_grouped_and_tool_messages():
    msgs = messages(input=[
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": None},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city": "Paris"}', "status": "completed"},
        {"type": "function_call", "id": "fc_2", "call_id": "call_2", "name": "get_weather",
         "arguments": '{"city": "Oslo"}', "status": "completed"},
        {"type": "function_call_output", "call_id": "call_1", "output": "21C"},
        {"type": "function_call_output", "call_id": "call_2",
         "output": [{"type": "input_text", "text": "5"}, {"type": "input_text", "text": "C"}]},
        {"role": "assistant", "content": "Paris 21C, Oslo 5C."}])
    assert msgs == [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "5C"},
        {"role": "assistant", "content": "Paris 21C, Oslo 5C."}]


def test_assistant_text_then_call_is_one_assistant_message():
    msgs = messages(input=[
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "Let me check."},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "ok"}])
    assert msgs[1] == {"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    assert msgs[2] == {"role": "tool", "tool_call_id": "call_1", "content": "ok"}


def test_calls_separated_by_output_are_separate_turns():
    msgs = messages(input=[
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "1"},
        {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c2", "output": "2"}])
    assert [m["role"] for m in msgs] == ["assistant", "tool", "assistant", "tool"]
    assert [len(m.get("tool_calls", [])) for m in msgs] == [1, 0, 1, 0]


def test_a_tool_output_without_its_call_is_a_400_as_at_openai():
    """Upstreams refuse a tool message with no assistant tool call before it; OpenAI answers 400."""
    error = invalid({"model": "m", "input": [
        {"role": "user", "content": "hi"},
        {"type": "function_call_output", "call_id": "call_missing", "output": "x"}]})
    assert error.param == "input[1].call_id" and "call_missing" in error.message
    error = invalid({"model": "m", "input": [  # the call must come before its output
        {"type": "custom_tool_call_output", "call_id": "c1", "output": "x"},
        {"type": "custom_tool_call", "call_id": "c1", "name": "f", "input": "x"}]})
    assert error.param == "input[0].call_id"


def test_items_added_to_a_conversation_may_answer_calls_added_before():
    from gateway.translate import check_items
    check_items([{"type": "function_call_output", "call_id": "call_earlier", "output": "x"}], "items")


def test_reasoning_items_accepted():
    assert messages(input=[{"type": "reasoning", "id": "rs_1", "summary": []}, {"role": "user", "content": "x"}]) == [
        {"role": "user", "content": "x"}]


def test_namespaced_function_call_in_history_uses_upstream_name():
    chat = tr(tools=[{"type": "namespace", "name": "mcp", "tools": [{"type": "function", "name": "search"}]}],
              input=[{"type": "function_call", "call_id": "c1", "name": "search", "namespace": "mcp", "arguments": "{}"}])
    assert chat.body["messages"][0]["tool_calls"][0]["function"]["name"] == "mcp__search"
    assert chat.body["tools"][0]["function"]["name"] == "mcp__search"


# ---------------------------------------------------------------------------------------- tools
def test_function_tool_flat_to_nested_strict_kept():
    params = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    chat = tr(tools=[{"type": "function", "name": "get_weather", "description": "Weather.", "parameters": params,
                      "strict": True},
                     {"type": "function", "name": "ping"}])
    assert chat.body["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description": "Weather.", "parameters": params,
                                          "strict": True}},
        {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}}]
    assert chat.options.tool_names == {}


def test_strict_false_kept():
    chat = tr(tools=[{"type": "function", "name": "f", "strict": False}])
    assert chat.body["tools"][0]["function"]["strict"] is False


def test_namespace_tools_flattened_and_mapped_back():
    chat = tr(tools=[{"type": "function", "name": "exec"},
                     {"type": "namespace", "name": "mcp", "description": "MCP tools", "tools": [
                         {"type": "function", "name": "search", "parameters": {"type": "object"}},
                         {"type": "function", "name": "fetch"}]}])
    assert [t["function"]["name"] for t in chat.body["tools"]] == ["exec", "mcp__search", "mcp__fetch"]
    assert chat.options.tool_names == {"mcp__search": ("search", "mcp"), "mcp__fetch": ("fetch", "mcp")}
    assert chat.warnings == []


def test_tool_names_upstreams_reject_are_renamed_and_mapped_back():
    chat = tr(tools=[{"type": "function", "name": "weird.name/v2"}])
    upstream = chat.body["tools"][0]["function"]["name"]
    assert upstream != "weird.name/v2"
    assert all(c.isalnum() or c in "_-" for c in upstream) and len(upstream) <= 64
    assert chat.options.tool_names == {upstream: ("weird.name/v2", None)}


@pytest.mark.parametrize("hosted", [{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs"]},
                                    {"type": "code_interpreter", "container": {"type": "auto"}}])
def test_hosted_tools_dropped_with_warning(hosted):
    chat = tr(tools=[hosted, {"type": "function", "name": "f"}])
    assert [t["function"]["name"] for t in chat.body["tools"]] == ["f"]
    assert len(chat.warnings) == 1
    assert hosted["type"] in chat.warnings[0] and "tools[0]" in chat.warnings[0]


def test_only_hosted_tools_dropped_sends_no_tools_or_tool_choice():
    chat = tr(tools=[{"type": "web_search"}], tool_choice="required", parallel_tool_calls=True)
    assert "tools" not in chat.body and "tool_choice" not in chat.body and "parallel_tool_calls" not in chat.body
    assert chat.options.echo["tools"] == [{"type": "web_search"}]


def test_hosted_tools_rejected_by_config():
    config = UpstreamConfig(hosted_tools="reject")
    error = invalid({"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f"}, {"type": "web_search"}]},
                    config)
    assert error.param == "tools[1].type"
    assert "web_search" in error.message
    # Function tools alone still pass.
    assert translate_request({"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f"}]}, config)


@pytest.mark.parametrize("choice, expected", [
    ("auto", "auto"), ("none", "none"), ("required", "required"),
    ({"type": "function", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ({"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "f"}]}, "required"),
    ({"type": "web_search"}, "auto"),
])
def test_tool_choice(choice, expected):
    chat = tr(tools=[{"type": "function", "name": "f"}], tool_choice=choice)
    assert chat.body["tool_choice"] == expected
    assert chat.options.echo["tool_choice"] == choice


def test_tool_choice_namespaced_function():
    chat = tr(tools=[{"type": "namespace", "name": "ns", "tools": [{"type": "function", "name": "f"}]}],
              tool_choice={"type": "function", "name": "f", "namespace": "ns"})
    assert chat.body["tool_choice"] == {"type": "function", "function": {"name": "ns__f"}}


def test_parallel_tool_calls():
    tools = [{"type": "function", "name": "f"}]
    assert tr(tools=tools, parallel_tool_calls=False).body["parallel_tool_calls"] is False
    assert tr(tools=tools, parallel_tool_calls=True).body["parallel_tool_calls"] is True
    assert "parallel_tool_calls" not in tr(tools=tools).body
    off = UpstreamConfig(send_parallel_tool_calls=False)
    assert "parallel_tool_calls" not in tr(off, tools=tools, parallel_tool_calls=False).body


# ---------------------------------------------------------------------------------------- sampling and format
def test_sampling_parameters_and_user():
    body = tr(temperature=0.7, top_p=0.5, user="user-42").body
    assert body["temperature"] == 0.7 and body["top_p"] == 0.5 and body["user"] == "user-42"
    body = tr(temperature=0, top_p=0).body
    assert body["temperature"] == 0 and body["top_p"] == 0


def test_max_output_tokens_to_max_tokens_or_max_completion_tokens():
    body = tr(max_output_tokens=256).body
    assert body["max_tokens"] == 256 and "max_completion_tokens" not in body
    body = tr(UpstreamConfig(max_tokens_param="max_completion_tokens"), max_output_tokens=256).body
    assert body["max_completion_tokens"] == 256 and "max_tokens" not in body


def test_an_integral_number_is_an_integer():
    """Found by schemathesis: `max_output_tokens: 256.0` (an integer to JSON Schema, and to OpenAI) was a 400."""
    chat = tr(max_output_tokens=256.0)
    assert chat.body["max_tokens"] == 256 and type(chat.body["max_tokens"]) is int
    assert chat.options.echo["max_output_tokens"] == 256
    # Found by schemathesis too (after the above): 1e300 became an integer orjson cannot write (a 500).
    assert invalid({"model": "m", "input": "hi", "max_output_tokens": 1e300}).param == "max_output_tokens"


@pytest.mark.parametrize("metadata", [{"k": False}, {"k": {"a": 1}}, ["k"], {f"k{i}": "v" for i in range(17)},
                                      {"k" * 65: "v"}, {"k": "v" * 513}])
def test_metadata_is_string_values_within_openais_limits(metadata):
    """Found by schemathesis: any object was echoed and stored as `metadata`, so the Response broke its
    schema (and the openai SDK's strict validation) on every read."""
    assert invalid({"model": "m", "input": "hi", "metadata": metadata}).param == "metadata"
    assert tr(metadata={"k" * 64: "v" * 512}).options.echo["metadata"] == {"k" * 64: "v" * 512}


@pytest.mark.parametrize("item, param", [
    ({"type": "reasoning", "summary": {}}, "input[0].summary"),
    ({"type": "reasoning", "summary": [], "encrypted_content": {}}, "input[0].encrypted_content"),
    ({"role": "user", "content": [{"type": "input_image", "image_url": "data:,", "detail": 1}]},
     "input[0].content[0].detail"),
    ({"type": "function_call_output", "call_id": "c", "output": [None]}, "input[0].output[0]"),
])
def test_wrong_types_inside_items_are_400s(item, param):
    """Found by schemathesis: these were silently dropped instead of named."""
    assert invalid({"model": "m", "input": [item]}).param == param


def test_reasoning_effort():
    chat = tr(reasoning={"effort": "high", "summary": "auto"})
    assert chat.body["reasoning_effort"] == "high"
    assert chat.options.reasoning_summary is True
    chat = tr(UpstreamConfig(send_reasoning_effort=False), reasoning={"effort": "high"})
    assert "reasoning_effort" not in chat.body
    assert chat.options.reasoning_summary is False


@pytest.mark.parametrize("fmt, expected", [
    ({"type": "text"}, None),
    ({"type": "json_object"}, {"type": "json_object"}),
    ({"type": "json_schema", "name": "person", "strict": True,
      "schema": {"type": "object", "properties": {"name": {"type": "string"}}}},
     {"type": "json_schema", "json_schema": {"name": "person", "strict": True,
                                             "schema": {"type": "object", "properties": {"name": {"type": "string"}}}}}),
    ({"type": "json_schema", "schema": {"type": "object"}},
     {"type": "json_schema", "json_schema": {"name": "response", "schema": {"type": "object"}}}),
])
def test_text_format_to_response_format(fmt, expected):
    body = tr(text={"format": fmt}).body
    assert body.get("response_format") == expected


# ---------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("body, param", [
    ({"input": "hi"}, "model"),
    ({"model": "", "input": "hi"}, "model"),
    ({"model": 5, "input": "hi"}, "model"),
    ({"model": "m"}, "input"),
    ({"model": "m", "input": 5}, "input"),
    ({"model": "m", "input": {"role": "user"}}, "input"),
])
def test_missing_or_wrong_model_and_input(body, param):
    error = invalid(body)
    assert error.param == param, error.message
    assert error.envelope()["error"]["param"] == param


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "function", "name": "f", "strict": {}}]}, "tools[0].strict"),
    ({"stream": "yes"}, "stream"),
    ({"instructions": ["a"]}, "instructions"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": 3}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_output_tokens": "100"}, "max_output_tokens"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"max_output_tokens": 1.5}, "max_output_tokens"),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"user": 42}, "user"),
    ({"store": "no"}, "store"),
    ({"text": "json"}, "text"),
    ({"text": {"format": "json"}}, "text.format"),
    ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
    # Found by schemathesis: these were sent upstream as they came.
    ({"text": {"format": {"type": "json_schema", "schema": {}, "strict": 1}}}, "text.format.strict"),
    ({"text": {"format": {"type": "json_schema", "schema": "{}"}}}, "text.format.schema"),
    ({"text": {"format": {"type": "json_schema", "name": 5, "schema": {}}}}, "text.format.name"),
    ({"reasoning": "high"}, "reasoning"),
    ({"reasoning": {"effort": 3}}, "reasoning.effort"),
    ({"tools": {"type": "function"}}, "tools"),
    ({"tools": ["f"]}, "tools[0]"),
    ({"tools": [{"type": "function"}]}, "tools[0].name"),
    ({"tools": [{"type": "function", "name": "f", "parameters": "{}"}]}, "tools[0].parameters"),
    ({"tools": [{"type": "function", "name": "f", "description": 1}]}, "tools[0].description"),
    ({"tools": [{"type": "namespace", "name": "ns"}]}, "tools[0]"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": 1}, "tool_choice"),
    ({"tool_choice": {"type": "function"}}, "tool_choice.name"),
    ({"previous_response_id": 5}, "previous_response_id"),
    ({"input": ["hi"]}, "input[0]"),
    ({"input": [{"content": "no role or type"}]}, "input[0].type"),
    ({"input": [{"type": "hologram_call", "id": "x"}]}, "input[0].type"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
    ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": ["x"]}]}, "input[0].content[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]}, "input[0].content[0].text"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
     "input[0].content[0].image_url"),
    ({"input": [{"role": "system", "content": {"text": "x"}}]}, "input[0].content"),
    ({"input": [{"role": "user", "content": "a"}, {"type": "function_call", "name": "f", "arguments": "{}"}]},
     "input[1].call_id"),
    ({"input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]}, "input[0].name"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {"a": 1}}]},
     "input[0].arguments"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": 5}]}, "input[0].output"),
])
def test_wrong_types_name_the_param(body, param):
    error = invalid({"model": "m", "input": "hi", **body})
    assert error.param == param, error.message
    assert error.envelope() == {"error": {"message": error.message, "type": "invalid_request_error",
                                          "param": param, "code": None}}


def test_body_not_an_object():
    error = invalid(["model", "m"])
    assert error.param is None


def test_a_namespace_that_is_not_a_string_is_a_clear_400():
    """Found by schemathesis: a list as `namespace` was used as a dict key (a 500)."""
    error = invalid({"model": "m", "input": "hi", "tool_choice": {"type": "function", "name": "f", "namespace": []}})
    assert error.param == "tool_choice.namespace"
    call = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}", "namespace": {"a": 1}}
    error = invalid({"model": "m", "input": [call]})
    assert error.param == "input[0].namespace"
