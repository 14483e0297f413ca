"""Stored responses, previous_response_id and conversations through the real openai SDK and Agents SDK."""
from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
import pytest

from .scripted_upstream import Reply, chunk, sse, text_reply, tool_reply, usage

os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")
openai = pytest.importorskip("openai")
agents = pytest.importorskip("agents")
agents.set_tracing_disabled(True)

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Weather for a city.", "strict": True,
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                               "additionalProperties": False}}


def echo_responder(body: dict[str, Any]) -> Reply:
    """Answers with the last user message, so a conversation's history shows in the upstream request."""
    last = body["messages"][-1]
    if last["role"] == "tool":
        return text_reply("tool said ", last["content"])
    if body.get("tools") and "weather" in str(last["content"]):
        return tool_reply("get_weather", '{"city": "Paris"}', call_id="call_w1")
    return text_reply("echo: ", str(last["content"]))


@pytest.fixture
async def stored_gateway(make_gateway: Any, upstream: Any, store_url: str) -> Any:
    upstream.responder = echo_responder
    return await make_gateway(store={"url": store_url})


def sdk(gateway: Any, api_key: str = "sk-alice", strict: bool = True) -> Any:
    return openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key=api_key, max_retries=0, timeout=30,
                              _strict_response_validation=strict)


async def test_create_retrieve_delete(stored_gateway):
    async with sdk(stored_gateway) as client:
        created = await client.responses.create(model="scripted", input="hello", metadata={"k": "v"})
        assert created.output_text == "echo: hello"
        fetched = await client.responses.retrieve(created.id)
        assert fetched.model_dump() == created.model_dump()
        assert fetched.store is True if hasattr(fetched, "store") else True
        assert await client.responses.delete(created.id) is None
        with pytest.raises(openai.NotFoundError) as info:
            await client.responses.retrieve(created.id)
        assert info.value.body["message"] == f"Response with id '{created.id}' not found."
        with pytest.raises(openai.NotFoundError):
            await client.responses.delete(created.id)


async def test_store_flag_is_echoed_and_store_false_keeps_nothing(stored_gateway, http):
    url = stored_gateway.make_url("/v1/responses")
    async with http.post(url, json={"model": "scripted", "input": "a"}) as response:
        kept = await response.json()
    async with http.post(url, json={"model": "scripted", "input": "b", "store": False}) as response:
        not_kept = await response.json()
    assert kept["store"] is True and not_kept["store"] is False
    async with http.get(stored_gateway.make_url(f"/v1/responses/{kept['id']}")) as response:
        assert response.status == 200 and (await response.json())["store"] is True
    async with http.get(stored_gateway.make_url(f"/v1/responses/{not_kept['id']}")) as response:
        assert response.status == 404


async def test_stored_before_the_terminal_event_reaches_the_client(stored_gateway, http):
    """The moment response.completed arrives, another connection already finds the response."""
    body = {"model": "scripted", "input": "quick", "stream": True}
    async with http.post(stored_gateway.make_url("/v1/responses"), json=body) as response:
        async for line in response.content:
            if line.startswith(b"event: response.created"):
                created = True
            if line.startswith(b"data: ") and b'"type":"response.completed"' in line:
                import orjson
                rid = orjson.loads(line[6:])["response"]["id"]
                async with aiohttp.ClientSession() as other:
                    async with other.get(stored_gateway.make_url(f"/v1/responses/{rid}")) as got:
                        assert got.status == 200
                        assert (await got.json())["status"] == "completed"
                break
        else:
            raise AssertionError("no response.completed")
    assert created


async def test_previous_response_id_rebuilds_the_chain_exactly(stored_gateway, upstream):
    async with sdk(stored_gateway) as client:
        first = await client.responses.create(model="scripted", input="What is the weather?", tools=[WEATHER_TOOL],
                                              instructions="First instructions.")
        call = first.output[0]
        assert call.type == "function_call" and call.call_id == "call_w1"
        second = await client.responses.create(
            model="scripted", previous_response_id=first.id, tools=[WEATHER_TOOL],
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "21C"}])
        assert second.previous_response_id == first.id and second.output_text == "tool said 21C"
        third = await client.responses.create(model="scripted", previous_response_id=second.id, input="thanks",
                                              instructions="Third instructions.")
    assert third.output_text == "echo: thanks"
    assert upstream.requests[2].body["messages"] == [
        {"role": "system", "content": "Third instructions."},  # earlier instructions are not carried
        {"role": "user", "content": "What is the weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_w1", "content": "21C"},
        {"role": "assistant", "content": "tool said 21C"},
        {"role": "user", "content": "thanks"}]


async def test_chain_keeps_reasoning_signatures_and_custom_tools(make_gateway, upstream):
    """What the upstream needs next turn survives in the store: reasoning text, Gemini's signature, custom calls."""
    gateway = await make_gateway(store={"url": "memory:"})
    signature = {"google": {"thought_signature": "sig/+=="}}
    upstream.enqueue(Reply([sse(
        chunk({"role": "assistant", "reasoning_content": "Let me think."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_g", "type": "function", "extra_content": signature,
                               "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_p", "type": "function",
                               "function": {"name": "apply_patch", "arguments": '{"input": "*** patch"}'}}]}),
        chunk({}, finish="tool_calls"), chunk(choices=False, usage=usage()))]), text_reply("done"))
    tools = [WEATHER_TOOL, {"type": "custom", "name": "apply_patch", "description": "Patch files."}]
    async with sdk(gateway, strict=False) as client:
        first = await client.responses.create(model="scripted", input="go", tools=tools)
        assert [o.type for o in first.output] == ["reasoning", "function_call", "custom_tool_call"]
        await client.responses.create(model="scripted", previous_response_id=first.id, tools=tools, input=[
            {"type": "function_call_output", "call_id": "call_g", "output": "5C"},
            {"type": "custom_tool_call_output", "call_id": "call_p", "output": "applied"}])
    messages = upstream.requests[1].body["messages"]
    assert messages[1] == {"role": "assistant", "content": None, "reasoning_content": "Let me think.", "tool_calls": [
        {"id": "call_g", "type": "function", "extra_content": signature,
         "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        {"id": "call_p", "type": "function", "function": {"name": "apply_patch",
                                                          "arguments": '{"input":"*** patch"}'}}]}
    assert messages[2:] == [{"role": "tool", "tool_call_id": "call_g", "content": "5C"},
                            {"role": "tool", "tool_call_id": "call_p", "content": "applied"}]


async def test_previous_response_errors(stored_gateway, http):
    async with sdk(stored_gateway) as client, sdk(stored_gateway, api_key="sk-mallory") as other:
        mine = await client.responses.create(model="scripted", input="secret")
        dropped = await client.responses.create(model="scripted", input="x")
        await client.responses.delete(dropped.id)
        unstored = await client.responses.create(model="scripted", input="x", store=False)
        for rid, who in (("resp_nope", client), (dropped.id, client), (unstored.id, client), (mine.id, other)):
            with pytest.raises(openai.BadRequestError) as info:
                await who.responses.create(model="scripted", input="again", previous_response_id=rid)
            assert info.value.code == "previous_response_not_found" and info.value.param == "previous_response_id"
            assert info.value.body["message"] == f"Previous response with id '{rid}' not found."
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            await other.responses.delete(mine.id)
        with pytest.raises(openai.NotFoundError):
            await other.responses.input_items.list(mine.id)
        conversation = await client.conversations.create()
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.create(model="scripted", input="x", previous_response_id=mine.id,
                                          conversation=conversation.id)
        # Found by schemathesis: `param` was null, unlike every other refused create request.
        assert info.value.code == "mutually_exclusive_parameters" and info.value.param == "conversation"
        assert (await client.responses.retrieve(mine.id)).output_text == "echo: secret"


async def test_input_items_paging(stored_gateway):
    items = [{"type": "message", "role": "user", "content": f"part {i}"} for i in range(5)]
    async with sdk(stored_gateway) as client:
        created = await client.responses.create(model="scripted", input=items)
        everything = [item async for item in client.responses.input_items.list(created.id, order="asc", limit=2)]
        assert [item.content[0].text for item in everything] == [f"part {i}" for i in range(5)]
        assert all(item.id.startswith("msg_") and item.role == "user" for item in everything)
        page = await client.responses.input_items.list(created.id, limit=2)  # default order: desc
        assert [item.content[0].text for item in page.data] == ["part 4", "part 3"]
        assert page.has_more and page.first_id == everything[4].id and page.last_id == everything[3].id
        rest = await client.responses.input_items.list(created.id, after=everything[3].id, limit=20)
        assert [item.content[0].text for item in rest.data] == ["part 2", "part 1", "part 0"]
        assert not rest.has_more
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.input_items.list(created.id, limit=101)
        assert info.value.param == "limit"


async def test_include_encrypted_reasoning_on_retrieve(make_gateway, upstream):
    gateway = await make_gateway(store={"url": "memory:"})
    upstream.enqueue(Reply([sse(chunk({"role": "assistant", "reasoning_content": "hmm"}), chunk({"content": "ok"}),
                                chunk({}, finish="stop"), chunk(choices=False, usage=usage()))]))
    async with sdk(gateway) as client:
        created = await client.responses.create(model="scripted", input="x")
        plain = await client.responses.retrieve(created.id)
        sealed = await client.responses.retrieve(created.id, include=["reasoning.encrypted_content"])
    assert plain.output[0].type == "reasoning" and plain.output[0].encrypted_content is None
    assert sealed.output[0].encrypted_content


async def test_conversations_api(stored_gateway, upstream):
    async with sdk(stored_gateway) as client, sdk(stored_gateway, api_key="sk-mallory") as other:
        conversation = await client.conversations.create(
            items=[{"type": "message", "role": "user", "content": "my name is Ada"}], metadata={"topic": "names"})
        assert conversation.id.startswith("conv_") and conversation.metadata == {"topic": "names"}
        assert (await client.conversations.retrieve(conversation.id)).model_dump() == conversation.model_dump()
        updated = await client.conversations.update(conversation.id, metadata={"topic": "people"})
        assert updated.metadata == {"topic": "people"}
        turn = await client.responses.create(model="scripted", input="what is my name?",
                                             conversation=conversation.id)
        assert turn.conversation.id == conversation.id
        assert upstream.requests[-1].body["messages"] == [{"role": "user", "content": "my name is Ada"},
                                                          {"role": "user", "content": "what is my name?"}]
        await client.responses.create(model="scripted", input="and again?", conversation={"id": conversation.id})
        assert [m["content"] for m in upstream.requests[-1].body["messages"]] == [
            "my name is Ada", "what is my name?", "echo: what is my name?", "and again?"]
        listed = [item async for item in client.conversations.items.list(conversation.id, order="asc", limit=2)]
        assert [item.role for item in listed] == ["user", "user", "assistant", "user", "assistant"]
        added = await client.conversations.items.create(
            conversation.id, items=[{"type": "message", "role": "user", "content": "one more"}])
        assert len(added.data) == 1 and added.data[0].content[0].text == "one more"
        item = await client.conversations.items.retrieve(added.data[0].id, conversation_id=conversation.id)
        assert item.id == added.data[0].id
        newest = await client.conversations.items.list(conversation.id, limit=1)
        assert newest.data[0].id == added.data[0].id and newest.has_more
        after_delete = await client.conversations.items.delete(added.data[0].id, conversation_id=conversation.id)
        assert after_delete.id == conversation.id
        with pytest.raises(openai.NotFoundError):
            await client.conversations.items.retrieve(added.data[0].id, conversation_id=conversation.id)
        with pytest.raises(openai.NotFoundError):
            await other.conversations.retrieve(conversation.id)
        with pytest.raises(openai.NotFoundError):
            await other.responses.create(model="scripted", input="x", conversation=conversation.id)
        deleted = await client.conversations.delete(conversation.id)
        assert deleted.deleted and deleted.id == conversation.id
        with pytest.raises(openai.NotFoundError):
            await client.conversations.retrieve(conversation.id)


async def test_conversation_items_are_checked_when_added(stored_gateway, upstream):
    """Found by schemathesis: items were stored unchecked, so a bad one failed every later turn of the
    conversation with a 400 naming an `input[…]` the client never sent. Now adding it is the 400."""
    bad_items = ([{"type": "function_call", "name": "f", "arguments": "{}"}],   # no call_id
                 [{"type": "reasoning", "summary": [], "encrypted_content": {}}],
                 [{"type": "message", "role": "user", "content": 5}],
                 [{"type": "computer_call", "id": "cu_1"}],
                 [{"type": "message", "role": "user", "content": "x", "id": {}}])  # was replaced by a new id
    async with sdk(stored_gateway) as client:
        for items in bad_items:
            with pytest.raises(openai.BadRequestError) as info:
                await client.conversations.create(items=items)
            assert info.value.param is not None and info.value.param.startswith("items[0]"), info.value.body
        conversation = await client.conversations.create()
        with pytest.raises(openai.BadRequestError) as info:
            await client.conversations.items.create(conversation.id, items=[
                {"type": "message", "role": "user", "content": "fine"}, *bad_items[0]])
        assert info.value.param == "items[1].call_id"
        assert (await client.conversations.items.list(conversation.id)).data == []
        await client.responses.create(model="scripted", input="still works", conversation=conversation.id)


async def test_twenty_concurrent_two_turn_chains(stored_gateway, upstream):
    async def chain(i: int, client: Any) -> None:
        first = await client.responses.create(model="scripted", input=f"chain {i} turn 1")
        second = await client.responses.create(model="scripted", input=f"chain {i} turn 2",
                                               previous_response_id=first.id)
        assert second.output_text == f"echo: chain {i} turn 2"
        input_items = await client.responses.input_items.list(second.id)
        assert [item.content[0].text for item in input_items.data] == [f"chain {i} turn 2"]

    async with sdk(stored_gateway) as client:
        await asyncio.gather(*(chain(i, client) for i in range(20)))
    second_turns = [r.body["messages"] for r in upstream.requests if "turn 2" in str(r.body["messages"][-1])]
    assert len(second_turns) == 20
    for messages in second_turns:
        i = messages[-1]["content"].split()[1]
        assert [m["content"] for m in messages] == [f"chain {i} turn 1", f"echo: chain {i} turn 1",
                                                     f"chain {i} turn 2"]


async def test_limits_are_clear_400s(make_gateway, upstream):
    gateway = await make_gateway(store={"url": "memory:", "max_chain_length": 2, "max_stored_bytes": 2000})
    async with sdk(gateway) as client:
        first = await client.responses.create(model="scripted", input="1")
        second = await client.responses.create(model="scripted", input="2", previous_response_id=first.id)
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.create(model="scripted", input="3", previous_response_id=second.id)
        assert info.value.code == "chain_too_long" and "store.max_chain_length" in info.value.message
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.create(model="scripted", input="x" * 3000)
        assert info.value.code == "stored_size_exceeded" and info.value.param == "input"
        assert (await client.responses.create(model="scripted", input="x" * 3000, store=False)).status == "completed"


async def test_store_down_503_for_stateful_requests_stateless_keep_working(make_gateway, upstream, http):
    gateway = await make_gateway(store={"url": "redis://127.0.0.1:1/0"})
    async with sdk(gateway, strict=False) as client:
        assert (await client.responses.create(model="scripted", input="x", store=False)).status == "completed"
        for call in (client.responses.create(model="scripted", input="x"),
                     client.responses.retrieve("resp_x"),
                     client.responses.create(model="scripted", input="x", store=False, previous_response_id="resp_x"),
                     client.conversations.create()):
            with pytest.raises(openai.InternalServerError) as info:
                await call
            assert info.value.status_code == 503 and info.value.code == "store_unavailable"
    assert len(upstream.requests) == 1


# ---------------------------------------------------------------------------------------- openai-agents
async def test_agents_auto_previous_response_id(stored_gateway, upstream):
    invoked: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Weather for a city."""
        invoked.append(city)
        return "21C"

    async with sdk(stored_gateway, strict=False) as client:
        agent = agents.Agent(name="a", instructions="Use tools.", tools=[get_weather],
                             model=agents.OpenAIResponsesModel(model="scripted", openai_client=client))
        result = await agents.Runner.run(agent, "what is the weather?", max_turns=4, auto_previous_response_id=True)
    assert invoked == ["Paris"] and result.final_output == "tool said 21C"
    second = upstream.requests[1].body["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "tool"]


async def test_agents_openai_conversations_session(stored_gateway, upstream):
    async with sdk(stored_gateway, strict=False) as client:
        session = agents.OpenAIConversationsSession(openai_client=client)
        agent = agents.Agent(name="a", instructions="Be brief.",
                             model=agents.OpenAIResponsesModel(model="scripted", openai_client=client))
        await agents.Runner.run(agent, "my name is Ada", session=session)
        result = await agents.Runner.run(agent, "what is my name?", session=session)
        assert result.final_output == "echo: what is my name?"
        history = await session.get_items()
    assert [m["content"] for m in upstream.requests[-1].body["messages"]] == [
        "Be brief.", "my name is Ada", "echo: my name is Ada", "what is my name?"]
    assert len(history) == 4
