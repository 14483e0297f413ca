"""The gateway's Response objects and streamed events against the Open Responses specification's schemas.

A real gateway over the cooperative scripted model (tests/cooperative_upstream.py); every Response
object the gateway hands out — each streamed snapshot, the non-streaming answer, `GET
/v1/responses/{id}`, a background poll — and every streamed event of a type the specification
defines is validated with jsonschema against tests/openresponses/schema.json (derived from the
specification's compliance suite; see the NOTICE there).
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from .cooperative_upstream import CooperativeModel
from .helpers import events_of, post
from .scripted_upstream import Reply, chunk, sse, usage

jsonschema = pytest.importorskip("jsonschema")

SCHEMA_FILE = Path(__file__).with_name("openresponses") / "schema.json"
# Event types the gateway sends under OpenAI's names, which the specification names otherwise (reasoning:
# response.reasoning.delta/.done) or not at all (custom tool input); they are left unchecked.
NOT_IN_SPEC = {"response.reasoning_text.delta", "response.reasoning_text.done",
               "response.custom_tool_call_input.delta", "response.custom_tool_call_input.done"}
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a place.",
           "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                          "required": ["location"]}}
PERSON = {"type": "json_schema", "name": "person",
          "schema": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                     "required": ["name", "age"], "additionalProperties": False}}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    if not SCHEMA_FILE.exists():
        pytest.skip(f"{SCHEMA_FILE} is absent: the specification's schemas are not in this checkout")
    return json.loads(SCHEMA_FILE.read_text())


def problems(schema: dict[str, Any], definition: str, value: Any) -> list[str]:
    """Why `value` is not a valid `definition` (ResponseResource, StreamingEvent); empty when it is.

    An event is checked against the one member of the StreamingEvent union for its type, so that a
    failure names the field instead of "not valid under any of the given schemas".
    """
    ref = f"#/definitions/{definition}"
    if definition == "StreamingEvent":
        members = schema["definitions"]["StreamingEvent"]["anyOf"]
        index = next((i for i, member in enumerate(members)
                      if value.get("type") in member["properties"]["type"]["enum"]), None)
        if index is None:
            return [f"event type {value.get('type')!r} is not defined by the specification"]
        ref += f"/anyOf/{index}"
    validator = jsonschema.Draft201909Validator({"definitions": schema["definitions"], "$ref": ref})
    out = []
    for error in validator.iter_errors(value):
        deepest = jsonschema.exceptions.best_match(error.context) if error.context else error
        where = "/".join(str(p) for p in deepest.absolute_path) or "(root)"
        out.append(f"{where}: {deepest.message[:200]}")
    return out


def check_stream(schema: dict[str, Any], raw: bytes) -> list[dict[str, Any]]:
    """Every event of a spec type, and every Response it carries, validates; the events are returned."""
    events = events_of(raw)
    assert events, raw
    for event in events:
        if event["type"] not in NOT_IN_SPEC:
            assert not problems(schema, "StreamingEvent", event), (event, problems(schema, "StreamingEvent", event))
        if "response" in event:
            assert not problems(schema, "ResponseResource", event["response"]), (
                event["type"], problems(schema, "ResponseResource", event["response"]))
    return events


@pytest.fixture
async def coop_gateway(make_gateway: Any, upstream: Any) -> Any:
    upstream.responder = CooperativeModel()
    return await make_gateway(store={"url": "memory:"})


async def test_streamed_text_events_and_snapshots_match_the_spec(schema, coop_gateway, http):
    response, raw = await post(http, coop_gateway, {"model": "scripted", "input": "Count from 1 to 5.",
                                                    "stream": True})
    assert response.status == 200
    events = check_stream(schema, raw)
    created, in_progress, completed = events[0]["response"], events[1]["response"], events[-1]["response"]
    assert created["completed_at"] is None and in_progress["completed_at"] is None
    assert isinstance(completed["completed_at"], int) and completed["completed_at"] >= completed["created_at"]
    assert completed["output"][0]["content"][0]["text"] == "1, 2, 3, 4, 5"
    for key, default in (("temperature", 1), ("top_p", 1), ("presence_penalty", 0), ("frequency_penalty", 0),
                         ("top_logprobs", 0), ("service_tier", "default"), ("max_tool_calls", None),
                         ("safety_identifier", None), ("prompt_cache_key", None)):
        assert created[key] == default and completed[key] == default, key


async def test_streamed_tool_call_echoes_tools_as_the_spec_reads_them(schema, coop_gateway, http):
    response, raw = await post(http, coop_gateway, {"model": "scripted", "stream": True, "tools": [WEATHER],
                                                    "input": "What's the weather like in San Francisco?"})
    assert response.status == 200
    completed = check_stream(schema, raw)[-1]["response"]
    assert completed["tools"] == [{**WEATHER, "strict": None}]
    call = completed["output"][0]
    assert call["type"] == "function_call" and json.loads(call["arguments"]) == {"location": "San Francisco"}


async def test_json_schema_format_non_streaming_and_retrieved(schema, coop_gateway, http):
    body = {"model": "scripted", "input": "Invent a person.", "text": {"format": PERSON}}
    response, raw = await post(http, coop_gateway, body)
    assert response.status == 200, raw
    answer = json.loads(raw)
    assert not problems(schema, "ResponseResource", answer), problems(schema, "ResponseResource", answer)
    assert answer["text"]["format"] == {**PERSON, "description": None, "strict": False}
    assert json.loads(answer["output"][0]["content"][0]["text"]) == {"name": "name", "age": 1}
    async with http.get(coop_gateway.make_url(f"/v1/responses/{answer['id']}")) as got:
        retrieved = await got.json()
    assert retrieved == answer


async def test_background_queued_and_polled_objects_match_the_spec(schema, coop_gateway, http):
    response, raw = await post(http, coop_gateway, {"model": "scripted", "input": "Say hello.", "background": True})
    assert response.status == 200, raw
    polled = [json.loads(raw)]
    while polled[-1]["status"] in ("queued", "in_progress"):
        await asyncio.sleep(0.05)
        async with http.get(coop_gateway.make_url(f"/v1/responses/{polled[0]['id']}")) as got:
            polled.append(await got.json())
    assert polled[0]["status"] == "queued" and polled[-1]["status"] == "completed"
    for one in polled:
        assert not problems(schema, "ResponseResource", one), (one["status"], problems(schema, "ResponseResource", one))
    assert polled[0]["completed_at"] is None and isinstance(polled[-1]["completed_at"], int)


async def test_request_values_are_echoed_and_only_the_usual_ones_go_upstream(schema, coop_gateway, upstream, http):
    asked = {"temperature": 0.3, "top_p": 0.8, "presence_penalty": 0.5, "frequency_penalty": -0.5, "top_logprobs": 3,
             "service_tier": "flex", "max_tool_calls": 4, "safety_identifier": "user-7", "prompt_cache_key": "k1"}
    response, raw = await post(http, coop_gateway, {"model": "scripted", "input": "Say hello.", **asked})
    assert response.status == 200, raw
    answer = json.loads(raw)
    assert not problems(schema, "ResponseResource", answer)
    assert {key: answer[key] for key in asked} == asked
    # What goes upstream is what always went: temperature and top_p, none of the echo-only fields.
    sent = upstream.requests[-1].body
    assert (sent["temperature"], sent["top_p"]) == (0.3, 0.8)
    assert not set(sent) & {"presence_penalty", "frequency_penalty", "top_logprobs", "service_tier",
                            "max_tool_calls", "safety_identifier", "prompt_cache_key"}


async def test_defaults_that_fill_the_echo_never_go_upstream(coop_gateway, upstream, http):
    response, raw = await post(http, coop_gateway, {"model": "scripted", "input": "Say hello.",
                                                    "tools": [WEATHER], "tool_choice": "none",
                                                    "text": {"format": {"type": "json_schema", "name": "p",
                                                                        "schema": {"type": "object"}}}})
    assert response.status == 200, raw
    sent = upstream.requests[-1].body
    assert set(sent) == {"model", "messages", "stream", "stream_options", "tools", "tool_choice",
                         "response_format"}
    assert sent["tools"][0]["function"].keys() == {"name", "description", "parameters"}  # no strict: null
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "p",
                                                                             "schema": {"type": "object"}}}


@pytest.mark.parametrize("field, value", [
    ("presence_penalty", 3), ("frequency_penalty", "high"), ("top_logprobs", 21), ("top_logprobs", 1.5),
    ("service_tier", 1), ("service_tier", "gold"), ("truncation", "sometimes"), ("max_tool_calls", -1), ("safety_identifier", 5), ("prompt_cache_key", []),
])
async def test_bad_echo_fields_are_clear_errors(coop_gateway, http, field, value):
    response, raw = await post(http, coop_gateway, {"model": "scripted", "input": "hi", field: value})
    assert response.status == 400, raw
    error = json.loads(raw)["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error"


async def test_the_strict_openai_sdk_reads_every_echo_back(coop_gateway):
    openai = pytest.importorskip("openai")
    async with openai.AsyncOpenAI(base_url=str(coop_gateway.make_url("/v1")), api_key="x", max_retries=0,
                                  timeout=30, _strict_response_validation=True) as client:
        formatted = await client.responses.create(
            model="scripted", input="Invent a person.", text={"format": PERSON}, reasoning={"effort": "low"},
            service_tier="flex", top_logprobs=2, prompt_cache_key="k", safety_identifier="s", truncation="auto")
        assert formatted.text.format.type == "json_schema" and formatted.text.format.description is None
        assert formatted.reasoning.effort == "low" and formatted.service_tier == "flex"
        assert (formatted.temperature, formatted.top_p, formatted.top_logprobs) == (1, 1, 2)
        stream = await client.responses.create(model="scripted", input="What's the weather in Paris?",
                                               tools=[WEATHER], stream=True)
        events = [event async for event in stream]
        assert events[0].response.completed_at is None and events[-1].response.completed_at is not None
        assert events[-1].response.tools[0].strict is None
        retrieved = await client.responses.retrieve(events[-1].response.id)
        assert retrieved.model_dump() == events[-1].response.model_dump()


async def test_reasoning_stream_matches_the_spec_where_the_spec_names_its_events(schema, coop_gateway, upstream,
                                                                                 http):
    upstream.enqueue(Reply([sse(chunk({"role": "assistant", "content": ""}),
                                chunk({"reasoning_content": "Two and two."}), chunk({"content": "4"}),
                                chunk({}, finish="stop"), chunk(choices=False, usage=usage()))]))
    response, raw = await post(http, coop_gateway, {"model": "scripted", "input": "2+2?", "stream": True,
                                                    "reasoning": {"effort": "low", "summary": "auto"}})
    assert response.status == 200
    events = check_stream(schema, raw)
    assert {e["type"] for e in events} & NOT_IN_SPEC == {"response.reasoning_text.delta",
                                                         "response.reasoning_text.done"}
    assert events[-1]["response"]["reasoning"] == {"effort": "low", "summary": "auto"}
    assert [item["type"] for item in events[-1]["response"]["output"]] == ["reasoning", "message"]
