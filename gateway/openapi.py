"""The OpenAPI 3.1 document of every endpoint the gateway serves (GET /openapi.json).

Request bodies, parameters, answers and the error envelope every 4xx/5xx carries. Each `/v1/…`
path also answers without `/v1`: those aliases are the same operations, listed without an
operationId. The inspector's `/debug` paths exist only with `debug.inspector: true`.
tests/test_openapi.py checks that the document names every route the app registers, and runs
schemathesis against a live gateway with it.
"""
from __future__ import annotations

import copy
from typing import Any

from . import __version__

_STRING = {"type": "string"}
_INT = {"type": "integer"}
_MAX_INTEGER = 2**53  # JSON numbers past it have no exact integer (translate.py refuses them)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


# ---------------------------------------------------------------------- request bodies
_TEXT_PART = _object(["type", "text"], type={"enum": ["input_text", "output_text"]}, text=_STRING)
_IMAGE_PART = _object(["type", "image_url"], type={"const": "input_image"}, image_url=_STRING,
                      detail={"type": ["string", "null"], "examples": ["auto", "low", "high"],
                              "description": "passed to the upstream, which knows its values"})
# Images only in user messages: the other roles become text upstream.
_USER_MESSAGE = _object(["role", "content"], type={"const": "message"}, role={"const": "user"}, content={
    "oneOf": [_STRING, {"type": "array", "items": {"oneOf": [_TEXT_PART, _IMAGE_PART]}}]})
_TEXT_MESSAGE = _object(["role", "content"], type={"const": "message"},
                        role={"enum": ["assistant", "system", "developer"]},
                        content={"oneOf": [_STRING, {"type": "array", "items": _TEXT_PART}]})
_FUNCTION_CALL = _object(["type", "call_id", "name", "arguments"], type={"const": "function_call"},
                         call_id=_STRING, name=_STRING, arguments=_STRING, id={"type": ["string", "null"]})
# A chat tool message carries text: images in a tool's output are left out.
_OUTPUT_IMAGE = _object(["type"], type={"const": "input_image"})
# Its call must come earlier in the context (input, previous response or conversation): else a 400, as at OpenAI.
_FUNCTION_OUTPUT = _object(["type", "call_id", "output"], type={"const": "function_call_output"}, call_id=_STRING,
                           output={"oneOf": [_STRING, {"type": "array", "items": {"oneOf": [_TEXT_PART, _OUTPUT_IMAGE]}}]})
_REASONING = _object(["type"], type={"const": "reasoning"}, summary={"type": ["array", "null"]},
                     encrypted_content={"type": ["string", "null"]})
_INPUT_ITEM = {"oneOf": [_USER_MESSAGE, _TEXT_MESSAGE, _FUNCTION_CALL, _FUNCTION_OUTPUT, _REASONING]}
_FUNCTION_TOOL = _object(["type", "name"], type={"const": "function"}, name={"type": "string", "minLength": 1},
                         description=_STRING, parameters={"type": "object"}, strict={"type": "boolean"})
_TOOL_CHOICE = {"oneOf": [{"enum": ["auto", "none", "required"]},
                          _object(["type", "name"], type={"const": "function"}, name=_STRING)]}
_TEXT_FORMAT = _object(["type"], type={"enum": ["text", "json_object", "json_schema"]}, name=_STRING,
                       schema={"type": "object"}, strict={"type": "boolean"})
_METADATA = {"type": ["object", "null"], "maxProperties": 16, "propertyNames": {"maxLength": 64},
             "additionalProperties": {"type": "string", "maxLength": 512}}

RESPONSE_REQUEST: dict[str, Any] = _object(
    ["model", "input"],
    model={"type": "string", "minLength": 1},
    input={"oneOf": [_STRING, {"type": "array", "items": _INPUT_ITEM}]},
    instructions={"type": ["string", "null"]},
    stream={"type": ["boolean", "null"]},
    background={"type": ["boolean", "null"], "description": "run detached; needs store true (the default)"},
    tools={"type": "array", "items": _FUNCTION_TOOL},
    tool_choice=_TOOL_CHOICE,
    parallel_tool_calls={"type": ["boolean", "null"]},
    temperature={"type": ["number", "null"], "minimum": 0, "maximum": 2},
    top_p={"type": ["number", "null"], "minimum": 0, "maximum": 1},
    max_output_tokens={"type": ["integer", "null"], "minimum": 1, "maximum": _MAX_INTEGER},
    presence_penalty={"type": ["number", "null"], "minimum": -2, "maximum": 2},
    frequency_penalty={"type": ["number", "null"], "minimum": -2, "maximum": 2},
    top_logprobs={"type": ["integer", "null"], "minimum": 0, "maximum": 20},
    max_tool_calls={"type": ["integer", "null"], "minimum": 0, "maximum": _MAX_INTEGER},
    service_tier={"enum": ["auto", "default", "flex", "scale", "priority", None]},
    safety_identifier={"type": ["string", "null"]},
    prompt_cache_key={"type": ["string", "null"]},
    text={"type": "object", "properties": {"format": _TEXT_FORMAT}},
    reasoning={"type": ["object", "null"], "properties": {
        "effort": {"type": ["string", "null"], "examples": ["none", "minimal", "low", "medium", "high", "xhigh"],
                   "description": "sent upstream as reasoning_effort; the upstream knows its values"},
        "summary": {"type": ["string", "null"], "examples": ["auto", "concise", "detailed"],
                    "description": "any value asks for reasoning summary events"}}},
    metadata=_METADATA,
    store={"type": ["boolean", "null"]},
    previous_response_id={"type": ["string", "null"], "description": "a stored response of the same owner"},
    conversation={"oneOf": [{"type": "null"}, {"type": "string", "minLength": 1},
                            _object(["id"], id={"type": "string", "minLength": 1})],
                  "description": "a conversation of the same owner; not with previous_response_id"},
    truncation={"enum": ["auto", "disabled", None]},
    context_management={"type": ["array", "null"], "description": "compact first once the input passes a threshold",
                        "items": _object(["type"], type={"const": "compaction"},
                                         compact_threshold={"type": ["integer", "null"], "minimum": 1,
                                                            "maximum": _MAX_INTEGER})},
    user=_STRING,
    include={"type": "array", "items": _STRING},
)
RESPONSE_REQUEST["allOf"] = [
    {"not": {"required": ["previous_response_id", "conversation"],
             "properties": {"previous_response_id": _STRING, "conversation": {"not": {"type": "null"}}}},
     "description": "one of the two, not both"},
    {"if": {"required": ["background"], "properties": {"background": {"const": True}}},
     "then": {"properties": {"store": {"enum": [True, None]}}}, "description": "background needs store"}]
# POST /v1/responses/input_tokens: a create request's inputs; `input` may be left out, nothing is stored or run.
INPUT_TOKENS_REQUEST = {**RESPONSE_REQUEST, "required": ["model"], "allOf": RESPONSE_REQUEST["allOf"][:1]}
INPUT_TOKENS = _object(["object", "input_tokens"], object={"const": "response.input_tokens"},
                       input_tokens={"type": "integer", "minimum": 0})
_COMPACTION = _object(["type", "encrypted_content"], type={"const": "compaction"}, encrypted_content=_STRING,
                      id=_STRING)
COMPACT_REQUEST = _object(
    ["model"], model={"type": "string", "minLength": 1},
    input={"oneOf": [_STRING, {"type": "array", "items": {"oneOf": [*_INPUT_ITEM["oneOf"], _COMPACTION]}}]},
    **{name: {"type": ["string", "null"]} for name in ("instructions", "previous_response_id", "prompt_cache_key")})
COMPACT_REQUEST["anyOf"] = [  # something to compact
    {"required": ["input"], "properties": {"input": {"oneOf": [{"type": "string", "minLength": 1},
                                                              {"type": "array", "minItems": 1}]}}},
    {"required": ["previous_response_id"], "properties": {"previous_response_id": _STRING}}]
COMPACTED = _object(["id", "object", "created_at", "output", "usage"], id=_STRING,
                    object={"const": "response.compaction"}, created_at={"type": "integer"},
                    output={"type": "array", "items": {"type": "object"}}, usage={"type": "object"})
_ITEMS_BODY = {"type": "array", "maxItems": 20, "items": _INPUT_ITEM}
CONVERSATION_CREATE = {"type": "object", "properties": {"items": {**_ITEMS_BODY, "type": ["array", "null"]},
                                                        "metadata": _METADATA}}
CONVERSATION_UPDATE = _object(["metadata"], metadata=_METADATA)
ITEMS_ADD = _object(["items"], items=_ITEMS_BODY)

# ---------------------------------------------------------------------- answers
ERROR_ENVELOPE: dict[str, Any] = _object(["error"], error=_object(
    ["message", "type", "param", "code"], message=_STRING, type=_STRING,
    param={"type": ["string", "null"]}, code={"type": ["string", "null"]}))
ITEM = {"type": "object", "required": ["type"], "properties": {"type": _STRING, "id": _STRING},
        "description": "an input or output item (message, function_call, reasoning, …)"}
RESPONSE = _object(
    ["id", "object", "status", "output"],
    id=_STRING, object={"const": "response"}, created_at=_INT,
    status={"enum": ["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]},
    background={"type": "boolean"}, model=_STRING, output={"type": "array", "items": _ref("Item")},
    error={"oneOf": [{"type": "null"}, _object(["code", "message"], code=_STRING, message=_STRING)]},
    usage={"oneOf": [{"type": "null"}, _object(["input_tokens", "output_tokens", "total_tokens"],
                                               input_tokens=_INT, output_tokens=_INT, total_tokens=_INT)]},
    metadata={"type": "object", "additionalProperties": _STRING},
    previous_response_id={"type": ["string", "null"]}, store={"type": "boolean"},
)
ITEM_LIST = _object(["object", "data", "first_id", "last_id", "has_more"], object={"const": "list"},
                    data={"type": "array", "items": _ref("Item")}, first_id={"type": ["string", "null"]},
                    last_id={"type": ["string", "null"]}, has_more={"type": "boolean"})
CONVERSATION = _object(["id", "object", "created_at", "metadata"], id=_STRING, object={"const": "conversation"},
                       created_at=_INT, metadata={"type": "object", "additionalProperties": _STRING})


def _deleted(kind: str) -> dict[str, Any]:
    return _object(["id", "object", "deleted"], id=_STRING, object={"const": kind}, deleted={"const": True})


MODEL_LIST = _object(["object", "data"], object={"const": "list"}, data={"type": "array", "items": _object(
    ["id", "object"], id=_STRING, object={"const": "model"}, created=_INT, owned_by=_STRING)})
_UPSTREAM_STATE = _object(["status", "breaker"], status={"enum": ["ready", "unavailable"]},
                          upstream_status=_INT, error=_STRING, breaker=_STRING)
READINESS = _object(["status", "upstreams"], status={"enum": ["ready", "unavailable"]},
                    upstreams={"type": "object", "additionalProperties": _UPSTREAM_STATE})
_INSPECTED = {"type": "object", "required": ["state"], "properties": {"state": {"enum": ["open", "finished", "failed"]}}}
INSPECTOR_LIST = _object(["open", "recent"], open={"type": "array", "items": _INSPECTED},
                         recent={"type": "array", "items": _INSPECTED})



def _event(required: list[str], event: dict[str, Any]) -> dict[str, Any]:
    """One server-sent event (OpenAPI 3.1: the media type's schema describes each event of the stream)."""
    return _object(required, event=event, data=_STRING, id=_STRING, retry=_INT)


# The end marker after the terminal event (`server.sse_done`): a `data:` line alone, so its event
# type is the SSE default, `message`.
_DONE_MARKER = {**_object(["data"], data={"const": "[DONE]"}, event={"const": "message"}),
                "description": "`data: [DONE]` after the terminal event (server.sse_done)"}
RESPONSE_EVENT = {"anyOf": [_event(["event", "data"], {"type": "string", "pattern": "^response\\."}), _DONE_MARKER]}
INSPECTOR_EVENT = _event(["data"], {"enum": ["message", "end", "lagged"]})

SCHEMAS = {"ResponseRequest": RESPONSE_REQUEST, "InputTokensRequest": INPUT_TOKENS_REQUEST,
           "InputTokens": INPUT_TOKENS, "CompactRequest": COMPACT_REQUEST, "Compacted": COMPACTED, "Error": ERROR_ENVELOPE, "Response": RESPONSE, "Item": ITEM,
           "ItemList": ITEM_LIST, "Conversation": CONVERSATION, "ConversationCreate": CONVERSATION_CREATE,
           "ConversationUpdate": CONVERSATION_UPDATE, "ItemsAdd": ITEMS_ADD,
           "ResponseDeleted": _deleted("response"), "ConversationDeleted": _deleted("conversation.deleted"),
           "ModelList": MODEL_LIST, "Readiness": READINESS, "InspectorList": INSPECTOR_LIST,
           "ResponseEvent": RESPONSE_EVENT, "InspectorEvent": INSPECTOR_EVENT}

# ---------------------------------------------------------------------- building blocks of operations
_ERROR_REASONS = {
    400: "invalid request: the message names the `param`", 401: "missing or wrong gateway key (with `auth.keys`)",
    403: "the key may not use this model, or the inspector", 404: "no such object (or another owner's), or model",
    410: "the background response's event log outgrew `store.max_event_log_bytes`", 413: "body too large",
    415: "not JSON", 426: "a plain GET where a WebSocket upgrade belongs",
    429: "too many concurrent streams, or the upstream's rate limit",
    502: "the upstream failed or is unreachable", 503: "shutting down, no upstream left, or the store is down",
    504: "the upstream did not answer in time"}
# What any route may answer before its handler runs (auth, body size).
_ALWAYS = (401, 413)
_STORED = (*_ALWAYS, 400, 404, 503)


def _error(status: int | str, reason: str | None = None) -> dict[str, Any]:
    return {"description": reason or _ERROR_REASONS[int(status)],
            "content": {"application/json": {"schema": _ref("Error")}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): _error(status) for status in sorted(set(statuses))}


def _json(description: str, schema: dict[str, Any], links: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if links:
        answer["links"] = links
    return answer


def _text(description: str, media_type: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": _STRING}}}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": _STRING}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _link(operation: str, **parameters: str) -> dict[str, Any]:
    return {"operationId": operation, "parameters": parameters}


_RESPONSE_ID = _path("response_id", "a stored response's id (`resp_…`)")
_CONVERSATION_ID = _path("conversation_id", "a conversation's id (`conv_…`)")
_ITEM_ID = _path("item_id", "an item's id in the conversation")
_INCLUDE = [_query("include", {"type": "array", "items": _STRING},
                   "`reasoning.encrypted_content` seals the reasoning items"),
            _query("include[]", {"type": "array", "items": _STRING}, "the same, as the openai SDK spells it")]
_PAGE = [_query("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}, "items per page"),
         _query("order", {"enum": ["asc", "desc"], "default": "desc"}, "oldest or newest first"),
         _query("after", _STRING, "the item id this page starts after")]
_BY_RESPONSE = {"response_id": "$response.body#/id"}
_BY_CONVERSATION = {"conversation_id": "$response.body#/id"}
_RESPONSE_LINKS = {"GetResponse": _link("getResponse", **_BY_RESPONSE),
                   "ListInputItems": _link("listInputItems", **_BY_RESPONSE),
                   "CancelResponse": _link("cancelResponse", **_BY_RESPONSE),
                   "DeleteResponse": _link("deleteResponse", **_BY_RESPONSE)}
_CONVERSATION_LINKS = {"GetConversation": _link("getConversation", **_BY_CONVERSATION),
                       "UpdateConversation": _link("updateConversation", **_BY_CONVERSATION),
                       "ListConversationItems": _link("listConversationItems", **_BY_CONVERSATION),
                       "AddConversationItems": _link("addConversationItems", **_BY_CONVERSATION),
                       "DeleteConversation": _link("deleteConversation", **_BY_CONVERSATION)}
_ITEM_LINKS = {"GetConversationItem": _link("getConversationItem", conversation_id="$request.path.conversation_id",
                                            item_id="$response.body#/first_id"),
               "DeleteConversationItem": _link("deleteConversationItem",
                                               conversation_id="$request.path.conversation_id",
                                               item_id="$response.body#/first_id")}


def _operation(operation_id: str, summary: str, responses: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"operationId": operation_id, "summary": summary, **fields, "responses": responses}


_OPEN: dict[str, Any] = {"security": []}  # answers without a gateway key even with `auth.keys`

# ---------------------------------------------------------------------- the paths
_RESPONSES = {
    "/v1/responses": {"post": _operation(
        "createResponse", "Create a response: translated to a Chat Completions request upstream", {
            "200": {"description": "the Response (`background`: queued), or its event stream with `stream`",
                    "content": {"application/json": {"schema": _ref("Response")},
                                "text/event-stream": {"schema": _ref("ResponseEvent")}},
                    "links": _RESPONSE_LINKS},
            **_errors(*_ALWAYS, 400, 403, 404, 415, 429, 502, 503, 504),
            "default": _error("default", "the upstream's own error status and message")},
        requestBody=_body(_ref("ResponseRequest"))),
        "get": _operation(
            "responsesWebSocket", "WebSocket mode (README): `response.create` messages in, the same events out", {
                "101": {"description": "switched to the WebSocket protocol"},
                **_errors(*_ALWAYS, 403, 426, 429, 503)})},
    "/v1/responses/{response_id}": {
        "parameters": [_RESPONSE_ID],
        "get": _operation("getResponse", "A stored response; with `stream`, a background stream replayed and followed", {
            "200": {"description": "the Response, or with `stream=true` its events after `starting_after`",
                    "content": {"application/json": {"schema": _ref("Response")},
                                "text/event-stream": {"schema": _ref("ResponseEvent")}}},
            **_errors(*_STORED, 410)},
            parameters=[_query("stream", {"type": "boolean"}, "replay and follow a background stream"),
                        _query("starting_after", {"type": "integer", "minimum": 0},
                               "the sequence number after which the replay starts"),
                        _query("include_obfuscation", {"type": "boolean"}, "accepted; nothing is padded"),
                        *_INCLUDE]),
        "delete": _operation("deleteResponse", "Delete a stored response", {
            "200": _json("deleted", _ref("ResponseDeleted")), **_errors(*_STORED)})},
    "/v1/responses/compact": {"post": _operation(
        "compactResponse", "The conversation summarised by the upstream into one sealed compaction item, the "
        "base input of the next request (README: Compaction)", {
            "200": _json("a response.compaction object", _ref("Compacted")),
            **_errors(*_ALWAYS, 400, 403, 404, 415, 429, 502, 503, 504),
            "default": _error("default", "the upstream's own error status and message")},
        requestBody=_body(_ref("CompactRequest")))},
    "/v1/responses/input_tokens": {"post": _operation(
        "countInputTokens", "How many tokens the request's input would take upstream: exact from vLLM's or "
        "llama.cpp's tokenizer, else an estimate or a one-token completion (README: Counting input tokens)", {
            "200": _json("a response.input_tokens object", _ref("InputTokens")),
            **_errors(*_ALWAYS, 400, 403, 404, 415, 502, 503, 504),
            "default": _error("default", "the upstream's own error status and message")},
        requestBody=_body(_ref("InputTokensRequest")))},
    "/v1/responses/{response_id}/cancel": {"post": _operation(
        "cancelResponse", "Cancel a background response", {
            "200": _json("the response as it ended", _ref("Response")), **_errors(*_STORED)},
        parameters=[_RESPONSE_ID])},
    "/v1/responses/{response_id}/input_items": {"get": _operation(
        "listInputItems", "A stored response's input items, with ids", {
            "200": _json("a page of items", _ref("ItemList")), **_errors(*_STORED)},
        parameters=[_RESPONSE_ID, *_PAGE])},
}
_CONVERSATIONS = {
    "/v1/conversations": {"post": _operation(
        "createConversation", "Create a conversation, optionally with up to 20 items", {
            "200": _json("the conversation", _ref("Conversation"), _CONVERSATION_LINKS), **_errors(*_STORED, 415)},
        requestBody=_body(_ref("ConversationCreate"), required=False))},
    "/v1/conversations/{conversation_id}": {
        "parameters": [_CONVERSATION_ID],
        "get": _operation("getConversation", "A conversation", {
            "200": _json("the conversation", _ref("Conversation")), **_errors(*_STORED)}),
        "post": _operation("updateConversation", "Replace a conversation's metadata", {
            "200": _json("the conversation", _ref("Conversation")), **_errors(*_STORED, 415)},
            requestBody=_body(_ref("ConversationUpdate"))),
        "delete": _operation("deleteConversation", "Delete a conversation and its items", {
            "200": _json("deleted", _ref("ConversationDeleted")), **_errors(*_STORED)})},
    "/v1/conversations/{conversation_id}/items": {
        "parameters": [_CONVERSATION_ID],
        "get": _operation("listConversationItems", "A conversation's items", {
            "200": _json("a page of items", _ref("ItemList"), _ITEM_LINKS), **_errors(*_STORED)},
            parameters=_PAGE),
        "post": _operation("addConversationItems", "Add up to 20 items to a conversation", {
            "200": _json("the items added, with ids", _ref("ItemList"), _ITEM_LINKS), **_errors(*_STORED, 415)},
            requestBody=_body(_ref("ItemsAdd")))},
    "/v1/conversations/{conversation_id}/items/{item_id}": {
        "parameters": [_CONVERSATION_ID, _ITEM_ID],
        "get": _operation("getConversationItem", "One item of a conversation", {
            "200": _json("the item", _ref("Item")), **_errors(*_STORED)}),
        "delete": _operation("deleteConversationItem", "Delete one item of a conversation", {
            "200": _json("the conversation", _ref("Conversation")), **_errors(*_STORED)})},
}
_UPSTREAM = {
    "/v1/chat/completions": {"post": _operation(
        "chatCompletions", "Pass-through to the routed upstream: bytes in both directions unchanged", {
            "200": {"description": "the upstream's answer, streamed or not",
                    "content": {"application/json": {"schema": {"type": "object"}},
                                "text/event-stream": {"schema": _event(["data"], _STRING)}}},
            **_errors(*_ALWAYS, 403, 404, 502, 503, 504),
            "default": _error("default", "the upstream's own error status and message")},
        requestBody=_body({"type": "object"}))},
    "/v1/models": {"get": _operation("listModels", "Every upstream's models, under names that route to them", {
        "200": _json("the merged model list", _ref("ModelList")), **_errors(401, 502, 503, 504)})},
}
_OPERATIONS = {
    "/healthz": {"get": _operation("healthz", "The process is up", {
        "200": _json("up", _object(["status"], status={"const": "ok"}))}, **_OPEN)},
    "/readyz": {"get": _operation("readyz", "Each upstream's state", {
        "200": _json("at least one upstream answers", _ref("Readiness")),
        "503": _json("no upstream answers", _ref("Readiness"))}, **_OPEN)},
    "/metrics": {"get": _operation("metrics", "Prometheus metrics", {
        "200": _text("the exposition format", "text/plain"), "404": _error(404, "`server.metrics: false`")},
        **_OPEN)},
    "/openapi.json": {"get": _operation("openapi", "This document", {
        "200": _json("OpenAPI 3.1", {"type": "object"})}, **_OPEN)},
}
_INSPECTOR = {
    "/debug": {"get": _operation("inspectorRedirect", "To the inspector's page at `/debug/`", {
        "302": {"description": "redirect to `debug/`",
                "headers": {"Location": {"schema": {"const": "debug/"}, "required": True}}}}, **_OPEN)},
    "/debug/": {"get": _operation("inspectorPage", "The live inspector's page (it holds no data)", {
        "200": _text("the page", "text/html")}, **_OPEN)},
    "/debug/inspector.js": {"get": _operation("inspectorScript", "The page's script", {
        "200": _text("the script", "text/javascript")}, **_OPEN)},
    "/debug/requests": {"get": _operation("inspectorRequests", "Open streams and recent requests", {
        "200": _json("the lists", _ref("InspectorList")), **_errors(401, 403)})},
    "/debug/requests/{key}/events": {"get": _operation(
        "inspectorEvents", "One request's events so far, then live, then `end`", {
            "200": {"description": "server-sent events: `data:` a JSON list of events; `end` the request's row",
                    "content": {"text/event-stream": {"schema": _ref("InspectorEvent")}}},
            **_errors(401, 403, 404)},
        parameters=[_path("key", "the request's key in the lists")])},
    "/debug/captures/{name}": {"get": _operation("inspectorCapture", "A capture file (`debug.capture`)", {
        "200": _json("the capture", {"type": "object"}), **_errors(401, 403, 404)},
        parameters=[_path("name", "the file's name (`….json`)"),
                    _query("download", _STRING, "any value: ask the browser to save it")])},
}


def _aliases(paths: dict[str, Any]) -> dict[str, Any]:
    """`/v1/x` answers at `/x` too: the same operations, without operationIds (those name the `/v1` ones)."""
    aliases = {}
    for path, item in paths.items():
        if path.startswith("/v1/"):
            alias = copy.deepcopy(item)
            for method in ("get", "post", "delete"):
                if method in alias:
                    alias[method].pop("operationId")
                    alias[method]["summary"] = f"Same as {method.upper()} {path}"
            aliases[path.removeprefix("/v1")] = alias
    return aliases


def openapi_document() -> dict[str, Any]:
    paths = {**_RESPONSES, **_CONVERSATIONS, **_UPSTREAM}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Responses gateway", "version": __version__,
                 "description": "OpenAI Responses API over any Chat Completions upstream. Every `/v1/…` path "
                                "also answers without `/v1`. The `/debug` paths exist with `debug.inspector: true` "
                                "only."},
        # Without `auth.keys` the gateway is open; with them, a key as a bearer token.
        "security": [{}, {"gatewayKey": []}],
        "paths": {**paths, **_OPERATIONS, **_INSPECTOR, **_aliases(paths)},
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"gatewayKey": {"type": "http", "scheme": "bearer",
                                                          "description": "a key of `auth.keys`"}}},
    }
