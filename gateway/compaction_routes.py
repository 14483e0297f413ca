"""HTTP edge of compaction: POST /v1/responses/compact (what it does: gateway/compaction.py).

Registered before stored_routes, whose `/v1/responses/{response_id}` would otherwise take
`compact` for a response id. The summary is asked of the routed upstream through the one
pipeline (failover, deadlines, think tags) with a sink that keeps nothing: the route reads the
summary from the run's final response.
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from .auto_compaction import summarise
from .compaction import (CompactRequest, compacted_response, kept_user_messages, parse_compact_request, seal_window,
                         summary_request)
from .keys import owner_of
from .request_context import finished_line
from .routes import json_response, read_json
from .routing import route_request
from .state import STATE, AppState
from .store.service import normalize_items

compaction_routes = web.RouteTableDef()


@compaction_routes.post("/v1/responses/compact")
@compaction_routes.post("/responses/compact")
async def compact_response(request: web.Request) -> web.Response:
    state = STATE.get(request.app)
    fields: dict[str, Any] = {"model": None, "upstream": None, "kept": None, "input_tokens": None,
                              "output_tokens": None, "error_code": None}
    with finished_line("compaction.finished", fields) as outcome:
        state.refuse_when_shutting_down()
        compact = parse_compact_request(await read_json(request, state))
        fields["model"] = compact.model
        items = await _window(state, compact, owner_of(request))
        routed = route_request(state, request, compact.model)
        try:
            chat = routed.translate(summary_request(compact, items))  # validates the items: 400s before upstream
            key = routed.config.reasoning_key
            kept = kept_user_messages(items, key)
            del items
            summary, usage = await summarise(state, request, routed, chat)
        finally:
            routed.release()
            fields["upstream"] = routed.upstream_name
        fields.update(kept=len(kept), input_tokens=usage.get("input_tokens"),
                      output_tokens=usage.get("output_tokens"))
        outcome["http_status"] = 200
        return json_response(compacted_response(seal_window(summary, kept, key), usage))


async def _window(state: AppState, compact: CompactRequest, owner: str) -> list[dict[str, Any]]:
    """The conversation to compact: a stored chain's items (previous_response_id), then the input."""
    items = normalize_items(compact.input)
    if compact.previous_response_id is None:
        return items
    turn = await state.stored.prepare({"store": False, "previous_response_id": compact.previous_response_id,
                                       "input": items}, owner)
    assert turn is not None, "a previous_response_id always makes a turn"
    return [*turn.earlier(), *turn.input_items]
