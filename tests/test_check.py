"""The project's stream validator (gateway.check): a good stream passes, each rule catches its fault.

The good stream is real: the stream processor's events for an upstream answer with reasoning,
text and a tool call. Every fault is one precise edit of it.
"""
from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from gateway.check import check_bytes
from gateway.sse import encode_events

from .conftest import run_cli
from .helpers import new_stream
from .scripted_upstream import chunk, usage
from .test_clients import ToolResponder

Events = list[dict[str, Any]]


def good_events() -> Events:
    stream = new_stream(model="m", response_id="resp_check", created_at=1764000000)
    chunks = [chunk({"role": "assistant", "reasoning_content": "Think"}), chunk({"reasoning_content": "ing."}),
              chunk({"content": "Hello"}), chunk({"content": " wörld 👋"}),
              chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                     "function": {"name": "get_weather", "arguments": '{"city":'}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
              chunk({}, finish="tool_calls"),
              chunk(choices=False, usage=usage(10, 5, completion_tokens_details={"reasoning_tokens": 3}))]
    events = stream.start()
    for c in chunks:
        events += stream.feed(c)
    return json.loads(json.dumps(events + stream.finish(True)))  # no object shared between events


def to_sse(events: list[Any], eol: str = "\n", event_lines: bool = True) -> bytes:
    out = []
    for event in events:
        head = f"event: {event['type']}{eol}" if event_lines and isinstance(event, dict) and "type" in event else ""
        out.append(f"{head}data: {json.dumps(event, ensure_ascii=False)}{eol}{eol}")
    return "".join(out).encode()


def index_of(events: Events, kind: str, nth: int = 0) -> int:
    return [i for i, e in enumerate(events) if e["type"] == f"response.{kind}"][nth]


def renumber(events: Events) -> Events:
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return events


def test_done_marker_is_not_counted_as_an_event():
    violations, _, result = check_bytes(to_sse(good_events()) + b"data: [DONE]\n\n")
    assert violations == [] and result["events"] == len(good_events())


def test_good_stream_passes_and_folds():
    violations, warnings, result = check_bytes(to_sse(good_events()))
    assert violations == [] and warnings == []
    assert result["text"] == "Hello wörld 👋" and result["reasoning"] == "Thinking."
    assert result["tool_calls"] == [{"name": "get_weather", "arguments": '{"city":"Paris"}', "call_id": "call_1"}]
    assert result["status"] == "completed" and result["events"] == len(good_events())
    assert result["usage"] == {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15, "cached_tokens": 0,
                               "reasoning_tokens": 3}


@pytest.mark.parametrize("framing", [
    pytest.param(lambda e: to_sse(e, "\r\n"), id="crlf"),
    pytest.param(lambda e: to_sse(e, "\r"), id="cr"),
    pytest.param(lambda e: to_sse(e, event_lines=False) + b"data: [DONE]\n\n", id="no-event-lines-and-done"),
    pytest.param(lambda e: to_sse(e) + b"data: [DONE]\n\n", id="done-after-terminal"),  # server.sse_done
    pytest.param(lambda e: b"\xef\xbb\xbf: comment\n\n" + to_sse(e).replace(b"data: ", b"data:"), id="bom-comment"),
    pytest.param(lambda e: b"".join(b"event: " + x["type"].encode() + b"\ndata: "
                                    + json.dumps(x, indent=1).replace("\n", "\ndata: ").encode() + b"\n\n"
                                    for x in e), id="multi-line-data"),
])
def test_legal_framings_pass(framing: Callable[[Events], bytes]):
    violations, _, result = check_bytes(framing(good_events()))
    assert violations == [] and result["text"] == "Hello wörld 👋"


def _pop_type(kind: str, nth: int = 0) -> Callable[[Events], Any]:
    return lambda ev: ev.pop(index_of(ev, kind, nth))


def _set_terminal(kind: str) -> Callable[[Events], Any]:
    return lambda ev: (ev[-1].update(type=f"response.{kind}"), ev[-1]["response"].update(status=kind))


# (name, mutation of the event list in place, words expected in one violation)
FAULTS: list[tuple[str, Callable[[Events], Any], str]] = [
    ("created not first", lambda ev: ev.pop(0), "first event is response.in_progress"),
    ("in_progress not second", lambda ev: ev.pop(1), "second event is response.output_item.added"),
    ("sequence skips", lambda ev: ev[5].update(sequence_number=6), "sequence_number 6, expected 5"),
    ("sequence repeats", lambda ev: ev[5].update(sequence_number=4), "sequence_number 4, expected 5"),
    ("sequence missing", lambda ev: ev[3].pop("sequence_number"), "sequence_number missing"),
    ("response id changes", lambda ev: ev[-1]["response"].update(id="resp_other"), "lifecycle's response changed"),
    ("delta before added", lambda ev: ev.insert(2, dict(ev[index_of(ev, "output_text.delta")], output_index=0)),
     "before its output_item.added"),
    ("duplicate added", lambda ev: ev.insert(index_of(ev, "output_item.added", 1) + 1,
                                             copy.deepcopy(ev[index_of(ev, "output_item.added", 1)])),
     "second output_item.added"),
    ("index gap", lambda ev: [e.update(output_index=5) for e in ev if e.get("output_index") == 2],
     "output_index 5, expected 2"),
    ("text delta without part", _pop_type("content_part.added", 1), "without content_part.added(output_text)"),
    ("part done without added", lambda ev: (_pop_type("content_part.added", 1)(ev),
                                            _pop_type("output_text.delta")(ev), _pop_type("output_text.delta")(ev)),
     "content_part.done for content_index 0 without content_part.added"),
    ("text done not the deltas", lambda ev: ev[index_of(ev, "output_text.done")].update(text="Hello"),
     "is not the concatenation of its deltas"),
    ("part done not the text", lambda ev: ev[index_of(ev, "content_part.done", 1)]["part"].update(text="x"),
     "content_part.done text differs"),
    ("arguments done not the deltas",
     lambda ev: ev[index_of(ev, "function_call_arguments.done")].update(arguments="{}"),
     "arguments (2 chars) is not the concatenation"),
    ("item done args differ", lambda ev: ev[index_of(ev, "output_item.done", 2)]["item"].update(arguments="{}"),
     "output_item.done arguments differs from its .done event"),
    ("text never streamed", lambda ev: [ev.pop(i) for i in reversed(range(len(ev)))
                                        if ev[i]["type"] in ("response.output_text.delta",
                                                             "response.output_text.done")],
     "no delta streamed it"),
    ("deltas without done", _pop_type("function_call_arguments.done"), "arguments deltas (index None) without"),
    ("delta after done", lambda ev: ev.insert(index_of(ev, "output_text.done") + 1,
                                              dict(ev[index_of(ev, "output_text.delta")])),
     "output_text.delta after its .done event"),
    ("delta after item done", lambda ev: ev.insert(index_of(ev, "output_item.done", 1) + 1,
                                                   dict(ev[index_of(ev, "output_text.delta")])),
     "after its output_item.done"),
    ("delta on wrong item", lambda ev: ev.insert(index_of(ev, "output_text.delta"),
                                                 dict(ev[index_of(ev, "function_call_arguments.delta")],
                                                      output_index=1)),
     "function_call_arguments.delta on a message item"),
    ("item id mismatch", lambda ev: ev[index_of(ev, "output_text.delta")].update(item_id="msg_other"),
     "is not the added item's id"),
    ("item never done", _pop_type("output_item.done", 2), "never got its output_item.done"),
    ("item identity changes", lambda ev: ev[index_of(ev, "output_item.done", 2)]["item"].update(id="fc_X"),
     "changes `id`"),
    ("call_id missing", lambda ev: [ev[index_of(ev, "output_item.added", 2)]["item"].pop("call_id"),
                                    ev[index_of(ev, "output_item.done", 2)]["item"].pop("call_id")],
     "function_call item lacks `call_id`"),
    ("item done status", lambda ev: ev[index_of(ev, "output_item.done", 1)]["item"].update(status="in_progress"),
     "status 'in_progress', expected completed"),
    ("no terminal", lambda ev: ev.pop(), "no terminal event"),
    ("two terminals", lambda ev: ev.append(dict(ev[-1], sequence_number=len(ev))),
     "response.completed after the terminal event"),
    ("event after terminal", lambda ev: ev.append(dict(ev[index_of(ev, "output_text.delta")])),
     "output_text.delta after the terminal event"),
    ("output disagrees", lambda ev: ev[-1]["response"].update(output=[]), "response.output has 0 items"),
    ("output item differs", lambda ev: ev[-1]["response"]["output"][1].update(status="incomplete"),
     "response.output[1] differs"),
    ("status disagrees", lambda ev: ev[-1]["response"].update(status="failed"), "expected 'completed'"),
    ("usage total wrong", lambda ev: ev[-1]["response"]["usage"].update(total_tokens=99),
     "total_tokens 99 is not"),
    ("usage detail missing", lambda ev: ev[-1]["response"]["usage"].pop("output_tokens_details"),
     "reasoning_tokens is missing"),
    ("usage missing", lambda ev: ev[-1]["response"].update(usage=None), "usage is missing"),
    ("response field missing", lambda ev: ev[-1]["response"].pop("tools"), "response.tools is missing"),
    ("failed without error", _set_terminal("failed"), "response.error needs a string code"),
    ("incomplete without reason", _set_terminal("incomplete"), "incomplete_details.reason is missing"),
    ("required field missing", lambda ev: ev[index_of(ev, "content_part.added", 1)].pop("part"),
     "required field `part` missing"),
    ("top-level error key", lambda ev: ev[3].update(error={"message": "boom"}), "top-level `error` key"),
    ("not an event object", lambda ev: ev.insert(3, {"error": {"message": "boom"}}), "string `type`"),
]


@pytest.mark.parametrize(("name", "mutate", "needle"), [pytest.param(*fault, id=fault[0]) for fault in FAULTS])
def test_each_fault_is_a_violation(name: str, mutate: Callable[[Events], Any], needle: str):
    events = good_events()
    mutate(events)
    if not name.startswith("sequence"):
        renumber(events)  # judge the fault itself, not the numbering it shifted
    violations, _, _ = check_bytes(to_sse(events))
    assert any(needle in v for v in violations), violations


@pytest.mark.parametrize(("raw", "needle"), [
    pytest.param(to_sse(good_events())[:-1], "no closing blank line", id="unterminated-last-event"),
    pytest.param(to_sse(good_events()[:-1]) + b"data: [DONE]\n\n" + to_sse(good_events()[-1:]),
                 "[DONE] before the terminal event", id="done-marker-early"),
    pytest.param(to_sse(good_events()) + b"data: [DONE]\n\n" + to_sse(good_events()[-1:]),
                 "an event after data: [DONE]", id="event-after-done-marker"),
    pytest.param(to_sse(good_events()).replace(b"event: response.output_text.done", b"event: foo"),
                 "`event: foo` does not match", id="event-name-vs-type"),
    pytest.param(b"retry: 3000\n\n" + to_sse(good_events()), "a block with `retry:` but no data",
                 id="dataless-block"),
    pytest.param(to_sse(good_events()).replace("ö".encode(), b"\xc3"), "not valid UTF-8", id="invalid-utf8"),
    pytest.param(to_sse(good_events()).replace(b'"type": "response.in_progress"', b'"type": 1', 1) + b"",
                 "string `type`", id="type-not-string"),
    pytest.param(b"event: response.created\ndata: {not json\n\n", "data is not JSON", id="not-json"),
])
def test_framing_faults(raw: bytes, needle: str):
    violations, _, _ = check_bytes(raw)
    assert any(needle in v for v in violations), violations


def test_error_event_alone_is_not_terminal():
    events = good_events()[:3] + [{"type": "error", "message": "overloaded", "code": "server_error"}]
    violations, _, result = check_bytes(to_sse(renumber(events)))
    assert any("an `error` event is not terminal: 'overloaded'" in v for v in violations)
    assert result["error"] == {"code": "server_error", "message": "overloaded"} and result["status"] is None


def test_a_failed_stream_may_leave_items_open_with_a_warning():
    events = good_events()
    cut = index_of(events, "output_text.delta") + 1
    failed = dict(events[-1], type="response.failed")
    failed["response"] = dict(failed["response"], status="failed", output=[], usage=None,
                              error={"code": "upstream_timeout", "message": "silent"})
    violations, warnings, result = check_bytes(to_sse(renumber(events[:cut] + [failed])))
    assert violations == []
    assert any("never got its output_item.done" in w for w in warnings)
    assert (result["status"], result["text"], result["error"]["code"]) == ("failed", "Hello", "upstream_timeout")


# ---------------------------------------------------------------------------------------- gateway check
async def test_check_battery_passes_on_the_gateway(upstream, gateway):
    upstream.responder = ToolResponder()
    code, out = await run_cli("check", str(gateway.make_url("/v1")), "--model", "scripted", "--disconnect", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"], out
    assert [(c["name"], c["verdict"]) for c in report["cases"]] == [
        ("text", "ok"), ("forced_tool", "ok"), ("tool_round_trip", "ok"), ("non_streaming", "ok"),
        ("invalid_request", "ok"), ("disconnect", "ok")]
    assert report["cases"][1]["detail"] == 'get_weather({"city": "Paris"})'
    # The round trip sent the call back: the upstream saw the tool result.
    assert any(m.get("role") == "tool" for r in upstream.requests for m in r.body["messages"])


async def test_check_battery_reports_a_broken_endpoint(aiohttp_server):
    """An endpoint whose stream skips a sequence number and never ends properly: violations, exit 1, a table."""
    events = good_events()
    broken = to_sse(events[:5] + events[6:-1])

    async def responses(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(broken)
        return response

    app = web.Application()
    app.router.add_post("/v1/responses", responses)
    server = await aiohttp_server(app, host="127.0.0.1")
    code, out = await run_cli("check", str(server.make_url("/v1")), "--model", "m")
    assert code == 1, out
    assert "FAIL text: #6 response.reasoning_text.done: sequence_number 6, expected 5" in out
    assert "FAIL text: no terminal event" in out
    assert re.search(r"^non_streaming +FAIL +200 ", out, re.M) and out.endswith("0 ok, 5 failed\n")


async def test_check_file(tmp_path):
    good, bad = tmp_path / "good.sse", tmp_path / "bad.sse"
    good.write_bytes(to_sse(good_events()))
    bad.write_bytes(to_sse(good_events()[:-1]))
    assert await run_cli("check", "--file", str(good)) == (0, "OK: 0 violations, 0 warnings; status=completed "
                                                                "events=22\n")
    code, out = await run_cli("check", "--file", str(bad))
    assert code == 1 and "FAIL no terminal event" in out


def test_a_background_stream_has_response_queued_second():
    events = good_events()
    queued = {"type": "response.queued", "sequence_number": 1, "response": {**events[0]["response"], "status": "queued"}}
    events[0]["response"]["status"] = "queued"
    shifted = [events[0], queued] + [{**e, "sequence_number": e["sequence_number"] + 1} for e in events[1:]]
    violations, _, _ = check_bytes(encode_events(shifted))
    assert violations == []
    out_of_place = [events[0], {**queued, "sequence_number": 1}, {**events[2], "sequence_number": 2}]
    violations, _, _ = check_bytes(encode_events(out_of_place))
    assert any("after response.queued" in v for v in violations)
