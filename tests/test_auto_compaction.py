"""Compaction inside POST /v1/responses: `context_management` compacts a growing chain once it passes the
threshold (the next upstream requests hold the summary, not the old turns), and a `compaction_trigger` ends in
exactly one compaction item. Through the strict openai SDK, over the scripted upstream."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest
from openai.types.responses import Response

from gateway.compaction import SUMMARY_PREFIX, SUMMARY_PROMPT

from .conftest import assert_valid_stream
from .helpers import events_of, post_stream, sdk
from .scripted_upstream import Reply, ScriptedUpstream, text_reply
from .test_websocket import assert_valid_turn, create, turn_events, ws_url

_FILLER = " lorem ipsum" * 15
_MANAGEMENT = [{"type": "compaction", "compact_threshold": 600}]
_ALICE = {"Authorization": "Bearer sk-alice"}  # the owner `sdk` reads stored responses as
_ONE_ITEM_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
                    "response.output_item.done", "response.completed"]


def summarising(upstream: ScriptedUpstream) -> None:
    """Answers the summary request with a summary naming its turn count, anything else with "ok"."""
    def respond(body: dict[str, Any]) -> Reply:
        if body["messages"][-1]["content"] == SUMMARY_PROMPT:
            return text_reply(f"SUMMARY of {len(body['messages'])} messages")
        return text_reply("ok")
    upstream.responder = respond


def _is_summary_request(body: dict[str, Any]) -> bool:
    return body["messages"][-1]["content"] == SUMMARY_PROMPT


def assert_compacted_once_past_the_threshold(upstream: ScriptedUpstream, compacted_at: list[int]) -> None:
    """A chain of 16 turns under a 600-token threshold was compacted at the turns `compacted_at`."""
    assert compacted_at and compacted_at[0] > 5  # not before the threshold
    assert all(b - a > 3 for a, b in zip(compacted_at, compacted_at[1:]))  # once, then the context is small again
    summaries = [i for i, r in enumerate(upstream.requests) if _is_summary_request(r.body)]
    first = summaries[0]
    assert "turn 0:" in json.dumps(upstream.requests[first].body)  # the summary is of the whole chain
    for answered in upstream.requests[first + 1:first + 3]:  # the compacted turn, then the next turn of the chain
        sent = json.dumps(answered.body["messages"])
        assert SUMMARY_PREFIX[:40] in sent and "SUMMARY of" in sent
        assert "turn 0:" not in sent and "turn 1:" not in sent  # the old turns are gone
        assert answered.body["messages"][0] == {"role": "system", "content": "Be terse."}


async def test_context_management_compacts_a_growing_chain_once_past_the_threshold(upstream, gateway):
    summarising(upstream)
    client = sdk(str(gateway.make_url("")).rstrip("/"))
    previous, compacted_at = None, []
    for i in range(16):
        extra: dict[str, Any] = {"previous_response_id": previous} if previous else {}
        response = await client.responses.create(model="scripted", instructions="Be terse.", input=f"turn {i}:{_FILLER}",
                                                 extra_body={"context_management": _MANAGEMENT}, **extra)
        assert response.status == "completed" and response.output_text == "ok"
        if response.output[0].type == "compaction":
            compacted_at.append(i)
            assert [item.type for item in response.output] == ["compaction", "message"]
        previous = response.id
    assert_compacted_once_past_the_threshold(upstream, compacted_at)


@pytest.mark.parametrize("store", [False, True])
async def test_websocket_turns_compact_past_the_threshold(upstream, gateway, http, store):
    """The same chain as turns of one WebSocket connection: from its cache (store false) or the store."""
    summarising(upstream)
    previous, compacted_at = None, []
    async with http.ws_connect(ws_url(gateway)) as ws:
        for i in range(16):
            extra: dict[str, Any] = {"previous_response_id": previous} if previous else {}
            await ws.send_str(json.dumps(create(instructions="Be terse.", input=f"turn {i}:{_FILLER}", store=store,
                                                context_management=_MANAGEMENT, **extra)))
            events = await turn_events(ws)
            assert assert_valid_turn(events)["status"] == "completed"
            response = Response.model_validate(events[-1]["response"])  # strict: as the SDK reads it
            assert response.output_text == "ok"
            if response.output[0].type == "compaction":
                compacted_at.append(i)
                assert [item.type for item in response.output] == ["compaction", "message"]
            previous = response.id
    assert_compacted_once_past_the_threshold(upstream, compacted_at)


async def test_under_the_threshold_nothing_is_compacted(upstream, gateway):
    client = sdk(str(gateway.make_url("")).rstrip("/"))
    response = await client.responses.create(model="scripted", input="short",
                                             extra_body={"context_management": [{"type": "compaction",
                                                                                 "compact_threshold": 10000}]})
    assert [item.type for item in response.output] == ["message"] and len(upstream.requests) == 1


async def test_compaction_trigger_answers_with_exactly_one_compaction_item(upstream, gateway, http):
    summarising(upstream)
    client = sdk(str(gateway.make_url("")).rstrip("/"))
    history = [{"role": "user", "content": "plan the trip"}, {"role": "assistant", "content": "Paris, in May."}]
    response = await client.responses.create(model="scripted", store=False,
                                             input=[*history, {"type": "compaction_trigger"}])
    assert response.status == "completed" and [item.type for item in response.output] == ["compaction"]
    assert response.usage is not None and response.usage.input_tokens == 5  # the summary's
    assert len(upstream.requests) == 1 and _is_summary_request(upstream.requests[0].body)
    # The item carries on: the next request answers from it.
    item = response.output[0].model_dump(exclude_none=True)
    await client.responses.create(model="scripted", store=False, input=[item, {"role": "user", "content": "and?"}])
    sent = json.dumps(upstream.requests[-1].body["messages"])
    assert "SUMMARY of 3 messages" in sent and "Paris, in May." not in sent

    response, raw = await post_stream(http, gateway, {"input": [*history, {"type": "compaction_trigger"}],
                                                      "store": False})
    assert response.status == 200
    result = assert_valid_stream(raw)
    assert [event["type"] for event in events_of(raw)] == _ONE_ITEM_EVENTS
    assert result["status"] == "completed"


async def test_compaction_trigger_on_a_websocket_turn(upstream, gateway, http):
    """As over HTTP: exactly one compaction item, then response.completed; the next turn answers from it."""
    summarising(upstream)
    history = [{"role": "user", "content": "plan the trip"}, {"role": "assistant", "content": "Paris, in May."}]
    async with http.ws_connect(ws_url(gateway)) as ws:
        await ws.send_str(json.dumps(create(input=[*history, {"type": "compaction_trigger"}])))
        events = await turn_events(ws)
        assert [event["type"] for event in events] == _ONE_ITEM_EVENTS
        assert assert_valid_turn(events)["status"] == "completed"
        response = Response.model_validate(events[-1]["response"])
        assert [item.type for item in response.output] == ["compaction"] and response.usage.input_tokens == 5
        assert len(upstream.requests) == 1 and _is_summary_request(upstream.requests[0].body)
        await ws.send_str(json.dumps(create(input="and?", previous_response_id=response.id)))
        assert (await turn_events(ws))[-1]["type"] == "response.completed"
    sent = json.dumps(upstream.requests[-1].body["messages"])
    assert "SUMMARY of 3 messages" in sent and "Paris, in May." not in sent


async def test_a_websocket_warm_up_compacts_nothing(upstream, gateway, http):
    """`generate: false` calls no upstream, a compaction's summary included."""
    async with http.ws_connect(ws_url(gateway)) as ws:
        await ws.send_str(json.dumps(create(generate=False, context_management=_MANAGEMENT,
                                            input=[{"role": "user", "content": "plan"}, {"type": "compaction_trigger"}])))
        events = await turn_events(ws)
    assert events[-1]["type"] == "response.completed" and events[-1]["response"]["output"] == []
    assert not upstream.requests


async def test_malformed_context_management_is_a_400(upstream, gateway):
    client = sdk(str(gateway.make_url("")).rstrip("/"))
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model="scripted", input="x", extra_body={
            "context_management": [{"type": "compaction", "compact_threshold": "lots"}]})
    assert caught.value.body["param"] == "context_management[0].compact_threshold"
    assert not upstream.requests


async def _settled(client: Any, response_id: str) -> Response:
    """Poll a background response to its end."""
    while (polled := await client.responses.retrieve(response_id)).status in ("queued", "in_progress"):
        await asyncio.sleep(0.05)
    return polled


async def test_a_background_compaction_trigger_is_settled_by_the_compaction(upstream, gateway, http):
    """In the background as in the foreground: exactly one compaction item, then completed; stored, and its
    event log resumes to the same; no upstream call but the summary's."""
    summarising(upstream)
    base = str(gateway.make_url("")).rstrip("/")
    client = sdk(base)
    history = [{"role": "user", "content": "plan the trip"}, {"role": "assistant", "content": "Paris, in May."}]
    created = await client.responses.create(model="scripted", background=True,
                                            input=[*history, {"type": "compaction_trigger"}])
    response = await _settled(client, created.id)
    assert response.status == "completed" and [item.type for item in response.output] == ["compaction"]
    assert response.usage is not None and response.usage.input_tokens == 5  # the summary's
    assert len(upstream.requests) == 1 and _is_summary_request(upstream.requests[0].body)

    response, raw = await post_stream(http, gateway, {"input": [*history, {"type": "compaction_trigger"}],
                                                      "background": True}, _ALICE)
    assert response.status == 200
    assert [event["type"] for event in events_of(raw)] == [*_ONE_ITEM_EVENTS[:1], "response.queued",
                                                           *_ONE_ITEM_EVENTS[1:]]
    assert assert_valid_stream(raw)["status"] == "completed"
    assert len(upstream.requests) == 2
    response_id = events_of(raw)[0]["response"]["id"]
    resumed = [event async for event in await client.responses.retrieve(response_id, stream=True, starting_after=2)]
    assert [event.type for event in resumed] == _ONE_ITEM_EVENTS[2:]
    assert [item.type for item in resumed[-1].response.output] == ["compaction"]
    stored = await client.responses.retrieve(response_id)
    assert stored.status == "completed" and [item.type for item in stored.output] == ["compaction"]
    assert len(upstream.requests) == 2


async def test_background_context_management_compacts_once(upstream, gateway, http):
    """Past the threshold in the background: the compaction item once, the answer from the compacted context."""
    summarising(upstream)
    response, raw = await post_stream(http, gateway, {"input": f"plan the trip:{_FILLER * 20}", "background": True,
                                                      "context_management": _MANAGEMENT}, _ALICE)
    assert response.status == 200
    events = events_of(raw)
    assert [event["item"]["type"] for event in events if event["type"] == "response.output_item.added"] == [
        "compaction", "message"]
    result = assert_valid_stream(raw)
    assert result["status"] == "completed" and result["text"] == "ok"
    final = Response.model_validate(events[-1]["response"])
    assert [item.type for item in final.output] == ["compaction", "message"]
    assert len(upstream.requests) == 2 and _is_summary_request(upstream.requests[0].body)
    sent = json.dumps(upstream.requests[1].body["messages"])
    assert "SUMMARY of" in sent and "plan the trip" not in sent
    stored = await sdk(str(gateway.make_url("")).rstrip("/")).responses.retrieve(final.id)
    assert [item.type for item in stored.output] == ["compaction", "message"]
