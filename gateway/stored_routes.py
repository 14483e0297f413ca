"""HTTP edge of stored state: GET/DELETE /v1/responses/{id}, its input_items, and the Conversations API.

Shapes follow the openai SDK (see README "State and scaling out"); every object is visible only to
the owner that created it (`keys.owner_of`), anyone else gets the same 404 as for a
missing id.
"""
from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .background import starting_after, wants_stream
from .errors import InvalidRequest
from .reasoning import ENCRYPTED_INCLUDE, reasoning_sealer
from .routes import json_response, read_json
from .state import STATE
from .store.base import Order, page
from .keys import owner_of
from .store.service import MAX_ITEMS_PER_CALL, StateService, normalize_items
from .translate import check_items, checked_metadata

# `compact` and `input_tokens` are POST endpoints, never response ids: their GET and DELETE are 405s.
_RESPONSE_ID = "{response_id:(?!(?:compact|input_tokens)$)[^{}/]+}"
stored_routes = web.RouteTableDef()


def _service(request: web.Request) -> StateService:
    return STATE.get(request.app).stored


def _includes(request: web.Request) -> list[str]:
    return request.query.getall("include", []) + request.query.getall("include[]", [])


def _page_query(request: web.Request) -> tuple[str | None, int, Order]:
    """`after`, `limit` (1–100, default 20) and `order` (default desc) of a list request."""
    raw_limit = request.query.get("limit", "20")
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise InvalidRequest(f"Invalid 'limit': {raw_limit!r} is not an integer between 1 and 100.", param="limit",
                             code="invalid_value")
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest(f"Invalid 'order': {order!r}; expected 'asc' or 'desc'.", param="order",
                             code="invalid_value")
    return request.query.get("after") or None, limit, order  # type: ignore[return-value]


def _list(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": more}


def _shown(response: dict[str, Any], include: list[str], reasoning_key: str) -> dict[str, Any]:
    """The stored Response as GET shows it: sealed reasoning only when `include` asks for it."""
    reasoning = [item for item in response["output"] if item.get("type") == "reasoning"]
    if not reasoning:
        return response
    wanted = ENCRYPTED_INCLUDE in include
    seal = reasoning_sealer(reasoning_key) if wanted else None
    output = []
    for item in response["output"]:
        if item.get("type") == "reasoning":
            item = {k: v for k, v in item.items() if k != "encrypted_content"}
            text = "\n\n".join(part.get("text", "") for part in item.get("content") or [])
            if seal is not None and text:
                item["encrypted_content"] = seal(text)
        output.append(item)
    return {**response, "output": output}


async def _body(request: web.Request) -> dict[str, Any]:
    body = await read_json(request, STATE.get(request.app)) if request.can_read_body else {}
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def _metadata(body: dict[str, Any], required: bool = False) -> dict[str, str]:
    if required and "metadata" not in body:
        raise InvalidRequest("Missing required parameter: 'metadata'.", param="metadata",
                             code="missing_required_parameter")
    return checked_metadata(body.get("metadata")) or {}


def _items(body: dict[str, Any], service: StateService, required: bool = False) -> list[dict[str, Any]]:
    items = body.get("items")
    if items is None:
        if required:
            raise InvalidRequest("Missing required parameter: 'items'.", param="items",
                                 code="missing_required_parameter")
        return []
    if not isinstance(items, list):
        raise InvalidRequest("Invalid type for 'items': expected an array of items.", param="items",
                             code="invalid_type")
    if len(items) > MAX_ITEMS_PER_CALL:
        raise InvalidRequest(f"Invalid 'items': at most {MAX_ITEMS_PER_CALL} items per request.", param="items",
                             code="array_above_max_length")
    normalized = normalize_items(items, "items")
    check_items(normalized, "items")
    if len(orjson.dumps(normalized)) > service.config.max_stored_bytes:
        raise InvalidRequest(f"The items are larger than this gateway stores at once "
                             f"({service.config.max_stored_bytes} bytes, store.max_stored_bytes).",
                             param="items", code="stored_size_exceeded")
    return normalized


# ---------------------------------------------------------------------- responses
@stored_routes.get(f"/v1/responses/{_RESPONSE_ID}")
@stored_routes.get(f"/responses/{_RESPONSE_ID}")
async def get_response(request: web.Request) -> web.StreamResponse:
    starting_after(request)  # a malformed one is a 400 with or without `stream`
    if wants_stream(request):  # a background stream, replayed and followed (gateway/background.py)
        return await STATE.get(request.app).background.resume(request, request.match_info["response_id"],
                                                              owner_of(request))
    record = await _service(request).response_record(request.match_info["response_id"], owner_of(request))
    key = STATE.get(request.app).config.upstream.reasoning_key
    return json_response(_shown(record["response"], _includes(request), key))


@stored_routes.post("/v1/responses/{response_id}/cancel")
@stored_routes.post("/responses/{response_id}/cancel")
async def cancel_response(request: web.Request) -> web.Response:
    return json_response(await STATE.get(request.app).background.cancel(request.match_info["response_id"],
                                                                        owner_of(request)))


@stored_routes.delete(f"/v1/responses/{_RESPONSE_ID}")
@stored_routes.delete(f"/responses/{_RESPONSE_ID}")
async def delete_response(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    await _service(request).delete_response(response_id, owner_of(request))
    return json_response({"id": response_id, "object": "response", "deleted": True})


@stored_routes.get("/v1/responses/{response_id}/input_items")
@stored_routes.get("/responses/{response_id}/input_items")
async def input_items(request: web.Request) -> web.Response:
    after, limit, order = _page_query(request)
    record = await _service(request).response_record(request.match_info["response_id"], owner_of(request))
    by_id = {item["id"]: item for item in record["input"]}
    ids, more = page(list(by_id), after, limit, order)
    return json_response(_list([by_id[item_id] for item_id in ids], more))


# ---------------------------------------------------------------------- conversations
@stored_routes.post("/v1/conversations")
@stored_routes.post("/conversations")
async def create_conversation(request: web.Request) -> web.Response:
    service = _service(request)
    body = await _body(request)
    conversation = await service.create_conversation(owner_of(request), _items(body, service), _metadata(body))
    return json_response(conversation)


@stored_routes.get("/v1/conversations/{conversation_id}")
@stored_routes.get("/conversations/{conversation_id}")
async def get_conversation(request: web.Request) -> web.Response:
    return json_response(await _service(request).conversation(request.match_info["conversation_id"],
                                                              owner_of(request)))


@stored_routes.post("/v1/conversations/{conversation_id}")
@stored_routes.post("/conversations/{conversation_id}")
async def update_conversation(request: web.Request) -> web.Response:
    metadata = _metadata(await _body(request), required=True)
    return json_response(await _service(request).update_conversation(
        request.match_info["conversation_id"], owner_of(request), metadata))


@stored_routes.delete("/v1/conversations/{conversation_id}")
@stored_routes.delete("/conversations/{conversation_id}")
async def delete_conversation(request: web.Request) -> web.Response:
    conversation_id = request.match_info["conversation_id"]
    await _service(request).delete_conversation(conversation_id, owner_of(request))
    return json_response({"id": conversation_id, "object": "conversation.deleted", "deleted": True})


@stored_routes.get("/v1/conversations/{conversation_id}/items")
@stored_routes.get("/conversations/{conversation_id}/items")
async def list_conversation_items(request: web.Request) -> web.Response:
    after, limit, order = _page_query(request)
    items, more = await _service(request).list_items(request.match_info["conversation_id"], owner_of(request),
                                                     after=after, limit=limit, order=order)
    return json_response(_list(items, more))


@stored_routes.post("/v1/conversations/{conversation_id}/items")
@stored_routes.post("/conversations/{conversation_id}/items")
async def add_conversation_items(request: web.Request) -> web.Response:
    service = _service(request)
    items = _items(await _body(request), service, required=True)
    await service.add_items(request.match_info["conversation_id"], owner_of(request), items)
    return json_response(_list(items, False))


@stored_routes.get("/v1/conversations/{conversation_id}/items/{item_id}")
@stored_routes.get("/conversations/{conversation_id}/items/{item_id}")
async def get_conversation_item(request: web.Request) -> web.Response:
    return json_response(await _service(request).item(request.match_info["conversation_id"], owner_of(request),
                                                      request.match_info["item_id"]))


@stored_routes.delete("/v1/conversations/{conversation_id}/items/{item_id}")
@stored_routes.delete("/conversations/{conversation_id}/items/{item_id}")
async def delete_conversation_item(request: web.Request) -> web.Response:
    return json_response(await _service(request).delete_item(request.match_info["conversation_id"],
                                                             owner_of(request), request.match_info["item_id"]))
