"""Compaction inside POST /v1/responses, with the machinery of POST /v1/responses/compact (compaction.py).

- `context_management: [{"type": "compaction", "compact_threshold": N}]`: when the request's input (its
  stored chain or conversation included) counts more than N tokens (token_count.py: the upstream's own
  count where it can say), the whole context is compacted first into one sealed `compaction` item. The
  response's output opens with that item (OpenAI's server-side compaction), and the answer is written
  from the compacted context. A chain replayed later starts from the item: translate.py drops what
  comes before a window it can open.
- A `compaction_trigger` item ending the input (Codex's remote compaction): everything before it is
  compacted, and the response is exactly that one `compaction` item, then `response.completed`;
  no other upstream call.

`summarise` is shared with the /compact route: the summary is asked of the routed upstream through the
one pipeline (failover, deadlines, think tags) with a sink that keeps nothing.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .compaction import (KEPT_USER_CHARS, CompactRequest, ends_with_compaction_trigger, kept_user_messages,
                         seal_window, summary_request)
from .errors import InvalidRequest, UpstreamError
from .keys import forwarded_authorization
from .log import get_logger
from .pipeline import Events, Run, Sink, SyncObserver, run_pipeline
from .request_context import current_request_id
from .routing import RoutedRequest
from .state import AppState
from .token_count import count_tokens
from .truncation import CHARS_PER_TOKEN
from .translate import ChatRequest

_FAILED_STATUS = {"upstream_timeout": 504, "rate_limit_exceeded": 429, "server_shutting_down": 503}


@dataclass(frozen=True)
class Asked:
    """What the request asks of compaction: a trigger ends its input, or a threshold in tokens."""

    trigger: bool
    threshold: int | None


def compaction_asked(document: Any) -> Asked | None:
    """The request's compaction ask, or None; a malformed `context_management` is a 400."""
    if not isinstance(document, dict):
        return None
    trigger = ends_with_compaction_trigger(document.get("input"))
    threshold = _threshold(document.get("context_management"))
    return Asked(trigger, threshold) if trigger or threshold is not None else None


def _threshold(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidRequest("Invalid type for 'context_management': expected an array.", param="context_management")
    for i, entry in enumerate(value):
        param = f"context_management[{i}]"
        if not isinstance(entry, dict) or entry.get("type") != "compaction":
            raise InvalidRequest(f"Invalid '{param}': expected an object with type 'compaction'.", param=param)
        threshold = entry.get("compact_threshold")
        if threshold is None:
            continue
        if isinstance(threshold, float) and threshold.is_integer():
            threshold = int(threshold)  # JSON has one number type: 1000.0 is the integer 1000
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
            raise InvalidRequest(f"Invalid '{param}.compact_threshold': expected a positive integer.",
                                 param=f"{param}.compact_threshold")
        return threshold
    return None


@dataclass
class Compacted:
    """The request as it goes on: `chat` (its output opening with the compaction item), and for a trigger
    the summary's usage, the whole answer (`settled`: no further upstream call)."""

    chat: ChatRequest
    settled: dict[str, Any] | None = None


async def compact_in_request(state: AppState, request: web.Request, routed: RoutedRequest, document: dict[str, Any],
                             chat: ChatRequest, asked: Asked) -> Compacted:
    """Compact `document`'s input when `asked` says so; `chat` unchanged when under the threshold."""
    items = document["input"]
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    if asked.trigger:
        items = items[:-1]
    elif asked.threshold is not None:
        target = routed.targets[0]
        count, source = await count_tokens(target.upstream.client, {**chat.body, "model": target.model},
                                           forwarded_authorization(request))
        if count <= asked.threshold:
            return Compacted(chat)
        get_logger().info("compaction.threshold_passed", input_tokens=count, source=source,
                          threshold=asked.threshold)
    compact = CompactRequest(document["model"], items, document.get("instructions"), None, None)
    # Truncated if need be: a context past the window still gets summarised from what fits.
    summary, usage = await summarise(state, request, routed,
                                     routed.translate({**summary_request(compact, items), "truncation": "auto"}))
    key = routed.config.reasoning_key
    # Under a threshold, the kept user messages take at most a quarter of it: the compacted context must
    # fall well below the threshold, or the next turn would compact again.
    budget = KEPT_USER_CHARS if asked.threshold is None else min(KEPT_USER_CHARS, asked.threshold * CHARS_PER_TOKEN // 4)
    item = seal_window(summary, kept_user_messages(items, key, budget), key)
    compacted = routed.translate({**document, "input": [item]})  # also restores the request's own truncation
    compacted.options = dataclasses.replace(compacted.options, leading_items=(item,))
    compacted.warnings[:0] = chat.warnings
    return Compacted(compacted, usage if asked.trigger else None)


async def settle(run: Run, sink: Sink, usage: dict[str, Any]) -> None:
    """Deliver a response complete without the upstream: its head (with the leading items) unless `sink`
    started already (a background run's log), its usage (the summary's), `response.completed`."""
    stream = run.stream
    if not sink.started:
        await sink.start(stream.start())
    stream.feed({"choices": [], "usage": {"prompt_tokens": usage.get("input_tokens") or 0,
                                          "completion_tokens": usage.get("output_tokens") or 0}})
    await sink.send(stream.finish(saw_done=True))
    run.delivered = stream.events_emitted


class _Discard(SyncObserver):
    """The summary run's sink: nothing to deliver while it runs."""

    __slots__ = ()

    def take(self, events: Events) -> None:
        pass


async def summarise(state: AppState, request: web.Request, routed: RoutedRequest,
                    chat: ChatRequest) -> tuple[str, dict[str, Any]]:
    """The upstream's summary and the run's usage; a failed or empty answer is an error."""
    run = Run(current_request_id.get(), chat)
    state.runs.add(run)  # the drain on shutdown waits for it like for any response
    try:
        # A sink that never starts: every failure comes back as a GatewayError.
        await run_pipeline(run, routed, _Discard(), keepalive_interval=state.config.server.keepalive_interval,
                           client_authorization=forwarded_authorization(request), debug=state.debug)
    finally:
        state.runs.discard(run)
    log = get_logger()
    for warning in run.warnings + run.stream.warnings:
        log.warning("response.warning", warning=warning)
    assert run.stream.terminal is not None, "a run that returned has ended"
    response = run.stream.terminal["response"]
    if response["status"] == "failed":
        error = response["error"]
        raise UpstreamError(error["message"], code=error["code"], status=_FAILED_STATUS.get(error["code"], 502))
    summary = "".join(part.get("text", "") for item in response["output"] if item.get("type") == "message"
                      for part in item.get("content") or [] if part.get("type") == "output_text").strip()
    if not summary:
        raise UpstreamError("The upstream answered the summarisation request with no text.", code="empty_summary")
    if response["status"] == "incomplete":
        log.warning("compaction.summary_incomplete", reason=(response.get("incomplete_details") or {}).get("reason"))
    return summary, response.get("usage") or {}
