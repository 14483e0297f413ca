"""POST /v1/responses/input_tokens: how many tokens a create request's input would take upstream.

The request is the create request's (`model`, `input`, `instructions`, `tools`, `previous_response_id`,
`conversation`, …), resolved against the store and translated exactly as create does, so the count is
of the chat messages and tools the upstream would get (how: gateway/token_count.py). The answer's
`X-Input-Tokens-Source` header says how it was counted (`vllm`, `llama.cpp`, `completion`, `estimate`).
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from .errors import InvalidRequest
from .event_stream import json_response
from .keys import forwarded_authorization, owner_of
from .request_context import finished_line
from .routes import read_json
from .routing import route_request
from .state import STATE
from .store.service import with_history
from .token_count import count_tokens

input_tokens_routes = web.RouteTableDef()


@input_tokens_routes.post("/v1/responses/input_tokens")
@input_tokens_routes.post("/responses/input_tokens")
async def count_input_tokens(request: web.Request) -> web.Response:
    state = STATE.get(request.app)
    fields: dict[str, Any] = {"model": None, "upstream": None, "source": None, "input_tokens": None,
                              "error_code": None}
    with finished_line("input_tokens.finished", fields) as outcome:
        state.refuse_when_shutting_down()
        body = await read_json(request, state)
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        # As at OpenAI, `input` may be left out (instructions and tools alone); nothing is stored or run.
        body = {**body, "input": body.get("input") if body.get("input") is not None else [], "store": False,
                "stream": False}
        fields["model"] = body.get("model")
        # Counted on the route's first upstream: a count is of its tokenizer, so no failover.
        routed = route_request(state, request, body.get("model"), hold=False)
        try:
            fields["upstream"] = routed.upstream_name
            turn = await state.stored.prepare(body, owner_of(request))
            chat = routed.translate(*with_history(body, turn))
            target = routed.targets[0]
            count, source = await count_tokens(target.upstream.client, {**chat.body, "model": target.model},
                                               forwarded_authorization(request))
        finally:
            routed.release()
        fields.update(source=source, input_tokens=count)
        outcome["http_status"] = 200
        return json_response({"object": "response.input_tokens", "input_tokens": count},
                             headers={"X-Input-Tokens-Source": source})
