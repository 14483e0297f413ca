#!/usr/bin/env python3
"""Scripted Chat Completions upstream that behaves like a model for the Codex CLI.

  python e2e/scripted_upstream.py --port P [--host 127.0.0.1] [--reasoning] [--dump FILE]

POST /v1/chat/completions (also /chat/completions), stream true (canonical OpenAI
chat.completion.chunk SSE) or false (one chat.completion JSON). GET /v1/models, GET /health.

Script, decided from the request's messages:
  * last message is `tool`  -> text quoting the tool output ("The command printed: ...").
  * last message is `user` and its text contains "echo " -> a tool call of the
    shell-execution function tool offered in `tools`, asking to run the command
    (the backquoted one if any, else "echo ..." to the end of the line):
        exec_command   {"cmd": "echo probe-7319"}                 (Codex >= 0.1xx unified exec)
        shell          {"command": ["bash", "-lc", "echo probe-7319"]}
        shell_command  {"command": "echo probe-7319"}
    chosen by the tool's parameter schema, not only by its name. If no shell tool is
    offered the answer is text saying so (so the failure is visible in Codex's output).
  * tool_choice "required" (first tool) or a named function -> a call of that tool, string
    properties filled with "Paris" (lets llama_sdk_check.py run against this upstream too).
  * anything else -> "pong".
With --reasoning every answer (text or tool call) is preceded by `delta.reasoning_content`
chunks (DeepSeek style) and usage carries completion_tokens_details.reasoning_tokens.

Usage is sent the canonical way: only when the request asks for
`stream_options.include_usage`, as `usage: null` on every chunk plus a final chunk with
`choices: []`. Every request body is appended to --dump FILE as one JSON line
({"ts", "path", "headers", "body", "verdict"}). Malformed requests (tool message whose
tool_call_id matches no earlier assistant tool call, non-string tool arguments, ...)
get an OpenAI-style HTTP 400 like the real API would return, and are logged with the reason.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
import uuid

from aiohttp import web

SHELL_NAMES = ("exec_command", "shell", "shell_command", "local_shell", "bash", "run_shell_command")


def _text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for p in content:
            if isinstance(p, dict):
                out.append(str(p.get("text") or ""))
            elif isinstance(p, str):
                out.append(p)
        return "".join(out)
    return str(content)


def _tool_fn(tool: dict) -> dict | None:
    """Return {name, parameters} for a chat-completions function tool (tolerates flat shapes)."""
    if not isinstance(tool, dict):
        return None
    fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
    name = fn.get("name")
    if not isinstance(name, str):
        return None
    return {"name": name, "parameters": fn.get("parameters") or {}}


def pick_shell_tool(tools) -> tuple[str, str] | None:
    """Return (tool_name, arg_style) with arg_style in cmd | argv | string."""
    cands = []
    for t in tools or []:
        fn = _tool_fn(t)
        if not fn:
            continue
        props = (fn["parameters"] or {}).get("properties") or {}
        base = fn["name"].rsplit(".", 1)[-1].rsplit("__", 1)[-1]
        style = None
        if "cmd" in props:
            style = "cmd"
        elif "command" in props:
            style = "argv" if (props["command"] or {}).get("type") == "array" else "string"
        if style and (base in SHELL_NAMES or "shell" in base or "exec" in base):
            rank = SHELL_NAMES.index(base) if base in SHELL_NAMES else len(SHELL_NAMES)
            cands.append((rank, fn["name"], style))
    if not cands:
        return None
    cands.sort()
    return cands[0][1], cands[0][2]


def extract_command(prompt: str) -> str:
    for m in re.finditer(r"`([^`]+)`", prompt):
        if "echo " in m.group(1):
            return m.group(1).strip()
    m = re.search(r"(echo [^\n`\"']+)", prompt)
    return m.group(1).strip().rstrip(".") if m else "echo probe-7319"


def shell_args(style: str, cmd: str) -> dict:
    if style == "cmd":
        return {"cmd": cmd}
    if style == "argv":
        return {"command": ["bash", "-lc", cmd]}
    return {"command": cmd}


def validate(body: dict) -> str | None:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "'messages' must be a non-empty array"
    known_ids: set[str] = set()
    pending: set[str] = set()
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant", "tool", "function"):
            return f"messages[{i}]: invalid role {m.get('role') if isinstance(m, dict) else m!r}"
        role = m["role"]
        if role == "assistant":
            for j, tc in enumerate(m.get("tool_calls") or []):
                fn = (tc or {}).get("function") or {}
                if not tc.get("id"):
                    return f"messages[{i}].tool_calls[{j}]: missing id"
                if not isinstance(fn.get("name"), str):
                    return f"messages[{i}].tool_calls[{j}].function.name must be a string"
                if not isinstance(fn.get("arguments"), str):
                    return f"messages[{i}].tool_calls[{j}].function.arguments must be a string"
                known_ids.add(tc["id"])
                pending.add(tc["id"])
            if m.get("content") is None and not m.get("tool_calls"):
                return f"messages[{i}]: assistant message needs content or tool_calls"
        elif role == "tool":
            tcid = m.get("tool_call_id")
            if tcid not in known_ids:
                return (f"Invalid parameter: messages[{i}] with role 'tool' must be a response to a preceeding "
                        f"message with 'tool_calls' (tool_call_id {tcid!r} unknown)")
            pending.discard(tcid)
        elif role in ("user", "system", "developer") and pending:
            return (f"messages[{i}]: an assistant message with 'tool_calls' must be followed by tool messages "
                    f"responding to each 'tool_call_id'; missing: {sorted(pending)}")
    for j, t in enumerate(body.get("tools") or []):
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
            return f"tools[{j}]: only {{type:'function', function:{{...}}}} tools are accepted, got {json.dumps(t)[:120]}"
        if not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", t["function"].get("name") or ""):
            return f"tools[{j}].function.name {t['function'].get('name')!r} does not match ^[a-zA-Z0-9_-]{{1,64}}$"
    return None


def plan(body: dict) -> dict:
    """Return {'kind': 'text'|'tool', 'text'| 'name','arguments', 'reason'}."""
    msgs = body.get("messages") or []
    last = msgs[-1] if msgs else {}
    if last.get("role") == "tool":
        out = _text(last.get("content"))
        m = re.search(r"probe-\d+", out)
        quoted = m.group(0) if m else out.strip()[-200:]
        return {"kind": "text", "text": f"The command printed: {quoted}", "reason": "tool result"}
    prompt = ""
    for m in reversed(msgs):
        if m.get("role") == "user":
            prompt = _text(m.get("content"))
            break
    if "echo " in prompt:
        shell = pick_shell_tool(body.get("tools"))
        if shell is None:
            names = [(_tool_fn(t) or {}).get("name") for t in body.get("tools") or []]
            return {"kind": "text", "text": f"No shell tool offered (tools: {names})", "reason": "no shell tool"}
        name, style = shell
        return {"kind": "tool", "name": name,
                "arguments": json.dumps(shell_args(style, extract_command(prompt))), "reason": f"shell tool {name}/{style}"}
    tc = body.get("tool_choice")
    forced = None
    if isinstance(tc, dict):
        forced = ((tc.get("function") or {}).get("name")) or tc.get("name")
    elif tc == "required" and body.get("tools"):
        forced = (_tool_fn(body["tools"][0]) or {}).get("name")
    if forced:
        fn = next((f for f in map(_tool_fn, body.get("tools") or []) if f and f["name"] == forced), None)
        props = ((fn or {}).get("parameters") or {}).get("properties") or {}
        args = {k: ("Paris" if (v or {}).get("type", "string") == "string" else 1) for k, v in props.items()}
        return {"kind": "tool", "name": forced, "arguments": json.dumps(args), "reason": f"tool_choice forces {forced}"}
    return {"kind": "text", "text": "pong", "reason": "plain prompt"}


def _pieces(s: str, n: int) -> list[str]:
    return [s[i:i + n] for i in range(0, len(s), n)] or [""]


class Upstream:
    def __init__(self, reasoning: bool, dump: str | None, delay: float):
        self.reasoning = reasoning
        self.dump = dump
        self.delay = delay
        self.count = 0

    def log(self, request: web.Request, body, verdict: str):
        if not self.dump:
            return
        rec = {"ts": time.time(), "path": request.path, "headers": dict(request.headers), "body": body, "verdict": verdict}
        with open(self.dump, "a") as f:
            f.write(json.dumps(rec) + "\n")

    async def models(self, request):
        return web.json_response({"object": "list", "data": [
            {"id": "scripted", "object": "model", "created": 0, "owned_by": "e2e"}]})

    async def health(self, request):
        return web.json_response({"status": "ok", "requests": self.count})

    def err(self, status, msg, typ="invalid_request_error"):
        return web.json_response({"error": {"message": msg, "type": typ, "param": None, "code": None}}, status=status)

    async def chat(self, request: web.Request):
        self.count += 1
        raw = await request.read()
        try:
            body = json.loads(raw)
        except Exception as e:  # noqa: BLE001
            self.log(request, raw.decode("utf-8", "replace"), f"400 bad json: {e}")
            return self.err(400, f"We could not parse the JSON body of your request: {e}")
        problem = validate(body)
        if problem:
            self.log(request, body, f"400 {problem}")
            return self.err(400, problem)
        p = plan(body)
        warn = ""
        if self.reasoning:
            # DeepSeek (thinking mode + tools) wants the turn's reasoning_content sent back on the
            # assistant tool-call message; we only note its absence.
            miss = [i for i, m in enumerate(body["messages"])
                    if m.get("role") == "assistant" and m.get("tool_calls") and not m.get("reasoning_content")]
            if miss:
                warn = f" (warn: assistant tool_calls message(s) {miss} without reasoning_content)"
        self.log(request, body, f"200 {p['reason']}{warn}")
        model = body.get("model") or "scripted"
        cid = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        reasoning_text = "Let me think. The user wants me to act; I will do it." if self.reasoning else ""
        call_id = "call_" + uuid.uuid4().hex[:24]
        prompt_tokens = max(1, len(raw) // 4)
        out_text = p.get("text") or p.get("arguments") or ""
        completion_tokens = max(1, len(out_text) // 4) + max(0, len(reasoning_text) // 4)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens,
                 "prompt_tokens_details": {"cached_tokens": 0}}
        if self.reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": max(1, len(reasoning_text) // 4)}
        finish = "tool_calls" if p["kind"] == "tool" else "stop"

        if not body.get("stream"):
            msg = {"role": "assistant", "content": p.get("text")}
            if self.reasoning:
                msg["reasoning_content"] = reasoning_text
            if p["kind"] == "tool":
                msg["tool_calls"] = [{"id": call_id, "type": "function",
                                      "function": {"name": p["name"], "arguments": p["arguments"]}}]
            return web.json_response({"id": cid, "object": "chat.completion", "created": created, "model": model,
                                      "choices": [{"index": 0, "message": msg, "finish_reason": finish, "logprobs": None}],
                                      "usage": usage})

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(delta: dict | None, finish_reason=None, choices=True, usage_obj=None):
            chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "system_fingerprint": "fp_e2e",
                     "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}] if choices else []}
            if include_usage:
                chunk["usage"] = usage_obj
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            if self.delay:
                await asyncio.sleep(self.delay)

        try:
            await send({"role": "assistant", "content": "", "refusal": None})
            if self.reasoning:
                for piece in _pieces(reasoning_text, 12):
                    await send({"content": None, "reasoning_content": piece})
            if p["kind"] == "tool":
                await send({"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                            "function": {"name": p["name"], "arguments": ""}}]})
                for piece in _pieces(p["arguments"], 7):
                    await send({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            else:
                for piece in re.findall(r"\S+\s*|\s+", p["text"]) or [""]:
                    await send({"content": piece})
            await send({}, finish_reason=finish)
            if include_usage:
                await send(None, choices=False, usage_obj=usage)
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp


def make_app(reasoning=False, dump=None, delay=0.0) -> web.Application:
    u = Upstream(reasoning, dump, delay)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    for prefix in ("/v1", ""):
        app.router.add_post(prefix + "/chat/completions", u.chat)
        app.router.add_get(prefix + "/models", u.models)
    app.router.add_get("/health", u.health)
    return app


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--reasoning", action="store_true", help="precede answers with delta.reasoning_content")
    ap.add_argument("--dump", help="append each request (one JSON line) to this file")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds between chunks")
    a = ap.parse_args(argv)
    print(f"scripted upstream on http://{a.host}:{a.port}/v1 reasoning={a.reasoning}", file=sys.stderr, flush=True)
    web.run_app(make_app(a.reasoning, a.dump, a.delay), host=a.host, port=a.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
