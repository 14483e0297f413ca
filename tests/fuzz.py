"""HTTP-level fuzzing: a Chat Completions upstream that mutates realistic streams, and its driver.

The upstream is a real aiohttp app on 127.0.0.1; the gateway is a real `gateway serve` process
running the repository's own config.yaml as shipped (timeouts, retries, circuit breaker), with
only the upstream URL (`--upstream-url`) and the store (`GATEWAY_STORE_URL`, a SQLite file in a
temporary folder) pointed at the fuzz's. Stream `i` of a run with seed `S` is planned by
`random.Random(f"{S}:{i}")` alone (request, chunks, mutations, HTTP behaviour), and the upstream
finds the plan through the request id the gateway forwards, so any failure replays by itself:
`make fuzz SEED=S ONLY=i`.

Mutations, a few per stream: JSON (a field set to another type, a huge or negative number,
nesting past 300 levels, a key dropped, chunks dropped, doubled or swapped, [DONE] missing),
bytes (line ends, comments, raw JSON lines, non-JSON data, flipped and inserted bytes, invalid
UTF-8, a cut at any offset, any network framing), HTTP (error statuses with JSON, HTML or text
bodies, other content types, the whole completion as one JSON body, a reset mid-body, a stall,
a body declared gzip that is not).

Every answer is checked: a stream has exactly one terminal event and it is last, sequence
numbers go up by one, every item added is done, and the project's stream validator passes;
otherwise it is an OpenAI error envelope with an explained status (never a 5xx the upstream did
not cause). The passthrough never hangs and relays a clean body unchanged. The gateway's log
holds no traceback and no error-level line, and one `response.finished` line per request.
Every request must reach the upstream: the upstream records the request ids it receives, and
the streams it never saw (refused by the gateway, e.g. by an open circuit) are counted; more
than `--max-unreached` (default: one per thousand streams) fails the run. A stalled upstream is
left by the client after a few seconds (with the shipped `idle_timeout` the gateway would wait
minutes, which is right): that the gateway then ends the request and logs it is checked.

    python -m tests.fuzz --streams 5000 --seed 7        # what `make fuzz` runs
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.check import check_bytes

from .conftest import ROOT, gateway_process

TERMINAL = ("response.completed", "response.incomplete", "response.failed")
# Seconds a client waits on a stalled upstream before it hangs up (the shipped idle_timeout is 300).
STALL_WAIT = 3.0
# How a gateway bug shows to the client (errors.internal_error_message); upstreams may say server_error too.
BUG_MESSAGE = "The gateway hit an internal error"
WORDS = ["Hello", " world", "!", " é", " 日本", " 🙂", "\n", " \"quoted\"", " back\\slash", " <b>", " data: x",
         "\u2028", " ", "a" * 300]


@dataclass
class Plan:
    """What the upstream does for one stream, and what the checker may accept."""

    body: bytes = b""
    segments: list[bytes | float] = field(default_factory=list)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    end: str = "close"            # close | abort | hang
    delay_headers: float = 0.0
    mutations: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- realistic streams
def _chunk(delta: dict[str, Any] | None = None, finish: Any = None, **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-fz", "object": "chat.completion.chunk", "created": 1764000000, "model": "fuzz",
            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra}


def _usage(rng: random.Random) -> dict[str, Any]:
    prompt, completion = rng.randint(0, 5000), rng.randint(0, 5000)
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion}
    if rng.random() < 0.3:
        usage["prompt_tokens_details"] = {"cached_tokens": rng.randint(0, prompt)}
        usage["completion_tokens_details"] = {"reasoning_tokens": rng.randint(0, completion)}
    return usage


def _pieces(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(WORDS) for _ in range(n)]


def _text(rng: random.Random, custom: str | None) -> list[dict[str, Any]]:
    chunks = [_chunk({"role": "assistant", "content": ""})]
    if rng.random() < 0.3:
        field_name = rng.choice(["reasoning_content", "reasoning"])
        chunks += [_chunk({field_name: p}) for p in _pieces(rng, rng.randint(1, 6))]
    if rng.random() < 0.15:
        chunks.append(_chunk({"content": "<think>" + "".join(_pieces(rng, 3)) + "</think>"}))
    chunks += [_chunk({"content": p}) for p in _pieces(rng, rng.randint(1, 12))]
    if rng.random() < 0.1:
        chunks.append(_chunk({"refusal": "I can't help with that."}))
    chunks.append(_chunk({}, finish=rng.choice(["stop", "stop", "length", "content_filter", "eos", "weird"])))
    return chunks


def _tools(rng: random.Random, custom: str | None) -> list[dict[str, Any]]:
    chunks = [_chunk({"role": "assistant", "content": None})]
    for n in range(rng.randint(1, 3)):
        name = custom if custom and rng.random() < 0.5 else rng.choice(["get_weather", "search", "f"])
        arguments = json.dumps({"input": "*** Begin Patch\n+x\n*** End Patch"} if name == custom
                               else {"city": rng.choice(WORDS), "n": rng.randint(0, 9)})
        style = rng.choice(["indexed", "indexed", "whole", "same_index", "legacy"])
        call_id = f"call_{rng.getrandbits(32):08x}"
        if style == "legacy":
            chunks.append(_chunk({"function_call": {"name": name, "arguments": arguments}}))
            continue
        head: dict[str, Any] = {"id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        if style != "whole":
            head["index"] = 0 if style == "same_index" else n
        if rng.random() < 0.2:
            head["extra_content"] = {"google": {"thought_signature": "sig" + "x" * rng.randint(0, 40)}}
        if style == "whole":
            head["function"]["arguments"] = arguments
            chunks.append(_chunk({"tool_calls": [head]}))
            continue
        chunks.append(_chunk({"tool_calls": [head]}))
        step = max(1, len(arguments) // rng.randint(1, 5))
        for i in range(0, len(arguments), step):
            chunks.append(_chunk({"tool_calls": [{"index": head["index"],
                                                  "function": {"arguments": arguments[i:i + step]}}]}))
    chunks.append(_chunk({}, finish=rng.choice(["tool_calls", "tool_calls", "function_call", "stop"])))
    return chunks


def _inband_error(rng: random.Random, custom: str | None) -> list[dict[str, Any]]:
    chunks = _text(rng, custom)[: rng.randint(1, 4)]
    error = rng.choice([{"message": "model overloaded", "type": "server_error", "code": "overloaded"},
                        {"message": "context length exceeded", "code": "exceed_context_size_error"},
                        "something broke", {"code": 500}])
    return [*chunks, {"error": error}]


BASES = [_text, _text, _tools, _inband_error]


# ---------------------------------------------------------------------------------------- mutations
def _odd_value(rng: random.Random) -> Any:
    deep: Any = {"x": 1}
    for _ in range(rng.choice([10, 300])):
        deep = {"a": deep} if rng.random() < 0.5 else [deep]
    return rng.choice([None, True, 0, -1, 1.5, 2 ** 64 - 1, 2 ** 63, -(2 ** 70), "", "x" * 5000, "\u0000",
                       [], {}, [1, "a"], {"k": "v"}, deep])


def _containers(value: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """Every (path, container) inside a chunk, the chunk itself included."""
    out = [(path, value)]
    if isinstance(value, dict):
        for key, child in value.items():
            if isinstance(child, (dict, list)):
                out += _containers(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            if isinstance(child, (dict, list)):
                out += _containers(child, (*path, i))
    return out


def _mutate_json(rng: random.Random, chunks: list[Any], plan: Plan) -> list[Any]:
    kind = rng.choice(["set", "set", "set", "delete", "drop", "double", "swap", "usage", "finish"])
    plan.mutations.append(f"json:{kind}")
    if not chunks:
        return chunks
    i = rng.randrange(len(chunks))
    if kind in ("set", "delete"):
        _, container = rng.choice(_containers(chunks[i]))
        if isinstance(container, dict) and container:
            key = rng.choice(list(container))
            if kind == "delete":
                del container[key]
            else:
                container[key] = _odd_value(rng)
        elif isinstance(container, list) and container:
            container[rng.randrange(len(container))] = _odd_value(rng)
    elif kind == "drop":
        del chunks[i]
    elif kind == "double":
        chunks.insert(i, copy.deepcopy(chunks[i]))
    elif kind == "swap":
        j = rng.randrange(len(chunks))
        chunks[i], chunks[j] = chunks[j], chunks[i]
    elif kind == "usage":
        chunks.append({**_chunk(), "choices": [], "usage": {"prompt_tokens": _odd_value(rng),
                                                            "completion_tokens": 2 ** 64 - 1, "total_tokens": -5}})
    else:
        chunks.append(_chunk({}, finish=_odd_value(rng)))
    return chunks


def _frame(rng: random.Random, chunks: list[Any], plan: Plan) -> bytes:
    eol = rng.choice(["\n", "\n", "\r\n", "\r"])
    prefix = rng.choice(["data: ", "data: ", "data:"])
    out = []
    if rng.random() < 0.2:
        out.append(f": keep-alive{eol}{eol}")
    for item in chunks:
        payload = json.dumps(item, ensure_ascii=rng.random() < 0.5)
        roll = rng.random()
        if roll < 0.03:
            plan.mutations.append("sse:raw_json_line")
            out.append(payload + eol)
        elif roll < 0.06:
            plan.mutations.append("sse:error_event")
            out.append(f"event: error{eol}{prefix}{payload}{eol}{eol}")
        elif roll < 0.08:
            plan.mutations.append("sse:not_json")
            out.append(f"{prefix}PROCESSING{eol}{eol}")
        else:
            out.append(f"{prefix}{payload}{eol}{eol}")
    if rng.random() < 0.85:
        out.append(f"{prefix}[DONE]{eol}{eol}")
    else:
        plan.mutations.append("sse:no_done")
    return "".join(out).encode()


def _mutate_bytes(rng: random.Random, body: bytes) -> tuple[bytes, str]:
    kind = rng.choice(["truncate", "flip", "insert", "utf8", "crlf_split"])
    if not body:
        return body, f"bytes:{kind}"
    at = rng.randrange(len(body))
    if kind == "truncate":
        body = body[:at]
    elif kind == "flip":
        data = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        body = bytes(data)
    elif kind == "insert":
        body = body[:at] + rng.randbytes(rng.randint(1, 16)) + body[at:]
    elif kind == "utf8":
        body = body[:at] + b"\xff\xfe\xc3" + body[at:]
    else:
        body = body[:at] + b"\r" + body[at:]
    return body, f"bytes:{kind}"


def _segments(rng: random.Random, body: bytes) -> list[bytes | float]:
    """The body in random network writes, now and then with a short pause."""
    out: list[bytes | float] = []
    pos = 0
    while pos < len(body):
        size = rng.choice([1, 2, 7, 64, 512, 4096, len(body)])
        out.append(body[pos:pos + size])
        pos += size
        if rng.random() < 0.05:
            out.append(rng.choice([0.001, 0.01, 0.05]))
    return out


def _whole_completion(rng: random.Random) -> dict[str, Any]:
    """An upstream that ignores `stream: true`: the completion as one JSON body."""
    message: dict[str, Any] = {"role": "assistant", "content": "".join(_pieces(rng, rng.randint(0, 50)))}
    if rng.random() < 0.3:
        message["tool_calls"] = [{"id": "call_1", "type": "function",
                                  "function": {"name": "f", "arguments": '{"a": 1}'}}]
    return {"id": "chatcmpl-fz", "object": "chat.completion", "model": "fuzz", "choices": [
        {"index": 0, "message": message, "finish_reason": rng.choice(["stop", "tool_calls", "length"])}],
        "usage": _usage(rng)}


def make_request(rng: random.Random) -> tuple[str, dict[str, Any], str | None]:
    """(path, body, custom tool name) of one client request."""
    if rng.random() < 0.1:
        return "/v1/chat/completions", {"model": "fuzz", "messages": [{"role": "user", "content": "hi"}],
                                        "stream": rng.random() < 0.8}, None
    body: dict[str, Any] = {"model": "fuzz", "input": "hi", "stream": rng.random() < 0.8}
    custom = None
    if rng.random() < 0.5:
        custom = "apply_patch"
        body["tools"] = [{"type": "function", "name": name, "parameters": {"type": "object"}}
                         for name in ("get_weather", "search", "f")]
        body["tools"].append({"type": "custom", "name": custom})
    if rng.random() < 0.2:
        body["reasoning"] = {"effort": "low", "summary": "auto"}
    return "/v1/responses", body, custom


def make_plan(seed: str, index: int) -> tuple[str, dict[str, Any], Plan]:
    rng = random.Random(f"{seed}:{index}")
    path, request, custom = make_request(rng)
    plan = Plan(headers={"Content-Type": "text/event-stream"})
    chunks = rng.choice(BASES)(rng, custom)
    chunks.append({**_chunk(), "choices": [], "usage": _usage(rng)})
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        chunks = _mutate_json(rng, chunks, plan)
    roll = rng.random()
    if roll < 0.06:
        plan.mutations.append("http:error_status")
        plan.status = rng.choice([400, 401, 404, 413, 429, 500, 502, 503, 504])
        shape = rng.choice(["json", "html", "text", "empty"])
        plan.body = {"json": json.dumps({"error": {"message": "upstream says no", "type": "invalid_request_error",
                                                   "code": rng.choice([None, "x", "context_length_exceeded"])}}),
                     "html": "<html><body>Bad Gateway</body></html>", "text": "model runner crashed",
                     "empty": ""}[shape].encode()
        plan.headers = {"Content-Type": {"json": "application/json", "html": "text/html", "text": "text/plain",
                                         "empty": "text/plain"}[shape]}
        if plan.status == 429 and rng.random() < 0.5:
            plan.headers["Retry-After"] = "2"
    elif roll < 0.12:
        plan.mutations.append("http:whole_json_body")
        plan.headers = {"Content-Type": "application/json"}
        plan.body = json.dumps(_whole_completion(rng)).encode()
        if rng.random() < 0.3:
            plan.body, kind = _mutate_bytes(rng, plan.body)
            plan.mutations.append(kind)
    elif roll < 0.15:
        plan.mutations.append("http:content_type")
        plan.headers = {"Content-Type": rng.choice(["text/html", "text/plain", "application/xml",
                                                    "text/event-stream; charset=utf-8", "application/x-ndjson"])}
        plan.body = _frame(rng, chunks, plan)
    else:
        plan.body = _frame(rng, chunks, plan)
        if rng.random() < 0.15:
            plan.body, kind = _mutate_bytes(rng, plan.body)
            plan.mutations.append(kind)
    plan.segments = _segments(rng, plan.body)
    roll = rng.random()
    if roll < 0.05:
        plan.mutations.append("http:abort")
        plan.end = "abort"
        plan.segments = plan.segments[: rng.randint(0, len(plan.segments))]
    elif roll < 0.07:
        plan.mutations.append("http:stall")
        plan.end = "hang"
        plan.segments = plan.segments[: rng.randint(0, len(plan.segments))]
    elif roll < 0.08:
        plan.mutations.append("http:slow_headers")
        plan.delay_headers = 4.0
    elif roll < 0.10:
        plan.mutations.append("http:bad_gzip")
        plan.headers["Content-Encoding"] = "gzip"
    return path, request, plan


# ---------------------------------------------------------------------------------------- the upstream
class FuzzUpstream:
    """Answers each request with the plan named by its forwarded request id (`fuzz-<seed>-<index>`).

    `received` holds the index of every stream that reached it (once, whatever the gateway's
    retries); `strangers` counts completions requests without such an id (answered 400).
    """

    def __init__(self, seed: str) -> None:
        self.seed = seed
        self.received: set[int] = set()
        self.strangers = 0
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self._completions)
        self.app.router.add_get("/v1/models", self._models)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fuzz", "object": "model"}]})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        prefix, _, index_text = request.headers.get("X-Request-ID", "").rpartition("-")
        if prefix != f"fuzz-{self.seed}" or not index_text.isdigit():
            self.strangers += 1
            return web.json_response({"error": {"message": "no fuzz request id"}}, status=400)
        index = int(index_text)
        self.received.add(index)
        await request.read()
        _, _, plan = make_plan(self.seed, index)
        if plan.delay_headers:
            await asyncio.sleep(plan.delay_headers)
        response = web.StreamResponse(status=plan.status, headers=plan.headers)
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await response.prepare(request)
            for step in plan.segments:
                if isinstance(step, float):
                    await asyncio.sleep(step)
                else:
                    await response.write(step)
            if plan.end == "abort":
                if request.transport is not None:  # None: the gateway already hung up
                    request.transport.abort()
                return response
            if plan.end == "hang":
                await asyncio.sleep(3600)
            await response.write_eof()
        return response


# ---------------------------------------------------------------------------------------- checks
def check_events(raw: bytes) -> list[str]:
    """The stream properties every client relies on, plus the project's validator."""
    problems: list[str] = []
    events = []
    for block in raw.decode("utf-8", errors="replace").split("\n\n"):
        data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if data and data != ["[DONE]"]:  # the end marker (server.sse_done); gateway.check places it
            events.append(json.loads("\n".join(data)))
    terminals = [i for i, event in enumerate(events) if event.get("type") in TERMINAL]
    if len(terminals) != 1 or terminals[0] != len(events) - 1:
        problems.append(f"terminal events at {terminals} of {len(events)}")
    numbers = [event.get("sequence_number") for event in events]
    if numbers != list(range(len(events))):
        problems.append(f"sequence numbers {numbers}")
    added = {e["output_index"] for e in events if e.get("type") == "response.output_item.added"}
    done = {e["output_index"] for e in events if e.get("type") == "response.output_item.done"}
    if added != done:
        problems.append(f"items added but not done: {sorted(added - done)}")
    if terminals:
        error = events[terminals[-1]].get("response", {}).get("error") or {}
        if str(error.get("message")).startswith(BUG_MESSAGE):
            problems.append(f"gateway bug reported in-band: {error}")
    violations, _, _ = check_bytes(raw)
    problems += [f"validator: {v}" for v in violations[:5]]
    return problems


def check_envelope(status: int, raw: bytes, plan: Plan) -> list[str]:
    try:
        error = json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        return [f"HTTP {status} without an error envelope: {raw[:200]!r}"]
    problems = []
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"} \
            or not isinstance(error.get("message"), str) or not error["message"]:
        problems.append(f"malformed envelope: {error!r}"[:300])
    elif error["message"].startswith(BUG_MESSAGE) or error.get("code") == "internal_error":
        problems.append(f"gateway bug: HTTP {status} {error}")
    if status == 500 and plan.status != 500:
        problems.append(f"unexplained HTTP 500 (the upstream answered {plan.status})")
    if status < 400:
        problems.append(f"error envelope with HTTP {status}")
    return problems


def check_final(raw: bytes) -> list[str]:
    response = json.loads(raw)
    if response.get("object") != "response" or response.get("status") not in ("completed", "incomplete"):
        return [f"non-streaming 200 is not a finished Response: {raw[:200]!r}"]
    return []


@dataclass
class Outcome:
    index: int
    kind: str
    problems: list[str]
    plan: Plan
    code: str | None = None  # the error envelope's code, if the answer was one


def _error_code(raw: bytes) -> str | None:
    try:
        error = json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    return str(error.get("code")) if isinstance(error, dict) else None


async def drive_one(http: aiohttp.ClientSession, url: str, seed: str, index: int) -> Outcome:
    path, request, plan = make_plan(seed, index)
    headers = {"X-Request-ID": f"fuzz-{seed}-{index}"}
    kind, problems = "?", []
    try:
        async with asyncio.timeout(STALL_WAIT if plan.end == "hang" else 30):
            async with http.post(url + path, json=request, headers=headers) as response:
                raw = await response.read()
    except aiohttp.ClientPayloadError:
        # Only the passthrough may cut a body, and only when the upstream's body was cut or garbled.
        cut = plan.end in ("abort", "hang") or "Content-Encoding" in plan.headers
        return Outcome(index, "passthrough_cut", [] if path.endswith("completions") and cut
                       else ["body cut short"], plan)
    except TimeoutError:
        if plan.end == "hang":
            return Outcome(index, "client_left_a_stall", [], plan)  # the log check sees the gateway end it
        return Outcome(index, "hang", ["no answer within 30 s"], plan)
    except aiohttp.ClientError as exc:
        return Outcome(index, "broken_http", [f"{type(exc).__name__}: {exc}"[:300]], plan)
    status = response.status
    if path.endswith("/chat/completions"):
        kind = f"passthrough_{status}"
        clean = plan.end == "close" and "Content-Encoding" not in plan.headers and status == plan.status
        if status == 200 and clean and raw != plan.body:
            problems.append("passthrough changed the body")
        if status >= 500 and status != plan.status:
            problems += check_envelope(status, raw, plan)
    elif status == 200 and request["stream"]:
        kind = "stream"
        problems = check_events(raw)
    elif status == 200:
        kind = "final"
        problems = check_final(raw)
    else:
        kind = f"error_{status}"
        problems = check_envelope(status, raw, plan)
    return Outcome(index, kind, problems, plan, _error_code(raw) if status >= 400 else None)


def check_log(output: str, indexes: list[int], seed: str) -> list[str]:
    """No traceback, no error-level line, one `response.finished` line per /v1/responses request."""
    problems = []
    if "Traceback" in output:
        start = output.index("Traceback")
        problems.append("traceback in the gateway's log:\n" + output[max(0, start - 300):start + 2000])
    finished: Counter[str] = Counter()
    for line in output.split("\n"):  # not splitlines: a log line may hold a raw U+2028 (orjson leaves it)
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") in ("error", "critical"):
            problems.append(f"error-level log line: {line[:500]}")
        if entry.get("event") == "response.finished":
            finished[entry.get("request_id", "")] += 1
    for index in indexes:
        path, _, _ = make_plan(seed, index)
        count = finished.get(f"fuzz-{seed}-{index}", 0)
        if path == "/v1/responses" and count != 1:
            problems.append(f"stream {index}: {count} response.finished lines")
    return problems[:20]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Summary:
    streams: int
    seconds: float
    kinds: Counter[str]
    mutations: Counter[str]
    failures: list[Outcome]
    log_problems: list[str]
    rss_start_kb: int
    rss_warm_kb: int
    rss_half_kb: int
    rss_end_kb: int
    unreached: list[Outcome]   # streams the upstream never received
    max_unreached: int
    strangers: int             # completions requests the upstream got without a fuzz request id

    @property
    def passed(self) -> bool:
        return not (self.failures or self.log_problems or self.strangers) and len(self.unreached) <= self.max_unreached

    def lines(self, seed: str) -> list[str]:
        out = [f"fuzz: {self.streams} streams, seed {seed}, {self.seconds:.1f} s, "
               f"{len(self.failures)} failing, {len(self.log_problems)} log problems, "
               f"{len(self.unreached)} never reached the upstream (tolerance {self.max_unreached})",
               f"gateway RSS: {self.rss_start_kb} kB at start, {self.rss_warm_kb} kB after the first "
               f"{min(200, self.streams)} streams, {self.rss_half_kb} kB after half, {self.rss_end_kb} kB after all "
               f"({self.rss_end_kb - self.rss_warm_kb:+d} kB since warm-up)",
               "answers: " + ", ".join(f"{k} {v}" for k, v in sorted(self.kinds.items())),
               "mutations: " + ", ".join(f"{k} {v}" for k, v in sorted(self.mutations.items()))]
        if self.unreached:
            answers = Counter(f"{o.kind} {o.code}" if o.code else o.kind for o in self.unreached)
            out.append(f"{'UNREACHED' if len(self.unreached) > self.max_unreached else 'unreached'}: "
                       f"{len(self.unreached)} streams never reached the upstream, answered "
                       + ", ".join(f"{k} {v}" for k, v in answers.most_common())
                       + f"; first: {', '.join(str(o.index) for o in self.unreached[:10])}")
        if self.strangers:
            out.append(f"FAIL the upstream got {self.strangers} requests without a fuzz request id")
        for failure in self.failures[:20]:
            out.append(f"FAIL stream {failure.index} ({failure.kind}; {', '.join(failure.plan.mutations) or 'clean'})"
                       f" -- replay: make fuzz SEED={seed} ONLY={failure.index}")
            out += [f"    {problem}"[:600] for problem in failure.problems[:5]]
        out += [f"LOG {problem}"[:3000] for problem in self.log_problems]
        return out


def gateway_args(upstream_url: str, directory: str) -> tuple[list[str], dict[str, str]]:
    """`gateway serve` with the shipped config.yaml: only the upstream URL and the store are the fuzz's."""
    return (["--config", str(ROOT / "config.yaml"), "--upstream-url", upstream_url],
            {"GATEWAY_STORE_URL": f"sqlite:{Path(directory) / 'gateway.db'}"})


async def run_fuzz(streams: int, seed: str, *, concurrency: int = 8, only: int | None = None,
                   max_unreached: int | None = None, upstream_url: str | None = None) -> Summary:
    """Start the fuzzing upstream and a `gateway serve` process, drive `streams` streams, check everything.

    `upstream_url` sends the gateway elsewhere than the fuzzing upstream (a test of the unreached count).
    """
    upstream = FuzzUpstream(seed)
    runner = web.AppRunner(upstream.app, access_log=None, shutdown_timeout=0.5)  # stalled replies end at once
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    indexes = [only] if only is not None else list(range(streams))
    outcomes: list[Outcome] = []
    try:
        with tempfile.TemporaryDirectory() as directory:
            args, env = gateway_args(upstream_url or f"http://127.0.0.1:{port}/v1", directory)
            async with gateway_process(*args, env=env) as gw:
                pid = gw.proc.pid
                rss_start = rss_warm = rss_half = rss_kb(pid)
                started = time.monotonic()
                gate = asyncio.Semaphore(concurrency)
                connector = aiohttp.TCPConnector(limit=concurrency * 2)
                async with aiohttp.ClientSession(connector=connector) as http:
                    async def one(index: int) -> None:
                        nonlocal rss_warm, rss_half
                        async with gate:
                            outcomes.append(await drive_one(http, gw.url, seed, index))
                        if len(outcomes) == min(200, len(indexes)):
                            rss_warm = rss_kb(pid)
                        if len(outcomes) == len(indexes) // 2:
                            rss_half = rss_kb(pid)
                    await asyncio.gather(*(one(index) for index in indexes))
                seconds = time.monotonic() - started
                rss_end = rss_kb(pid)
            log_problems = check_log(gw.output, indexes, seed)
    finally:
        await runner.cleanup()
    mutations: Counter[str] = Counter(m for outcome in outcomes for m in outcome.plan.mutations)
    by_index = sorted(outcomes, key=lambda o: o.index)
    return Summary(streams=len(indexes), seconds=seconds, kinds=Counter(o.kind for o in outcomes),
                   mutations=mutations, failures=[o for o in by_index if o.problems],
                   log_problems=log_problems, rss_start_kb=rss_start, rss_warm_kb=rss_warm, rss_half_kb=rss_half,
                   rss_end_kb=rss_end, unreached=[o for o in by_index if o.index not in upstream.received],
                   max_unreached=len(indexes) // 1000 if max_unreached is None else max_unreached,
                   strangers=upstream.strangers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--seed", default=str(random.randrange(10 ** 6)))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--only", type=int, default=None, help="replay one stream of the seed")
    parser.add_argument("--max-unreached", type=int, default=None,
                        help="streams that may never reach the upstream (default: one per thousand)")
    args = parser.parse_args(argv)
    summary = asyncio.run(run_fuzz(args.streams, args.seed, concurrency=args.concurrency, only=args.only,
                                   max_unreached=args.max_unreached))
    print("\n".join(summary.lines(args.seed)))
    return 0 if summary.passed else 1


if __name__ == "__main__":
    sys.exit(main())
