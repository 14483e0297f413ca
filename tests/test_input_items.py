"""Every input item type of the installed openai SDK's ResponseInputItemParam, through the strict SDK.

The types are enumerated from the SDK itself: a type added in a new SDK release fails
`test_every_sdk_input_item_type_has_a_sample` until the gateway handles it (and a sample is added here).
"""
from __future__ import annotations

import typing

import openai
import pytest
from openai.types.responses import response_input_item_param

from .helpers import sdk
from .scripted_upstream import text_reply


def _sdk_item_types() -> set[str]:
    types = set()
    for param in typing.get_args(response_input_item_param.ResponseInputItemParam):
        hint = typing.get_type_hints(param)["type"]
        types.update(arg for arg in _literals(hint) if isinstance(arg, str))
    return types


def _literals(hint: typing.Any) -> list[typing.Any]:
    if typing.get_origin(hint) is typing.Literal:
        return list(typing.get_args(hint))
    return [value for arg in typing.get_args(hint) for value in _literals(arg)]


_USER = {"role": "user", "content": "go on"}

# Each type: the items to send (the sample, with its call where it is an output) and what the upstream must get.
# "call": an assistant tool call of that name; "tool": a tool message with that text; "context": assistant text
# containing it; "drop": nothing (a warning); "message": the usual message.
SAMPLES: dict[str, tuple[list[dict[str, typing.Any]], str, str]] = {
    "message": ([{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
                "message", "hi"),
    "function_call": ([{"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
                       {"type": "function_call_output", "call_id": "c1", "output": "found"}], "call", "lookup"),
    "function_call_output": ([{"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
                              {"type": "function_call_output", "call_id": "c1", "output": "found"}], "tool", "found"),
    "custom_tool_call": ([{"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** x"},
                          {"type": "custom_tool_call_output", "call_id": "c2", "output": "done"}], "call", "apply_patch"),
    "custom_tool_call_output": ([{"type": "custom_tool_call", "call_id": "c2", "name": "patch", "input": "x"},
                                 {"type": "custom_tool_call_output", "call_id": "c2", "output": "patched"}],
                                "tool", "patched"),
    "reasoning": ([{"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "hm"}]}],
                  "drop", ""),
    "compaction": ([{"type": "compaction", "encrypted_content": "not sealed here"}], "drop", ""),
    "additional_tools": ([{"type": "additional_tools", "tools": [{"type": "function", "name": "extra"}]}],
                         "drop", ""),
    "item_reference": ([{"type": "item_reference", "id": "REFERENCE"}], "message", "remember me"),
    "local_shell_call": ([{"type": "local_shell_call", "id": "lsc_1", "call_id": "c3", "status": "completed",
                           "action": {"type": "exec", "command": ["ls", "-la"], "env": {}}},
                          {"type": "local_shell_call_output", "id": "c3", "output": "README.md"}],
                         "call", "local_shell"),
    "local_shell_call_output": ([{"type": "local_shell_call", "id": "lsc_1", "call_id": "c3", "status": "completed",
                                  "action": {"type": "exec", "command": ["ls"], "env": {}}},
                                 {"type": "local_shell_call_output", "id": "c3", "output": "README.md"}],
                                "tool", "README.md"),
    "shell_call": ([{"type": "shell_call", "call_id": "c4", "action": {"commands": ["pwd"]}},
                    {"type": "shell_call_output", "call_id": "c4",
                     "output": [{"stdout": "/work", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}}]}],
                   "call", "shell"),
    "shell_call_output": ([{"type": "shell_call", "call_id": "c4", "action": {"commands": ["pwd"]}},
                           {"type": "shell_call_output", "call_id": "c4",
                            "output": [{"stdout": "/work", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}}]}],
                          "tool", "/work\n(exit code 0)"),
    "apply_patch_call": ([{"type": "apply_patch_call", "call_id": "c5", "status": "completed",
                           "operation": {"type": "create_file", "path": "a.txt", "diff": "+a"}},
                          {"type": "apply_patch_call_output", "call_id": "c5", "status": "completed"}],
                         "call", "apply_patch"),
    "apply_patch_call_output": ([{"type": "apply_patch_call", "call_id": "c5", "status": "completed",
                                  "operation": {"type": "delete_file", "path": "a.txt"}},
                                 {"type": "apply_patch_call_output", "call_id": "c5", "status": "failed",
                                  "output": "no such file"}], "tool", "failed: no such file"),
    "computer_call": ([{"type": "computer_call", "id": "cu_1", "call_id": "c6", "status": "completed",
                        "pending_safety_checks": [], "action": {"type": "click", "x": 1, "y": 2, "button": "left"}},
                       {"type": "computer_call_output", "call_id": "c6",
                        "output": {"type": "computer_screenshot", "image_url": "data:image/png;base64,AA=="}}],
                      "call", "computer"),
    "computer_call_output": ([{"type": "computer_call", "id": "cu_1", "call_id": "c6", "status": "completed",
                               "pending_safety_checks": [], "action": {"type": "screenshot"}},
                              {"type": "computer_call_output", "call_id": "c6",
                               "output": {"type": "computer_screenshot", "image_url": "data:image/png;base64,AA=="}}],
                             "tool", "(screenshot taken)"),
    "program": ([{"type": "program", "id": "pg_1", "call_id": "c7", "code": "print(1)", "fingerprint": "f"},
                 {"type": "program_output", "id": "po_1", "call_id": "c7", "result": "1", "status": "completed"}],
                "call", "program"),
    "program_output": ([{"type": "program", "id": "pg_1", "call_id": "c7", "code": "print(1)", "fingerprint": "f"},
                        {"type": "program_output", "id": "po_1", "call_id": "c7", "result": "1",
                         "status": "completed"}], "tool", "1"),
    "tool_search_call": ([{"type": "tool_search_call", "call_id": "c8", "execution": "client",
                           "arguments": {"query": "weather"}},
                          {"type": "tool_search_output", "call_id": "c8", "execution": "client",
                           "tools": [{"type": "function", "name": "get_weather"}]}], "call", "tool_search"),
    "tool_search_output": ([{"type": "tool_search_call", "execution": "server", "arguments": {"query": "weather"}},
                            {"type": "tool_search_output", "execution": "server",
                             "tools": [{"type": "function", "name": "get_weather"}]}],
                           "context", "tool search found: get_weather"),
    "web_search_call": ([{"type": "web_search_call", "id": "ws_1", "status": "completed",
                          "action": {"type": "search", "query": "gateway news"}}], "context", "web search: gateway news"),
    "file_search_call": ([{"type": "file_search_call", "id": "fs_1", "status": "completed", "queries": ["budget"],
                           "results": [{"filename": "plan.md", "text": "the budget is 3"}]}],
                         "context", "plan.md: the budget is 3"),
    "mcp_call": ([{"type": "mcp_call", "id": "mcp_1", "server_label": "git", "name": "log", "arguments": "{}",
                   "output": "3 commits"}], "call", "mcp__git__log"),  # as the gateway's tool loop ran it
    "mcp_list_tools": ([{"type": "mcp_list_tools", "id": "mcpl_1", "server_label": "git", "tools": []}], "drop", ""),
    "mcp_approval_request": ([{"type": "mcp_approval_request", "id": "mcpr_1", "server_label": "git",
                               "name": "push", "arguments": "{}"}], "drop", ""),
    "mcp_approval_response": ([{"type": "mcp_approval_response", "approval_request_id": "mcpr_1",
                                "approve": False}], "drop", ""),
    "image_generation_call": ([{"type": "image_generation_call", "id": "ig_1", "status": "completed",
                                "result": "AAAA", "revised_prompt": "a red fox"}], "context", "generated an image: a red fox"),
    "code_interpreter_call": ([{"type": "code_interpreter_call", "id": "ci_1", "status": "completed",
                                "container_id": "cntr_1", "code": "print(6*7)",
                                "outputs": [{"type": "logs", "logs": "42"}]}], "context", "output:\n42"),
    "configuration_update": ([{"type": "configuration_update", "reasoning": {"effort": "low"}}], "drop", ""),
}
# Handled elsewhere: a request ending with it answers with one compaction item (tests/test_auto_compaction.py).
ELSEWHERE = {"compaction_trigger"}


def test_every_sdk_input_item_type_has_a_sample():
    assert _sdk_item_types() - ELSEWHERE == set(SAMPLES) - {"message"} | {"message"}


def _assistant_text(messages: list[dict[str, typing.Any]]) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] == "assistant" and isinstance(m.get("content"), str))


@pytest.mark.parametrize("kind", sorted(SAMPLES))
async def test_each_input_item_type_through_the_strict_sdk(upstream, gateway, kind):
    client = sdk(str(gateway.make_url("")).rstrip("/"))
    items, expect, needle = SAMPLES[kind]
    previous = None
    if kind == "item_reference":
        first = await client.responses.create(model="scripted", input="remember me")
        stored = [item async for item in client.responses.input_items.list(first.id)]
        items = [{"type": "item_reference", "id": stored[0].id}]
        previous = first.id
    upstream.enqueue(text_reply("ok"))
    extra = {"previous_response_id": previous} if previous else {}
    response = await client.responses.create(model="scripted", input=[*items, _USER], **extra)
    assert response.status == "completed" and response.output_text == "ok"
    messages = upstream.requests[-1].body["messages"]
    assert messages[-1] == {"role": "user", "content": "go on"}
    if expect == "call":
        names = [call["function"]["name"] for m in messages for call in m.get("tool_calls") or []]
        assert needle in names, messages
        assert any(m["role"] == "tool" for m in messages), messages  # its output answers it
    elif expect == "tool":
        assert any(m["role"] == "tool" and m["content"] == needle for m in messages), messages
    elif expect == "context":
        assert needle in _assistant_text(messages), messages
    elif expect == "message":
        assert messages[-2]["content"] == needle, messages
    else:
        assert [m for m in messages if m["role"] != "system"] == [{"role": "user", "content": "go on"}], messages


async def test_item_reference_follows_the_owner_rules(upstream, gateway):
    alice = sdk(str(gateway.make_url("")).rstrip("/"))
    bob = openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key="sk-bob", max_retries=0)
    first = await alice.responses.create(model="scripted", input="alice's secret")
    item_id = [item async for item in alice.responses.input_items.list(first.id)][0].id
    with pytest.raises(openai.BadRequestError) as caught:  # another owner cannot even name alice's response
        await bob.responses.create(model="scripted", previous_response_id=first.id,
                                   input=[{"type": "item_reference", "id": item_id}])
    assert caught.value.code == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError) as caught:  # nor reach her item without her chain
        await bob.responses.create(model="scripted", input=[{"type": "item_reference", "id": item_id}])
    assert caught.value.body["param"] == "input[0].id"
    assert len(upstream.requests) == 1


async def test_malformed_shell_items_name_the_field(upstream, gateway, http):
    async with http.post(gateway.make_url("/v1/responses"), json={
            "model": "scripted", "input": [{"type": "shell_call", "call_id": "c", "action": "ls"}]}) as response:
        error = (await response.json())["error"]
    assert response.status == 400 and error["param"] == "input[0].action"
    async with http.post(gateway.make_url("/v1/responses"), json={
            "model": "scripted", "store": False,
            "input": [{"type": "apply_patch_call_output", "call_id": "nope", "status": "completed"}]}) as response:
        error = (await response.json())["error"]
    assert response.status == 400 and "No tool call found" in error["message"]
    assert not upstream.requests
