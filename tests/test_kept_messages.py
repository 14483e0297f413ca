"""Each stored response keeps the chat messages of its own items (gateway/store/history.py): a continuation
places them instead of translating its whole chain again, and sends the upstream exactly the bytes it sent
when it translated every item, on every store, under other translation options, and from records of an
earlier version, which have none."""
from __future__ import annotations

from typing import Any

import orjson

from gateway.config import UpstreamConfig
from gateway.reasoning import reasoning_sealer
from gateway.state import STATE
from gateway.translate import translation_keys, turn_messages

from .conftest import routed_config, upstream_entry
from .helpers import post
from .scripted_upstream import Reply, chunk, error_reply, sse, text_reply, usage
from .test_websocket import assert_valid_turn, create as create_message, turn_events, ws_url

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Weather for a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
SIGNATURE = {"google": {"thought_signature": "sig/+=="}}


def thinking_call() -> Reply:
    return Reply([sse(chunk({"role": "assistant", "reasoning_content": "Let me look."}),
                      chunk({"tool_calls": [{"index": 0, "id": "call_w1", "type": "function", "extra_content": SIGNATURE,
                                             "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]}),
                      chunk({}, finish="tool_calls"), chunk(choices=False, usage=usage()))])


def thinking_text(text: str) -> Reply:
    return Reply([sse(chunk({"role": "assistant", "reasoning_content": "Easy."}), chunk({"content": text}),
                      chunk({}, finish="stop"), chunk(choices=False, usage=usage()))])


# A chain's turns: (input, the upstream's answer). The first starts with a developer message.
TURNS = [
    ([{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Weather in Oslo?"}], thinking_call()),
    ([{"type": "function_call_output", "call_id": "call_w1", "output": "21C"}], thinking_text("It is 21C.")),
    ("thanks", text_reply("You are welcome.")),
    ([{"role": "user", "content": [{"type": "input_text", "text": "and "}, {"type": "input_text", "text": "later?"}]}],
     text_reply("Same.")),
]
# The continuation starts with an assistant message, which merges into the chain's last answer.
NEXT = {"tools": [WEATHER_TOOL], "instructions": "Answer in English.", "store": False,
        "input": [{"role": "assistant", "content": " (Really.)"}, {"role": "user", "content": "bye"}]}


async def create(http: Any, gateway: Any, body: dict[str, Any]) -> dict[str, Any]:
    response, raw = await post(http, gateway, body)
    assert response.status == 200, raw
    return orjson.loads(raw)


async def build_chain(gateway: Any, upstream: Any, http: Any, model: str) -> list[str]:
    ids: list[str] = []
    for items, reply in TURNS:
        upstream.enqueue(reply)
        body = {"model": model, "input": items, "tools": [WEATHER_TOOL],
                **({"previous_response_id": ids[-1]} if ids else {})}
        ids.append((await create(http, gateway, body))["id"])
    return ids


async def continued(gateway: Any, upstream: Any, http: Any, model: str, tip: str) -> bytes:
    """The bytes the upstream got for the continuation of `tip`."""
    await create(http, gateway, {"model": model, "previous_response_id": tip, **NEXT})
    return upstream.requests[-1].raw


async def records(gateway: Any, ids: list[str]) -> dict[str, bytes]:
    return await STATE.get(gateway.app).stored.store.get_responses(ids)


async def rewrite(gateway: Any, ids: list[str], change: Any) -> None:
    """Each record of `ids` through `change` (its parsed record, `chain` still last), written back."""
    store = STATE.get(gateway.app).stored.store
    for rid, raw in (await records(gateway, ids)).items():
        await store.put_response(rid, orjson.dumps(change(orjson.loads(raw))), 3600)


def without_kept(record: dict[str, Any]) -> dict[str, Any]:
    """A record as the previous version wrote it: no kept messages."""
    return {key: value for key, value in record.items() if key not in ("upstream", "upstream_bytes")}


def edited(record: dict[str, Any]) -> dict[str, Any]:
    """A record whose kept user messages say so: where they are sent, the kept messages were placed."""
    for message in record["upstream"]["messages"]:
        if message["role"] == "user":
            message["content"] = "kept: " + str(message["content"])
    record["upstream_bytes"] = len(orjson.dumps(record["upstream"]))
    return record


EDITED = ["kept: Weather in Oslo?", "kept: thanks", "kept: and later?", "bye"]   # the user messages then sent


async def test_kept_messages_send_the_bytes_a_whole_translation_sends(start_gateway, three_upstreams, store_url, http):
    alpha, beta, _ = three_upstreams
    # beta translates otherwise (mistral call ids, reasoning under another field), and is alpha's fallback.
    gateway = await start_gateway(routed_config([
        upstream_entry("alpha", alpha.url, models=["alpha-model"], fallbacks=["beta"]),
        upstream_entry("beta", beta.url, models=["beta-model"], tool_call_id_style="mistral",
                       reasoning_field="reasoning")], store={"url": store_url}))
    ids = await build_chain(gateway, alpha, http, "alpha-model")
    assert all(b'"upstream_bytes":' in raw for raw in (await records(gateway, ids)).values())

    kept = await continued(gateway, alpha, http, "alpha-model", ids[-1])
    other = await continued(gateway, beta, http, "beta-model", ids[-1])
    alpha.enqueue(error_reply(503, "busy"))   # alpha fails: beta gets the request, translated for it
    failed_over = await continued(gateway, beta, http, "alpha-model", ids[-1])
    await rewrite(gateway, ids, without_kept)
    assert not any(b'"upstream_bytes":' in raw for raw in (await records(gateway, ids)).values())
    whole = await continued(gateway, alpha, http, "alpha-model", ids[-1])
    other_whole = await continued(gateway, beta, http, "beta-model", ids[-1])

    assert kept == whole
    assert other == other_whole
    messages = orjson.loads(kept)["messages"]
    assert orjson.loads(failed_over)["messages"] == orjson.loads(other)["messages"] != messages
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant", "user", "assistant",
                                              "user", "assistant", "user"]
    assert messages[0] == {"role": "system", "content": "Answer in English.\n\nBe brief."}
    assert messages[2]["reasoning_content"] == "Let me look." and messages[2]["tool_calls"][0]["id"] == "call_w1"
    assert messages[-2] == {"role": "assistant", "content": "Same. (Really.)"}
    assert orjson.loads(other)["messages"][2]["tool_calls"][0]["id"] != "call_w1"  # mistral's 9 characters


async def test_a_continuation_places_the_kept_messages(make_gateway, upstream, http):
    """The kept messages are what is sent (not the items translated again), while their options match."""
    gateway = await make_gateway(store={"url": "memory:"})
    ids = await build_chain(gateway, upstream, http, "scripted")
    await rewrite(gateway, ids, edited)
    sent = orjson.loads(await continued(gateway, upstream, http, "scripted", ids[-1]))["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == EDITED

    await rewrite(gateway, ids[-1:], lambda record: {**record, "upstream": {**record["upstream"], "key": "other"}})
    sent = orjson.loads(await continued(gateway, upstream, http, "scripted", ids[-1]))["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == ["Weather in Oslo?", "thanks", "and later?", "bye"]


async def test_turns_that_cannot_keep_their_messages(make_gateway, upstream, http):
    """A turn whose first item would merge into the turn before keeps none; its chain is translated whole."""
    gateway = await make_gateway(store={"url": "memory:"})
    ids = await build_chain(gateway, upstream, http, "scripted")
    document = await create(http, gateway, {"model": "scripted", "previous_response_id": ids[-1],
                                            "input": [{"role": "assistant", "content": " Or not."},
                                                      {"role": "user", "content": "sure?"}]})
    raw = (await records(gateway, [document["id"]]))[document["id"]]
    assert b'"upstream_bytes":' not in raw
    sent = await continued(gateway, upstream, http, "scripted", document["id"])
    assert orjson.loads(sent)["messages"][-4:] == [
        {"role": "assistant", "content": "Same. Or not."}, {"role": "user", "content": "sure?"},
        {"role": "assistant", "content": "Hello (Really.)"}, {"role": "user", "content": "bye"}]
    await rewrite(gateway, [*ids, document["id"]], without_kept)
    assert await continued(gateway, upstream, http, "scripted", document["id"]) == sent


def test_only_turns_with_sealed_state_depend_on_the_reasoning_key():
    """An empty reasoning_key is a key of this process alone: only turns whose items carry sealed state (a
    reasoning token, a compacted window) are translated again under another key (after a restart)."""
    here, there = UpstreamConfig(), UpstreamConfig(reasoning_key="another")
    plain = [{"type": "message", "role": "user", "content": "hi"}]
    sealed = [*plain, {"type": "reasoning", "summary": [], "encrypted_content": reasoning_sealer("")("Hmm.")},
              {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Yes."}]}]
    assert turn_messages(plain, here)["key"] == turn_messages(plain, there)["key"] == translation_keys(there)[0]
    kept = turn_messages(sealed, here)
    assert kept["key"] == translation_keys(here)[1] not in translation_keys(there)
    assert kept["messages"][-1] == {"role": "assistant", "content": "Yes.", "reasoning_content": "Hmm."}


async def test_websocket_turns_keep_and_place_their_messages(make_gateway, upstream, http):
    """Over the WebSocket transport too: each stored turn keeps its messages, a continuation of a stored chain
    places them and sends the bytes a whole translation sends, and a `store: false` continuation from the
    connection's cache still has the whole chain before it."""
    gateway = await make_gateway(store={"url": "memory:"})
    async with http.ws_connect(ws_url(gateway)) as ws:
        ids: list[str] = []
        for items, reply in TURNS:
            upstream.enqueue(reply)
            await ws.send_str(orjson.dumps(create_message(input=items, tools=[WEATHER_TOOL], store=True,
                                                  **({"previous_response_id": ids[-1]} if ids else {}))).decode())
            ids.append(assert_valid_turn(await turn_events(ws))["id"])
        await ws.send_str(orjson.dumps(create_message(previous_response_id=ids[-1], **NEXT)).decode())
        assert_valid_turn(await turn_events(ws))
        from_cache = upstream.requests[-1].raw
    assert all(b'"upstream_bytes":' in raw for raw in (await records(gateway, ids)).values())

    async def continued_over_websocket() -> bytes:
        async with http.ws_connect(ws_url(gateway)) as ws:   # a new connection: the chain is read from the store
            await ws.send_str(orjson.dumps(create_message(previous_response_id=ids[-1], **{**NEXT, "store": True})).decode())
            assert_valid_turn(await turn_events(ws))
        return upstream.requests[-1].raw

    kept = await continued_over_websocket()
    assert from_cache == kept
    await rewrite(gateway, ids, edited)
    sent = orjson.loads(await continued_over_websocket())["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == EDITED
    await rewrite(gateway, ids, without_kept)
    assert await continued_over_websocket() == kept
