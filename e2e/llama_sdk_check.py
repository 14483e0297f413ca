#!/usr/bin/env python3
"""openai SDK through the gateway onto a real llama-server (tiny random-weight model).

  python e2e/llama_sdk_check.py BASE_URL [--model M] [--save-dir DIR] [--timeout S]

BASE_URL is the gateway, like http://127.0.0.1:8080/v1. The model's words are gibberish, so
only wire shape and statuses are checked:
  text        responses.stream() helper: created -> ... -> completed, a message item with text
  text_strict the same non-streaming with _strict_response_validation=True (every schema field)
  tool        tool_choice "required": a function_call item (fc_ id, call_id, name get_weather,
              arguments a JSON object string), streamed arguments deltas == done arguments
  roundtrip   history + function_call + function_call_output resent (Codex style, no
              previous_response_id): HTTP 200, status completed, non-empty output
  wire        the raw SSE of a text request validated by gateway.check (the project's validator)
  input_tokens  responses.input_tokens.count(): the response.input_tokens shape; where the gateway
              counted with llama.cpp's own /apply-template + /tokenize (X-Input-Tokens-Source), the
              count equals the usage.input_tokens llama-server reports for the same request (its chat
              template, instructions and tools included)
Prints PASS/FAIL per case and "N passed, N failed"; exit 1 on any failure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import urllib.error
import urllib.request
from openai import OpenAI

from gateway.check import check_bytes

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather for a city.",
    # enum: the grammar then makes the tiny model name a real city (its free strings are short
    # gibberish, often empty).
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]}},
                   "required": ["city"]},
}
RESULTS: list[tuple[str, bool, str]] = []


def case(name):
    def deco(fn):
        def run(*a, **kw):
            t0 = time.time()
            try:
                detail = fn(*a, **kw) or ""
                RESULTS.append((name, True, detail))
                print(f"PASS {name} ({time.time() - t0:.1f}s): {detail}"[:300], flush=True)
            except Exception as e:  # noqa: BLE001
                RESULTS.append((name, False, repr(e)))
                print(f"FAIL {name} ({time.time() - t0:.1f}s): {type(e).__name__}: {e}"[:1500], flush=True)
                if os.environ.get("E2E_VERBOSE"):
                    traceback.print_exc()
        return run
    return deco


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def collect(stream_mgr):
    """Consume a responses.stream() manager; return (events, final_response)."""
    events = []
    with stream_mgr as stream:
        for ev in stream:
            events.append(ev)
        final = stream.get_final_response()
    return events, final


def check_events(events):
    types = [e.type for e in events]
    check(types and types[0] == "response.created", f"first event {types[:1]}")
    seqs = [e.sequence_number for e in events]
    check(all(isinstance(s, int) for s in seqs), f"non-int sequence_number: {seqs[:5]}")
    check(all(b > a for a, b in zip(seqs, seqs[1:])), f"sequence_number not increasing: {seqs}")
    term = [t for t in types if t in ("response.completed", "response.incomplete", "response.failed")]
    check(len(term) == 1 and types[-1] == term[0], f"terminal events {term}, last {types[-1]}")
    ids = {e.response.id for e in events if hasattr(e, "response") and getattr(e, "response", None) is not None}
    check(len(ids) == 1, f"response id changed across lifecycle events: {ids}")
    return types


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("base_url")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--api-key", default=os.environ.get("GATEWAY_API_KEY", "sk-e2e-client"))
    ap.add_argument("--save-dir", default=None, help="save raw SSE samples here")
    ap.add_argument("--tag", default="llama", help="name part of the saved SSE sample")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--max-output-tokens", type=int, default=256)
    a = ap.parse_args(argv)

    client = OpenAI(base_url=a.base_url, api_key=a.api_key, timeout=a.timeout, max_retries=0)
    strict = OpenAI(base_url=a.base_url, api_key=a.api_key, timeout=a.timeout, max_retries=0,
                    _strict_response_validation=True)
    mot = a.max_output_tokens
    state = {}

    @case("text")
    def text():
        events, final = collect(client.responses.stream(model=a.model, input="Say hello in three words.",
                                                         max_output_tokens=mot))
        types = check_events(events)
        check(final.status in ("completed", "incomplete"), f"status {final.status}")
        msgs = [o for o in final.output if o.type == "message"]
        check(msgs, f"no message item in output: {[o.type for o in final.output]}")
        txt = final.output_text
        check(isinstance(txt, str), "output_text not a string")
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        check(deltas == txt, f"deltas {deltas!r} != output_text {txt!r}")
        u = final.usage
        check(u is not None and u.total_tokens == u.input_tokens + u.output_tokens, f"usage {u}")
        return f"status={final.status} {len(events)} events, usage={u.input_tokens}/{u.output_tokens}, text={txt[:60]!r}"

    @case("text_strict")
    def text_strict():
        r = strict.responses.create(model=a.model, input="Say hi.", max_output_tokens=mot)
        check(r.object == "response" and r.status in ("completed", "incomplete"), f"object/status {r.object}/{r.status}")
        return f"status={r.status} output={[o.type for o in r.output]}"

    @case("tool")
    def tool():
        inp = [{"role": "user", "content": "What is the weather in Paris? Call get_weather."}]
        events, final = collect(client.responses.stream(model=a.model, input=inp, tools=[WEATHER_TOOL],
                                                         tool_choice="required", max_output_tokens=mot))
        check_events(events)
        check(final.status == "completed", f"status {final.status} (incomplete_details={final.incomplete_details})")
        calls = [o for o in final.output if o.type == "function_call"]
        check(calls, f"no function_call item; output types {[o.type for o in final.output]}")
        fc = calls[0]
        check(fc.name == "get_weather", f"name {fc.name!r}")
        check(fc.call_id, "empty call_id")
        check(fc.id and fc.id.startswith("fc"), f"item id {fc.id!r}")
        args = json.loads(fc.arguments)
        check(isinstance(args, dict), f"arguments not an object: {fc.arguments!r}")
        for c in calls:  # a model may emit parallel calls: check each item
            deltas = "".join(e.delta for e in events
                             if e.type == "response.function_call_arguments.delta" and e.item_id == c.id)
            check(deltas == c.arguments, f"argument deltas of {c.id} {deltas!r} != {c.arguments!r}")
            check(isinstance(json.loads(c.arguments), dict), f"arguments not an object: {c.arguments!r}")
        check(len({c.call_id for c in calls}) == len(calls), f"duplicate call_ids {[c.call_id for c in calls]}")
        state["history"] = inp + [{"type": "function_call", "id": c.id, "call_id": c.call_id, "name": c.name,
                                   "arguments": c.arguments, "status": "completed"} for c in calls]
        state["call_ids"] = [c.call_id for c in calls]
        return f"{len(calls)} call(s): get_weather({fc.arguments}) call_id={fc.call_id}"

    @case("roundtrip")
    def roundtrip():
        check("history" in state, "no tool call from the previous case")
        inp = state["history"] + [{"type": "function_call_output", "call_id": cid,
                                   "output": json.dumps({"city": "Paris", "temperature_c": 21})}
                                  for cid in state["call_ids"]]
        events, final = collect(client.responses.stream(model=a.model, input=inp, tools=[WEATHER_TOOL],
                                                         tool_choice="auto", max_output_tokens=mot))
        check_events(events)
        check(final.status in ("completed", "incomplete"), f"status {final.status}")
        check(final.output, "empty output")
        return f"status={final.status} output={[o.type for o in final.output]}"

    @case("wire")
    def wire():
        body = {"model": a.model, "input": "Say hello.", "stream": True, "max_output_tokens": mot}
        req = urllib.request.Request(a.base_url.rstrip("/") + "/responses", data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {a.api_key}",
                                              "Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=a.timeout) as r:
                status, ctype, raw = r.status, r.headers.get("content-type", ""), r.read()
        except urllib.error.HTTPError as e:
            status, ctype, raw = e.code, e.headers.get("content-type", ""), e.read()
        check(status == 200, f"HTTP {status}: {raw[:300]!r}")
        check(ctype.startswith("text/event-stream"), f"content-type {ctype}")
        path = os.path.join(a.save_dir or "/tmp", f"gateway_{a.tag}_text.sse")
        with open(path, "wb") as f:
            f.write(raw)
        violations, _, result = check_bytes(raw)
        check(not violations, "gateway.check: " + "; ".join(violations)[:800])
        return f"valid: status={result['status']} events={result['events']}"

    @case("input_tokens")
    def input_tokens():
        fields = {"model": a.model, "instructions": "Answer briefly.", "tools": [WEATHER_TOOL],
                  "input": [{"role": "user", "content": "What is the weather in Paris?"},
                            {"role": "assistant", "content": "Let me check."},
                            {"role": "user", "content": "Thanks, go ahead."}]}
        raw = strict.responses.input_tokens.with_raw_response.count(**fields)
        counted, source = raw.parse(), raw.headers.get("x-input-tokens-source")
        check(counted.object == "response.input_tokens" and counted.input_tokens > 0, f"count {counted}")
        if source != "llama.cpp":
            return f"{counted.input_tokens} tokens ({source}; not an exact count here)"
        run = client.responses.create(**fields, max_output_tokens=mot)  # the same template and tools
        check(run.usage.input_tokens == counted.input_tokens,
              f"counted {counted.input_tokens}, llama-server's usage says {run.usage.input_tokens}")
        return f"{counted.input_tokens} tokens, as llama-server's usage"

    for fn in (text, text_strict, tool, roundtrip, wire, input_tokens):
        fn()
    passed = sum(1 for r in RESULTS if r[1])
    failed = len(RESULTS) - passed
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
