"""`truncation`: what happens when the conversation does not fit the model's context window.

Known before any byte of the answer: the upstream refuses the request for its context length
(errors.error_code recognises OpenAI's, vLLM's, llama.cpp's, Ollama's and OpenRouter's wordings and
codes), or the upstream's configured `context_window` says, by an estimate of about four characters a
token, that it cannot fit.

- `auto`: the oldest whole turns are dropped and the request is sent again. Kept always: the system
  message (instructions, system and developer messages), the latest user turn with everything after
  it, and every tool call together with its output (a turn ends only where no call waits for its
  output). How much goes is read from the refusal's numbers where it gives them ("maximum context
  length is 4096 tokens … requested 5000"), else half of what can go; a few rounds at most.
- `disabled` (the default): a 400 `context_length_exceeded` saying how far over the request is.

Works on the translated chat messages, so it applies to every transport (HTTP, WebSocket, background).
"""
from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson

from .errors import UpstreamError, UpstreamHTTPError
from .log import get_logger

T = TypeVar("T")
CHARS_PER_TOKEN = 4
_ROUNDS = 4          # refusals answered by dropping more before the refusal stands
_MARGIN = 0.9        # aim below the limit: the size-to-tokens ratio is not exact
_FALLBACK_KEEP = 0.5  # the refusal gave no numbers: keep half

# (limit, requested) from the refusal, as each server words it; `over` alone from Ollama's.
_LIMIT_REQUESTED = (
    # OpenAI, vLLM (older), OpenRouter: "maximum context length is 4096 tokens. However, you requested (about) 5000"
    re.compile(r"maximum context length is (?P<limit>\d+) tokens.*?(?:requested(?: about)?|resulted in) (?P<req>\d+)",
               re.IGNORECASE | re.DOTALL),
    # llama.cpp: "request (5000 tokens) exceeds the available context size (4096 tokens)"
    re.compile(r"request \((?P<req>\d+) tokens\) exceeds the available context size \((?P<limit>\d+) tokens\)",
               re.IGNORECASE),
    # vLLM (newer): "The decoder prompt (length 5000) is longer than the maximum model length of 4096"
    re.compile(r"prompt \(length (?P<req>\d+)\) is longer than the maximum model length of (?P<limit>\d+)",
               re.IGNORECASE),
)
_OVER_BY = re.compile(r"exceed(?:s|ed)? (?:the )?(?:max )?context length by (?P<over>\d+) tokens", re.IGNORECASE)


class ContextExceeded(UpstreamHTTPError):
    """The request does not fit and may not be (or could not be) truncated: a 400, never a 502."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message, code="context_length_exceeded", err_type="invalid_request_error")


def is_context_refusal(exc: UpstreamError) -> bool:
    return exc.code == "context_length_exceeded"


def overrun(message: str) -> tuple[int | None, int | None]:
    """(limit, requested) tokens as the refusal states them; (None, over) from Ollama's; else (None, None)."""
    for pattern in _LIMIT_REQUESTED:
        found = pattern.search(message)
        if found:
            return int(found["limit"]), int(found["req"])
    found = _OVER_BY.search(message)
    return (None, int(found["over"])) if found else (None, None)


def describe(message: str) -> str:
    """The client's message: how far over and what to do, where the refusal gives its numbers, then the
    upstream's words; else the upstream's words alone."""
    limit, requested = overrun(message)
    if limit is not None and requested is not None:
        head = (f"The input is {requested - limit} tokens over the model's context window ({requested} requested, "
                f"{limit} available).")
    elif requested is not None:
        head = f"The input is {requested} tokens over the model's context window."
    else:
        return message  # nothing to add to the upstream's own words
    return (f"{head} Shorten it, start a new conversation, compact it (POST /v1/responses/compact), or send "
            f"truncation: \"auto\" to drop the oldest turns. The upstream said: {message}")


def size(messages: list[dict[str, Any]]) -> int:
    return len(orjson.dumps(messages))


def estimated_tokens(body: dict[str, Any]) -> int:
    """About four characters of the messages' and tools' JSON a token."""
    return -(-(size(body["messages"]) + len(orjson.dumps(body.get("tools") or []))) // CHARS_PER_TOKEN)


def turns(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]],
                                                    list[dict[str, Any]]]:
    """(head, droppable turns oldest first, tail): the leading system message, the whole turns before the
    latest user message, and that message with everything after it. A turn starts at a user message where
    no tool call waits for its output, so a call and its output are never parted."""
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    body = messages[len(head):]
    latest = max((i for i, m in enumerate(body) if m["role"] == "user"), default=0)
    groups: list[list[dict[str, Any]]] = []
    waiting: set[str] = set()
    for message in body[:latest]:
        if message["role"] == "user" and not waiting or not groups:
            groups.append([])
        groups[-1].append(message)
        waiting.update(call.get("id") for call in message.get("tool_calls") or [])
        if message["role"] == "tool":
            waiting.discard(message.get("tool_call_id"))
    if waiting and groups:
        # A call in the kept turns still waits for its output: the last group belongs to the latest turn.
        body_tail = groups.pop()
        return head, groups, [*body_tail, *body[latest:]]
    return head, groups, body[latest:]


def drop_oldest(body: dict[str, Any], target_chars: int) -> int:
    """Drop the oldest whole turns of `body["messages"]` until they are at most `target_chars` long (or
    nothing more may go); how many turns went."""
    head, groups, tail = turns(body["messages"])
    total = size(body["messages"])
    dropped = 0
    while groups and total > target_chars:
        total -= size(groups.pop(0)) - 1  # -1: the comma that joined it
        dropped += 1
    if dropped:
        body["messages"] = [*head, *(m for group in groups for m in group), *tail]
    return dropped


def _target(body: dict[str, Any], message: str) -> int:
    limit, requested = overrun(message)
    current = size(body["messages"])
    if limit is not None and requested:
        return int(current * limit / requested * _MARGIN)
    if requested is not None:  # over by `requested` tokens
        return int(current - requested * CHARS_PER_TOKEN / _MARGIN)
    return int(current * _FALLBACK_KEEP)


def fit_window(body: dict[str, Any], mode: str, context_window: int) -> int:
    """Before sending: with a configured `context_window`, drop turns to fit it (auto) or refuse (disabled);
    how many turns went. The output tokens asked for count against the window as well."""
    if not context_window:
        return 0
    reserve = body.get("max_tokens") or body.get("max_completion_tokens") or 0
    estimate = estimated_tokens(body) + reserve
    if estimate <= context_window:
        return 0
    message = (f"request (about {estimate} tokens) exceeds the available context size ({context_window} tokens) "
               "configured for this upstream (context_window; the request's size is estimated)")
    if mode != "auto":
        raise ContextExceeded(describe(message))
    budget = (context_window - reserve) * CHARS_PER_TOKEN * _MARGIN - len(orjson.dumps(body.get("tools") or []))
    dropped = drop_oldest(body, int(budget))
    if estimated_tokens(body) + reserve > context_window:
        raise ContextExceeded(describe(message) + " Dropping every earlier turn was not enough.")
    return dropped


async def send_fitting(body: dict[str, Any], mode: str, context_window: int, upstream: str,
                       send: Callable[[], Awaitable[T]]) -> T:
    """`send()` (which sends `body`), with `truncation` applied: turns dropped from `body` and sent again on a
    context refusal (auto), or the refusal as a 400 saying how far over (disabled, or nothing left to drop)."""
    dropped = fit_window(body, mode, context_window)
    rounds = 0
    while True:
        try:
            answer = await send()
        except UpstreamError as exc:
            if not is_context_refusal(exc):
                raise
            more = drop_oldest(body, _target(body, exc.message)) if mode == "auto" and rounds < _ROUNDS else 0
            if not more:
                raise ContextExceeded(describe(exc.message)) from None
            dropped, rounds = dropped + more, rounds + 1
            continue
        if dropped:
            get_logger().warning("response.truncated", upstream=upstream, dropped_turns=dropped,
                                 kept_messages=len(body["messages"]))
        return answer
