"""`truncation` over a scripted upstream with a small context window that refuses longer requests in each
provider's own wording: `auto` drops the oldest whole turns and answers, `disabled` is a 400 saying how far
over, never a 502. The upstream's request log shows which turns went."""
from __future__ import annotations

import json
from typing import Any

import openai
import pytest
import structlog

from gateway.truncation import overrun

from .helpers import sdk
from .scripted_upstream import Reply, ScriptedUpstream, text_reply

_FILLER = " lorem ipsum" * 15  # about 180 characters a turn


def _refusal(provider: str, limit: int, requested: int) -> Reply:
    """A context refusal as each server sends it (status and body)."""
    bodies = {
        "openai": {"error": {"message": f"This model's maximum context length is {limit} tokens. However, your "
                                        f"messages resulted in {requested} tokens. Please reduce the length of the "
                                        "messages.", "type": "invalid_request_error", "param": "messages",
                             "code": "context_length_exceeded"}},
        "vllm": {"object": "error", "message": f"This model's maximum context length is {limit} tokens. However, you "
                 f"requested {requested} tokens ({requested - 16} in the messages, 16 in the completion). Please "
                 "reduce the length of the messages or completion.", "type": "BadRequestError", "param": None,
                 "code": 400},
        "vllm-v1": {"error": {"message": f"The decoder prompt (length {requested}) is longer than the maximum model "
                                         f"length of {limit}. Make sure that `max_model_len` is no smaller than the "
                                         "number of text tokens.", "type": "BadRequestError", "param": None,
                              "code": 400}},
        "llama.cpp": {"error": {"code": 400, "message": f"request ({requested} tokens) exceeds the available context "
                                                        f"size ({limit} tokens), try increasing it",
                                "type": "exceed_context_size_error", "n_prompt_tokens": requested, "n_ctx": limit}},
        "ollama": {"error": {"message": f"prompt too long; exceeded max context length by {requested - limit} "
                                        "tokens", "type": "api_error", "param": None, "code": None}},
        "openrouter": {"error": {"message": f"This endpoint's maximum context length is {limit} tokens. However, you "
                                            f"requested about {requested} tokens ({requested - 16} of text input, 16 "
                                            "in the output). Please reduce the length of either one, or use the "
                                            "\"middle-out\" transform to compress your prompt automatically.",
                                 "code": 400, "metadata": {"provider_name": None}}},
    }
    return Reply([json.dumps(bodies[provider]).encode()], status=400, headers={"Content-Type": "application/json"})


def small_window(upstream: ScriptedUpstream, limit: int, provider: str = "llama.cpp") -> None:
    """The upstream counts 4 characters of the messages a token, refuses past `limit`, and refuses a tool
    message whose call is not before it (as real servers' templates do)."""
    def respond(body: dict[str, Any]) -> Reply:
        called: set[str] = set()
        for message in body["messages"]:
            called.update(call["id"] for call in message.get("tool_calls") or [])
            if message["role"] == "tool" and message["tool_call_id"] not in called:
                return Reply([b'{"error": {"message": "orphan tool message"}}'], status=400,
                             headers={"Content-Type": "application/json"})
        tokens = len(json.dumps(body["messages"])) // 4
        return _refusal(provider, limit, tokens) if tokens > limit else text_reply("ok")
    upstream.responder = respond


def _history(turns: int) -> list[dict[str, Any]]:
    """`turns` turns of user text and an answer; every third turn calls a tool and has its output."""
    items: list[dict[str, Any]] = []
    for i in range(turns):
        items.append({"role": "user", "content": f"turn {i}:{_FILLER}"})
        if i % 3 == 0:
            items += [{"type": "function_call", "call_id": f"call_{i}", "name": "lookup", "arguments": "{}"},
                      {"type": "function_call_output", "call_id": f"call_{i}", "output": f"result {i}"}]
        items.append({"role": "assistant", "content": f"answer {i}"})
    return items


def _turn_numbers(messages: list[dict[str, Any]]) -> list[int]:
    return [int(m["content"].split(":")[0].split()[1]) for m in messages if m["role"] == "user"]


@pytest.mark.parametrize("provider", ["openai", "vllm", "vllm-v1", "llama.cpp", "ollama", "openrouter"])
async def test_each_providers_refusal_is_recognised(upstream, gateway, http, provider):
    small_window(upstream, 1000, provider)
    body = {"model": "scripted", "store": False, "instructions": "Be brief.",
            "input": [*_history(40), {"role": "user", "content": "turn 40: the latest"}]}
    with structlog.testing.capture_logs() as logs:
        async with http.post(gateway.make_url("/v1/responses"), json={**body, "truncation": "auto"}) as response:
            answer = await response.json()
    assert response.status == 200, answer
    assert answer["truncation"] == "auto" and answer["output"][0]["content"][0]["text"] == "ok"
    sent = upstream.requests[-1].body["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief."}
    numbers = _turn_numbers(sent)
    assert numbers[-1] == 40 and numbers == list(range(numbers[0], 41)) and numbers[0] > 0  # the oldest went
    truncated = [line for line in logs if line["event"] == "response.truncated"]
    assert truncated and truncated[0]["dropped_turns"] == numbers[0] and truncated[0]["log_level"] == "warning"

    upstream.requests.clear()
    async with http.post(gateway.make_url("/v1/responses"), json=body) as response:
        error = (await response.json())["error"]
    assert response.status == 400 and error["code"] == "context_length_exceeded"
    assert error["type"] == "invalid_request_error"
    assert ("tokens over the model's context window" in error["message"]), error
    assert len(upstream.requests) == 1


async def test_auto_over_a_200_turn_chain_drops_the_oldest_whole_turns(upstream, gateway):
    small_window(upstream, 1000)
    client = sdk(str(gateway.make_url("")).rstrip("/"))
    previous = None
    with structlog.testing.capture_logs() as logs:
        for i in range(200):
            extra: dict[str, Any] = {"previous_response_id": previous} if previous else {}
            if i % 7 == 3:  # a tool round trip inside the chain: its call and output stay together
                first = await client.responses.create(
                    model="scripted", instructions="You are terse.", truncation="auto", **extra,
                    input=[{"role": "user", "content": f"turn {i}:{_FILLER}"},
                           {"type": "function_call", "call_id": f"call_{i}", "name": "lookup", "arguments": "{}"},
                           {"type": "function_call_output", "call_id": f"call_{i}", "output": f"result {i}"}])
            else:
                first = await client.responses.create(model="scripted", instructions="You are terse.",
                                                      truncation="auto", input=f"turn {i}:{_FILLER}", **extra)
            assert first.status == "completed" and first.truncation == "auto"
            previous = first.id
    last = upstream.requests[-1].body["messages"]
    assert last[0] == {"role": "system", "content": "You are terse."}
    numbers = _turn_numbers(last)
    assert numbers[-1] == 199 and numbers == list(range(numbers[0], 200)) and numbers[0] > 150
    assert len(json.dumps(last)) // 4 <= 1000
    assert sum(1 for line in logs if line["event"] == "response.truncated") > 100


async def test_disabled_over_a_200_turn_chain_is_a_400_saying_how_far_over(upstream, gateway):
    small_window(upstream, 1000, "vllm")
    client = sdk(str(gateway.make_url("")).rstrip("/"))
    previous, refused_at = None, None
    for i in range(200):
        extra: dict[str, Any] = {"previous_response_id": previous} if previous else {}
        try:
            previous = (await client.responses.create(model="scripted", input=f"turn {i}:{_FILLER}", **extra)).id
        except openai.BadRequestError as exc:
            refused_at = i
            assert exc.status_code == 400 and exc.code == "context_length_exceeded"
            limit, requested = overrun(exc.message)
            assert limit == 1000 and requested > 1000 and f"{requested - 1000} tokens over" in exc.message
            break
    assert refused_at is not None and 10 < refused_at < 40


async def test_a_configured_context_window_truncates_or_refuses_before_sending(upstream, make_gateway, http):
    gateway = await make_gateway(upstream={"context_window": 500})
    body = {"model": "scripted", "store": False, "max_output_tokens": 100,
            "input": [*_history(30), {"role": "user", "content": "turn 30: now"}]}
    async with http.post(gateway.make_url("/v1/responses"), json=body) as response:
        error = (await response.json())["error"]
    assert response.status == 400 and error["code"] == "context_length_exceeded"
    assert "500 tokens" in error["message"] and not upstream.requests  # refused before sending
    async with http.post(gateway.make_url("/v1/responses"), json={**body, "truncation": "auto"}) as response:
        assert response.status == 200
    sent = upstream.requests[-1].body["messages"]
    assert len(upstream.requests) == 1 and len(json.dumps(sent)) // 4 + 100 <= 500
    numbers = _turn_numbers(sent)
    assert numbers[-1] == 30 and numbers == list(range(numbers[0], 31)) and numbers[0] > 0
