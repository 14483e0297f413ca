"""POST /v1/responses/compact and compacted windows as input, through the real openai SDK.

A scripted upstream writes the summary and records every request, so each test can check what
the upstream was asked: the conversation plus the summarisation prompt when compacting; the kept
user messages and the summary, and none of the compacted turns, when the window is reused.
"""
from __future__ import annotations

from typing import Any

import pytest

from gateway.compaction import KEPT_USER_CHARS, SUMMARY_PREFIX, SUMMARY_PROMPT, kept_user_messages
from gateway.sealing import sealer_for

from .helpers import post, sdk
from .scripted_upstream import error_reply, text_reply

openai = pytest.importorskip("openai")

SUMMARY = "Goal: launch on Tuesday. Done: agreed to notify support first. Next: send the notice."
ASSISTANT_TURN = "Understood. The launch is Tuesday, with support notified beforehand."
CONVERSATION = [
    {"type": "message", "role": "user", "content": "We agreed to launch on Tuesday and notify support first."},
    {"type": "message", "role": "assistant", "content": ASSISTANT_TURN},
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Compress this for later."}]},
]


def texts(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(role, text) of chat messages, content parts joined."""
    out = []
    for message in messages:
        content = message.get("content") or ""
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content)
        out.append((message["role"], content))
    return out


def as_input(compacted: Any) -> list[dict[str, Any]]:
    """A CompactedResponse's output, sent back as input items the way an SDK user does."""
    return [item.model_dump(exclude_none=True) for item in compacted.output]


async def test_sdk_compacts_then_the_window_continues_with_the_summary(upstream, gateway):
    upstream.enqueue(text_reply(SUMMARY))
    async with sdk(str(gateway.make_url("")).rstrip("/")) as client:  # strict response validation
        compacted = await client.responses.compact(model="scripted", input=CONVERSATION, instructions="Be brief.",
                                                   prompt_cache_key="launch-plan")
        assert compacted.object == "response.compaction" and compacted.id.startswith("resp_")
        assert [item.type for item in compacted.output] == ["compaction"]
        assert compacted.output[0].encrypted_content.startswith("gwr1.")
        assert SUMMARY not in compacted.output[0].encrypted_content
        assert compacted.usage.input_tokens == 5 and compacted.usage.total_tokens == 12

        asked = upstream.requests[0].body
        assert texts(asked["messages"]) == [
            ("system", "Be brief."), ("user", CONVERSATION[0]["content"]), ("assistant", ASSISTANT_TURN),
            ("user", "Compress this for later."), ("user", SUMMARY_PROMPT)]
        assert "tools" not in asked

        upstream.enqueue(text_reply("Sending the notice now."))
        answer = await client.responses.create(model="scripted", input=[
            *as_input(compacted), {"type": "message", "role": "user", "content": "Go ahead."}])
        assert answer.output_text == "Sending the notice now."
    sent = texts(upstream.requests[1].body["messages"])
    assert sent == [("user", CONVERSATION[0]["content"]), ("user", "Compress this for later."),
                    ("user", SUMMARY_PREFIX + SUMMARY), ("user", "Go ahead.")]
    assert ASSISTANT_TURN not in str(upstream.requests[1].body)


async def test_open_responses_path_and_a_recompaction_keeps_the_earlier_window(upstream, gateway, http):
    upstream.enqueue(text_reply("first summary"), text_reply("second summary"))
    response, raw = await post(http, gateway, {"model": "scripted", "input": CONVERSATION},
                               path="/responses/compact")
    assert response.status == 200, raw
    first = response_json(raw)
    window = [*first["output"], {"type": "message", "role": "assistant", "content": "Notice sent."},
              {"type": "message", "role": "user", "content": "Now the release notes."}]
    response, raw = await post(http, gateway, {"model": "scripted", "input": window}, path="/v1/responses/compact")
    assert response.status == 200, raw
    # The second summary was written knowing the first; the user messages the first kept are kept again.
    asked = texts(upstream.requests[1].body["messages"])
    assert ("user", SUMMARY_PREFIX + "first summary") in asked and ("assistant", "Notice sent.") in asked
    upstream.enqueue(text_reply("ok"))
    await post(http, gateway, {"model": "scripted", "input": response_json(raw)["output"]})
    assert texts(upstream.requests[2].body["messages"]) == [
        ("user", CONVERSATION[0]["content"]), ("user", "Compress this for later."),
        ("user", "Now the release notes."), ("user", SUMMARY_PREFIX + "second summary")]


def response_json(raw: bytes) -> dict[str, Any]:
    import orjson
    return orjson.loads(raw)


async def test_previous_response_id_compacts_the_stored_chain(upstream, make_gateway, store_url):
    gateway = await make_gateway(store={"url": store_url})
    async with sdk(str(gateway.make_url("")).rstrip("/")) as client:
        upstream.enqueue(text_reply("Noted: slate."), text_reply("Blue."))
        first = await client.responses.create(model="scripted", input="Remember the code word: slate.")
        second = await client.responses.create(model="scripted", input="Favourite colour?",
                                               previous_response_id=first.id)
        upstream.enqueue(text_reply("The code word is slate; the colour answer was blue."))
        compacted = await client.responses.compact(model="scripted", previous_response_id=second.id,
                                                   input="One more thing: ship it Friday.")
        assert [item.type for item in compacted.output] == ["compaction"]
    assert texts(upstream.requests[2].body["messages"]) == [
        ("user", "Remember the code word: slate."), ("assistant", "Noted: slate."), ("user", "Favourite colour?"),
        ("assistant", "Blue."), ("user", "One more thing: ship it Friday."), ("user", SUMMARY_PROMPT)]


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"input": CONVERSATION}, "model", "missing_required_parameter"),
    ({"model": "", "input": CONVERSATION}, "model", "missing_required_parameter"),
    ({"model": 7, "input": CONVERSATION}, "model", "invalid_type"),
    ({"model": "scripted", "input": 5}, "input", "invalid_type"),
    ({"model": "scripted", "input": CONVERSATION, "instructions": ["x"]}, "instructions", "invalid_type"),
    ({"model": "scripted", "input": CONVERSATION, "prompt_cache_key": 1}, "prompt_cache_key", "invalid_type"),
    ({"model": "scripted", "input": CONVERSATION, "previous_response_id": True}, "previous_response_id",
     "invalid_type"),
    ({"model": "scripted"}, "input", "missing_required_parameter"),
    ({"model": "scripted", "input": ["text"]}, "input[0]", None),
    ({"model": "scripted", "input": [{"type": "message", "role": "robot", "content": "x"}]}, "input[0].role", None),
    ({"model": "scripted", "input": "x", "previous_response_id": "resp_missing"}, "previous_response_id",
     "previous_response_not_found"),
    ([1, 2], None, None),
])
async def test_bad_requests_are_400s_before_the_upstream(upstream, gateway, http, body, param, code):
    response, raw = await post(http, gateway, body, path="/v1/responses/compact")
    assert response.status == 400, raw
    error = response_json(raw)["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["code"] == code
    assert upstream.requests == []


async def test_not_json_and_sdk_missing_model(gateway, http, upstream):
    response, raw = await post(http, gateway, b"{not json", path="/v1/responses/compact")
    assert response.status == 400 and response_json(raw)["error"]["code"] == "invalid_json"
    async with sdk(str(gateway.make_url("")).rstrip("/")) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.compact(model="", input="hello")
    assert info.value.param == "model"
    assert upstream.requests == []


async def test_upstream_failure_is_an_error_envelope(upstream, gateway, http):
    upstream.enqueue(error_reply(500, "model crashed"))
    response, raw = await post(http, gateway, {"model": "scripted", "input": CONVERSATION},
                               path="/v1/responses/compact")
    assert response.status == 500, raw  # the upstream's status, as /v1/responses answers it
    assert response_json(raw)["error"] == {"message": "model crashed", "type": "invalid_request_error",
                                           "param": None, "code": "upstream_error"}
    upstream.enqueue(text_reply("  "))
    response, raw = await post(http, gateway, {"model": "scripted", "input": CONVERSATION},
                               path="/v1/responses/compact")
    assert response.status == 502 and response_json(raw)["error"]["code"] == "empty_summary", raw


@pytest.mark.parametrize("token", [
    sealer_for("another gateway's key").seal({"c": "FOREIGN SUMMARY", "u": []}),
    sealer_for("").seal({"r": "a reasoning token, not a window"}),
    "gwr1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "not-a-token",
], ids=["another key", "a reasoning token", "altered", "not a token"])
async def test_a_window_this_gateway_cannot_open_is_dropped_with_a_warning(upstream, make_gateway, http,
                                                                           log_capture, token):
    lines = log_capture("info")
    gateway = await make_gateway(log_level="info")
    upstream.enqueue(text_reply("fine"))
    response, raw = await post(http, gateway, {"model": "scripted", "input": [
        {"type": "compaction", "encrypted_content": token}, {"role": "user", "content": "Continue."}]})
    assert response.status == 200, raw
    assert texts(upstream.requests[0].body["messages"]) == [("user", "Continue.")]
    warnings = [line["warning"] for line in lines() if line["event"] == "response.warning"]
    assert len(warnings) == 1 and "input[0].encrypted_content" in warnings[0] and "dropped" in warnings[0]


async def test_the_window_opens_only_under_the_key_that_sealed_it(upstream, make_gateway, http):
    """Two gateways (or providers) with different reasoning keys: one's window is the other's foreign token."""
    sealing = await make_gateway(upstream={"reasoning_key": "key-one"})
    other = await make_gateway(upstream={"reasoning_key": "key-two"})
    upstream.enqueue(text_reply("SEALED SUMMARY"), text_reply("a"), text_reply("b"))
    _, raw = await post(http, sealing, {"model": "scripted", "input": CONVERSATION}, path="/v1/responses/compact")
    window = [*response_json(raw)["output"], {"role": "user", "content": "Go."}]
    await post(http, sealing, {"model": "scripted", "input": window})
    await post(http, other, {"model": "scripted", "input": window})
    assert ("user", SUMMARY_PREFIX + "SEALED SUMMARY") in texts(upstream.requests[1].body["messages"])
    assert texts(upstream.requests[2].body["messages"]) == [("user", "Go.")]


def test_kept_user_messages_are_the_most_recent_that_fit():
    big = "x" * (KEPT_USER_CHARS - 10)
    items = [{"type": "message", "role": "user", "content": "oldest"},
             {"type": "message", "role": "user", "content": big},
             {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "latest"}]}]
    assert [m["content"] for m in kept_user_messages(items, "")] == [big, [{"type": "input_text", "text": "latest"}]]
    image = {"type": "message", "role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64," + "A" * KEPT_USER_CHARS}]}
    assert kept_user_messages([*items, image], "") == []  # the image alone is over the budget
