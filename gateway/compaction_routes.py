"""HTTP edge of compaction: POST /v1/responses/compact (what it does: gateway/compaction.py).

Registered before stored_routes, whose `/v1/responses/{response_id}` would otherwise take
`compact` for a response id. The summary is asked of the routed upstream through the one
pipeline (failover, deadlines, think tags) with a sink that keeps nothing: the route reads the
summary from the run's final response.
"""
from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .compaction import (CompactRequest, compacted_response, kept_user_messages, parse_compact_request, seal_window,
                         summary_request)
from .errors import GatewayError, UpstreamError
from .keys import forwarded_authorization, owner_of
from .log import get_logger
from .pipeline import Events, Run, SyncObserver, run_pipeline
from .request_context import current_request_id
from .routes import json_response, read_json
from .routing import RoutedRequest, route_request
from .state import STATE, AppState
from .store.service import normalize_items
from .translate import ChatRequest

compaction_routes = web.RouteTableDef()
_FAILED_STATUS = {"upstream_timeout": 504, "rate_limit_exceeded": 429, "server_shutting_down": 503}


class _Discard(SyncObserver):
    """The summary run's sink: nothing to deliver while it runs."""

    __slots__ = ()

    def take(self, events: Events) -> None:
        pass


@compaction_routes.post("/v1/responses/compact")
@compaction_routes.post("/responses/compact")
async def compact_response(request: web.Request) -> web.Response:
    state = STATE.get(request.app)
    received = time.monotonic()
    fields: dict[str, Any] = {"model": None, "upstream": None, "kept": None, "input_tokens": None,
                              "output_tokens": None, "error_code": None}
    http_status = 500
    try:
        if state.shutting_down:
            raise GatewayError("The gateway is shutting down; retry the request.", status=503,
                               code="server_shutting_down", headers={"Retry-After": "1"})
        compact = parse_compact_request(await read_json(request, state))
        fields["model"] = compact.model
        items = await _window(state, compact, owner_of(request))
        routed = route_request(state, request, compact.model)
        try:
            chat = routed.translate(summary_request(compact, items))  # validates the items: 400s before upstream
            key = routed.config.reasoning_key
            kept = kept_user_messages(items, key)
            del items
            summary, usage = await _summarise(state, request, routed, chat)
        finally:
            routed.release()
            fields["upstream"] = routed.upstream_name
        fields.update(kept=len(kept), input_tokens=usage.get("input_tokens"),
                      output_tokens=usage.get("output_tokens"))
        http_status = 200
        return json_response(compacted_response(seal_window(summary, kept, key), usage))
    except GatewayError as exc:
        http_status, fields["error_code"] = exc.status, exc.code
        raise
    finally:
        get_logger().info("compaction.finished", http_status=http_status,
                          duration_ms=round((time.monotonic() - received) * 1000, 1), **fields)


async def _window(state: AppState, compact: CompactRequest, owner: str) -> list[dict[str, Any]]:
    """The conversation to compact: a stored chain's items (previous_response_id), then the input."""
    items = normalize_items(compact.input)
    if compact.previous_response_id is None:
        return items
    turn = await state.stored.prepare({"store": False, "previous_response_id": compact.previous_response_id,
                                       "input": items}, owner)
    assert turn is not None, "a previous_response_id always makes a turn"
    return [*turn.context, *turn.input_items]


async def _summarise(state: AppState, request: web.Request, routed: RoutedRequest,
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
