"""A scripted Chat Completions upstream: a real aiohttp app on 127.0.0.1 for the tests.

Each POST /v1/chat/completions takes the next queued `Reply` (or asks `responder`, or
answers "Hello"), records the request, and writes the reply's steps exactly: bytes are
written as one network write, numbers are pauses, and the reply ends by closing
cleanly, aborting the connection, or hanging until the client goes away.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Step = bytes | float


@dataclass
class Reply:
    steps: list[Step] = field(default_factory=list)
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "text/event-stream"})
    end: str = "close"          # close | abort | hang
    delay_headers: float = 0.0  # seconds before the status line is sent


@dataclass
class Recorded:
    body: dict[str, Any]
    headers: dict[str, str]
    raw: bytes = b""   # the body as sent


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, Any] | None = None,
          choices: bool = True, **extra: Any) -> dict[str, Any]:
    """A chat.completion.chunk in OpenAI's canonical shape."""
    out: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1764000000,
                           "model": "scripted"}
    out["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}] if choices else []
    if usage is not None:
        out["usage"] = usage
    out.update(extra)
    return out


def usage(prompt: int = 5, completion: int = 7, **extra: Any) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion, **extra}


def sse(*chunks: Any, done: bool = True, eol: str = "\n", prefix: str = "data: ") -> bytes:
    """Frame chunks as SSE data events (dicts are JSON-encoded, str/bytes sent as given)."""
    out = []
    for item in chunks:
        payload = item if isinstance(item, str) else json.dumps(item)
        out.append(f"{prefix}{payload}{eol}{eol}")
    if done:
        out.append(f"{prefix}[DONE]{eol}{eol}")
    return "".join(out).encode()


def text_reply(*pieces: str, finish: str = "stop", use: dict[str, Any] | None = None, **kwargs: Any) -> Reply:
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": p}) for p in pieces]
    chunks.append(chunk({}, finish=finish))
    chunks.append(chunk(choices=False, usage=use or usage()))
    return Reply([sse(*chunks)], **kwargs)


def paced_reply(*pieces: str, gap: float, error: str | None = None) -> Reply:
    """Text one piece per write, `gap` seconds apart; with `error`, an in-band upstream error instead of the finish."""
    steps: list[Step] = [sse(chunk({"role": "assistant", "content": ""}), done=False)]
    for piece in pieces:
        steps += [gap, sse(chunk({"content": piece}), done=False)]
    if error is not None:
        steps += [gap, sse({"error": {"message": error, "type": "server_error", "code": "upstream_overloaded"}},
                            done=False)]
    else:
        steps += [gap, sse(chunk({}, finish="stop"), chunk(choices=False, usage=usage(3, len(pieces))))]
    return Reply(steps)


def tool_reply(name: str, arguments: str, call_id: str = "call_abc123", pieces: int = 3) -> Reply:
    """One tool call, arguments streamed in `pieces` fragments, canonical OpenAI framing."""
    step = max(1, len(arguments) // pieces)
    fragments = [arguments[i:i + step] for i in range(0, len(arguments), step)]
    chunks = [chunk({"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]})]
    chunks += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}) for f in fragments]
    chunks.append(chunk({}, finish="tool_calls"))
    chunks.append(chunk(choices=False, usage=usage()))
    return Reply([sse(*chunks)])


def error_reply(status: int, message: str, code: str | None = None, **headers: str) -> Reply:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": code}}).encode()
    return Reply([body], status=status, headers={"Content-Type": "application/json", **headers})


class ScriptedUpstream:
    def __init__(self) -> None:
        self.queue: list[Reply] = []
        self.requests: list[Recorded] = []
        self.responder: Callable[[dict[str, Any]], Reply] | None = None
        self.disconnects = 0            # replies whose client went away before the end
        self.bytes_written = 0          # body bytes the gateway has accepted so far
        self.model_list = {"object": "list", "data": [{"id": "scripted", "object": "model",
                                                        "created": 0, "owned_by": "tests"}]}
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self._completions)
        self.app.router.add_get("/v1/models", self._models)

    def enqueue(self, *replies: Reply) -> None:
        self.queue.extend(replies)

    def _next(self, body: dict[str, Any]) -> Reply:
        if self.queue:
            return self.queue.pop(0)
        if self.responder is not None:
            return self.responder(body)
        return text_reply("Hello")

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(self.model_list)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return web.json_response({"error": {"message": "body is not JSON", "type": "invalid_request_error",
                                                "param": None, "code": None}}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": {"message": "body must be an object",
                                                "type": "invalid_request_error", "param": None,
                                                "code": None}}, status=400)
        self.requests.append(Recorded(body, dict(request.headers), raw))
        reply = self._next(body)
        if reply.delay_headers:
            await asyncio.sleep(reply.delay_headers)
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        try:
            await response.prepare(request)
            for step in reply.steps:
                if isinstance(step, (int, float)):
                    await asyncio.sleep(step)
                else:
                    await response.write(step)
                    self.bytes_written += len(step)
            if reply.end == "abort":
                assert request.transport is not None
                request.transport.abort()
                return response
            if reply.end == "hang":
                await asyncio.sleep(3600)
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnects += 1
            raise
        return response
