"""Real clients against the gateway over the scripted upstream: the openai SDK and openai-agents."""
from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT
from .scripted_upstream import Reply, chunk, sse, text_reply, tool_reply, usage

os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")  # never phone api.openai.com
# The read-only shared/ folder of external probes, when one lies beside the checkout.
SHARED = Path(os.environ.get("GATEWAY_SHARED_DIR", ROOT.parent / "shared"))

openai = pytest.importorskip("openai")

WEATHER_TOOL = {
    "type": "function", "name": "get_weather", "description": "Get the current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False},
    "strict": True,
}
TOOL_ARGS = '{"city": "Paris"}'
TOOL_RESULT = '{"city": "Paris", "temperature_c": 21, "sky": "sunny"}'


class ToolResponder:
    """Calls the first offered tool; once the last message is a tool result, answers quoting it."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, body: dict[str, Any]) -> Reply:
        last = body["messages"][-1]
        if last["role"] == "tool":
            return text_reply("The tool said: ", last["content"])
        tools = body.get("tools") or []
        if tools:
            self.calls += 1
            return tool_reply(tools[0]["function"]["name"], TOOL_ARGS, call_id=f"call_{self.calls:09d}")
        return text_reply("Hello", " there", "!")


@pytest.fixture
def responder(upstream):
    upstream.responder = ToolResponder()
    return upstream.responder


@pytest.fixture
async def client(gateway):
    async with openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key="x", max_retries=0, timeout=30,
                                  _strict_response_validation=True) as c:
        yield c


async def test_create_non_streaming(upstream, responder, client):
    r = await client.responses.create(model="scripted", input="Say hi", instructions="Be brief.",
                                      metadata={"k": "v"}, temperature=0.5)
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status == "completed"
    assert r.output_text == "Hello there!"
    assert r.model == "scripted" and r.instructions == "Be brief." and r.metadata == {"k": "v"}
    assert r.temperature == 0.5
    assert r.usage.input_tokens == 5 and r.usage.output_tokens == 7 and r.usage.total_tokens == 12
    assert r.usage.input_tokens_details.cached_tokens == 0
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    assert upstream.requests[0].body["messages"] == [{"role": "system", "content": "Be brief."},
                                                     {"role": "user", "content": "Say hi"}]


async def test_create_streaming(responder, client):
    stream = await client.responses.create(model="scripted", input="Say hi", stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello there!"
    final = events[-1].response
    assert final.status == "completed" and final.output_text == "Hello there!"
    assert final.id == events[0].response.id
    assert final.usage.total_tokens == 12


async def test_stream_helper_get_final_response(responder, client):
    seen = []
    async with client.responses.stream(model="scripted", input="Say hi") as stream:
        async for event in stream:
            seen.append(event.type)
            if event.type == "response.output_text.delta":
                assert event.snapshot in ("Hello", "Hello there", "Hello there!")
        final = await stream.get_final_response()
    assert seen[0] == "response.created" and seen[-1] == "response.completed"
    assert final.status == "completed"
    assert final.output_text == "Hello there!"


async def test_stream_helper_tool_call(responder, client):
    deltas = []
    async with client.responses.stream(model="scripted", input="Weather?", tools=[WEATHER_TOOL]) as stream:
        async for event in stream:
            if event.type == "response.function_call_arguments.delta":
                deltas.append(event.delta)
                assert event.snapshot == "".join(deltas)
        final = await stream.get_final_response()
    call = final.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.arguments == TOOL_ARGS and "".join(deltas) == TOOL_ARGS
    assert call.call_id == "call_000000001"


async def test_strict_validation_of_incomplete(upstream, client):
    upstream.enqueue(text_reply("cut", finish="length"))
    r = await client.responses.create(model="scripted", input="x", max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.max_output_tokens == 3
    assert r.output_text == "cut"


async def test_failed_stream(upstream, gateway):
    """Not strict: the SDK types `error.code` as a closed Literal that lacks the gateway's upstream_* codes
    (and context_length_exceeded, which Codex relies on), so strict validation rejects any such failure."""
    upstream.enqueue(Reply([sse(chunk({"content": "x"}), {"error": {"message": "engine died"}})]))
    async with openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key="x", max_retries=0) as client:
        events = [e async for e in await client.responses.create(model="scripted", input="x", stream=True)]
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.code == "upstream_error"
    assert events[-1].response.error.message == "engine died"


async def test_upstream_http_error_raises_the_sdk_error(upstream, client):
    from .scripted_upstream import error_reply
    upstream.enqueue(error_reply(429, "Rate limit reached, try again in 7s.", **{"Retry-After": "7"}))
    with pytest.raises(openai.RateLimitError) as info:
        await client.responses.create(model="scripted", input="x")
    assert info.value.status_code == 429
    assert info.value.code == "rate_limit_exceeded"
    assert "try again in 7s" in info.value.message


async def test_bad_request_raises_with_param(client):
    with pytest.raises(openai.BadRequestError) as info:
        await client.responses.create(model="scripted", input="x", temperature=5)
    assert info.value.param == "temperature"


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_round_trip_resending_items(upstream, responder, client, stream):
    question = {"type": "message", "role": "user", "content": "What is the weather in Paris?"}
    if stream:
        async with client.responses.stream(model="scripted", input=[question], tools=[WEATHER_TOOL]) as s:
            async for _ in s:
                pass
            first = await s.get_final_response()
    else:
        first = await client.responses.create(model="scripted", input=[question], tools=[WEATHER_TOOL], store=False)
    assert [o.type for o in first.output] == ["function_call"]
    call = first.output[0]
    assert call.name == "get_weather" and call.arguments == TOOL_ARGS and call.call_id == "call_000000001"

    items: list[Any] = [question]
    items += [o.model_dump(exclude_none=True) for o in first.output]  # what agents and Codex resend
    items.append({"type": "function_call_output", "call_id": call.call_id, "output": TOOL_RESULT})
    second = await client.responses.create(model="scripted", input=items, tools=[WEATHER_TOOL], store=False)
    assert second.status == "completed"
    assert second.output_text == f"The tool said: {TOOL_RESULT}"

    sent = upstream.requests[1].body
    assert sent["messages"] == [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_000000001", "type": "function",
             "function": {"name": "get_weather", "arguments": TOOL_ARGS}}]},
        {"role": "tool", "tool_call_id": "call_000000001", "content": TOOL_RESULT}]
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather for a city.",
        "parameters": WEATHER_TOOL["parameters"], "strict": True}}]


async def test_parallel_calls_round_trip(upstream, client):
    """Two calls in one turn come back as two function_call items and go up as one assistant message."""
    upstream.enqueue(Reply([sse(
        chunk({"role": "assistant", "tool_calls": [
            {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
            {"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"city": "Oslo"}'}}]}),
        chunk({}, finish="tool_calls"), chunk(choices=False, usage=usage()))]))
    first = await client.responses.create(model="scripted", input="Paris and Oslo?", tools=[WEATHER_TOOL])
    assert [(o.call_id, o.arguments) for o in first.output] == [("call_a", '{"city": "Paris"}'),
                                                                ("call_b", '{"city": "Oslo"}')]
    items: list[Any] = [{"role": "user", "content": "Paris and Oslo?"}]
    items += [o.model_dump(exclude_none=True) for o in first.output]
    items += [{"type": "function_call_output", "call_id": "call_a", "output": "21"},
              {"type": "function_call_output", "call_id": "call_b", "output": "5"}]
    upstream.enqueue(text_reply("Paris 21, Oslo 5."))
    second = await client.responses.create(model="scripted", input=items, tools=[WEATHER_TOOL])
    assert second.output_text == "Paris 21, Oslo 5."
    messages = upstream.requests[1].body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["call_a", "call_b"]


# ---------------------------------------------------------------------------------------- openai-agents
async def test_agents_runner_with_function_tool(upstream, responder, gateway):
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)
    invoked: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Get the current weather for a city."""
        invoked.append(city)
        return TOOL_RESULT

    client = openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key="x", max_retries=0, timeout=30)
    model = agents.OpenAIResponsesModel(model="scripted", openai_client=client)
    agent = agents.Agent(name="probe", instructions="Use tools when asked.", model=model, tools=[get_weather])
    result = await agents.Runner.run(agent, "What is the weather in Paris?", max_turns=4)
    await client.close()
    assert invoked == ["Paris"]
    assert result.final_output == f"The tool said: {TOOL_RESULT}"
    assert len(upstream.requests) == 2
    first, second = (r.body for r in upstream.requests)
    assert first["messages"][0] == {"role": "system", "content": "Use tools when asked."}
    assert first["tools"][0]["function"]["name"] == "get_weather"
    tool_message = second["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["tool_call_id"] == "call_000000001"
    assert tool_message["content"] == TOOL_RESULT
    assert second["messages"][-2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": TOOL_ARGS}


async def test_agents_run_streamed(upstream, responder, gateway):
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Get the current weather for a city."""
        return TOOL_RESULT

    client = openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key="x", max_retries=0, timeout=30)
    model = agents.OpenAIResponsesModel(model="scripted", openai_client=client)
    agent = agents.Agent(name="probe", instructions="Use tools.", model=model, tools=[get_weather])
    result = agents.Runner.run_streamed(agent, "Weather in Paris?", max_turns=4)
    count = 0
    async for _ in result.stream_events():
        count += 1
    await client.close()
    assert count > 0
    assert result.final_output == f"The tool said: {TOOL_RESULT}"


# ---------------------------------------------------------------------------------------- shared probe
PROBE_CASES = ["create_nonstream", "create_stream", "stream_helper", "tool_prev_id", "tool_stateless", "tool_stream",
               "strict_schema", "agents_run", "agents_streamed", "agents_prev_id"]


async def test_sdk_probe(upstream, responder, gateway):
    """../shared/clients/sdk_probe.py, the real-client probe, against this gateway (its default memory store)."""
    probe = SHARED / "clients" / "sdk_probe.py"
    if not probe.exists():
        pytest.skip(f"external probe {probe} not found (no shared/ folder beside the checkout)")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(probe), str(gateway.make_url("/v1")), "--model", "scripted", "--timeout", "20",
        "--only", ",".join(PROBE_CASES), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "OPENAI_AGENTS_DISABLE_TRACING": "1", "OPENAI_API_KEY": "sk-probe"})
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    text = out.decode()
    assert proc.returncode == 0, text
    for case in PROBE_CASES:
        assert f"PASS {case}:" in text, text
    assert f"{len(PROBE_CASES)} passed, 0 failed" in text
    assert json.loads(TOOL_RESULT)  # the probe's tool result is quoted by the responder
