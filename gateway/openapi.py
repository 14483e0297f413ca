"""The OpenAPI 3.1 document for our endpoints (served at GET /openapi.json).

It describes the request shapes the gateway accepts and the error envelope every 4xx/5xx
carries; the test suite runs schemathesis against a live gateway with it.
"""
from __future__ import annotations

from typing import Any

from . import __version__

_TEXT_PART = {"type": "object", "required": ["type", "text"], "properties": {
    "type": {"enum": ["input_text", "output_text"]}, "text": {"type": "string"}}}
_IMAGE_PART = {"type": "object", "required": ["type", "image_url"], "properties": {
    "type": {"const": "input_image"}, "image_url": {"type": "string"},
    "detail": {"enum": ["auto", "low", "high"]}}}
_CONTENT = {"oneOf": [{"type": "string"},
                      {"type": "array", "items": {"oneOf": [_TEXT_PART, _IMAGE_PART]}}]}
_MESSAGE = {"type": "object", "required": ["role", "content"], "properties": {
    "type": {"const": "message"}, "role": {"enum": ["user", "assistant", "system", "developer"]},
    "content": _CONTENT}}
_FUNCTION_CALL = {"type": "object", "required": ["type", "call_id", "name", "arguments"], "properties": {
    "type": {"const": "function_call"}, "call_id": {"type": "string"}, "name": {"type": "string"},
    "arguments": {"type": "string"}, "id": {"type": "string"}}}
_FUNCTION_OUTPUT = {"type": "object", "required": ["type", "call_id", "output"], "properties": {
    "type": {"const": "function_call_output"}, "call_id": {"type": "string"}, "output": {"type": "string"}}}
_REASONING = {"type": "object", "required": ["type"], "properties": {
    "type": {"const": "reasoning"}, "summary": {"type": "array"},
    "encrypted_content": {"type": ["string", "null"]}}}
_FUNCTION_TOOL = {"type": "object", "required": ["type", "name"], "properties": {
    "type": {"const": "function"}, "name": {"type": "string", "minLength": 1},
    "description": {"type": "string"}, "parameters": {"type": "object"}, "strict": {"type": "boolean"}}}
_TOOL_CHOICE = {"oneOf": [
    {"enum": ["auto", "none", "required"]},
    {"type": "object", "required": ["type", "name"], "properties": {
        "type": {"const": "function"}, "name": {"type": "string"}}}]}
_TEXT_FORMAT = {"type": "object", "required": ["type"], "properties": {
    "type": {"enum": ["text", "json_object", "json_schema"]}, "name": {"type": "string"},
    "schema": {"type": "object"}, "strict": {"type": "boolean"}}}

RESPONSE_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {
            "oneOf": [_MESSAGE, _FUNCTION_CALL, _FUNCTION_OUTPUT, _REASONING]}}]},
        "instructions": {"type": ["string", "null"]},
        "stream": {"type": ["boolean", "null"]},
        "tools": {"type": "array", "items": _FUNCTION_TOOL},
        "tool_choice": _TOOL_CHOICE,
        "parallel_tool_calls": {"type": ["boolean", "null"]},
        "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
        "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "max_output_tokens": {"type": ["integer", "null"], "minimum": 1},
        "presence_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
        "frequency_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
        "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
        "max_tool_calls": {"type": ["integer", "null"], "minimum": 0},
        "service_tier": {"enum": ["auto", "default", "flex", "scale", "priority", None]},
        "safety_identifier": {"type": ["string", "null"]},
        "prompt_cache_key": {"type": ["string", "null"]},
        "text": {"type": "object", "properties": {"format": _TEXT_FORMAT}},
        "reasoning": {"type": ["object", "null"], "properties": {
            "effort": {"enum": ["none", "minimal", "low", "medium", "high", "xhigh"]},
            "summary": {"enum": ["auto", "concise", "detailed"]}}},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "store": {"type": ["boolean", "null"]},
        "user": {"type": "string"},
        "include": {"type": "array", "items": {"type": "string"}},
    },
}

_COMPACTION = {"type": "object", "required": ["type", "encrypted_content"], "properties": {
    "type": {"const": "compaction"}, "encrypted_content": {"type": "string"}, "id": {"type": "string"}}}
COMPACT_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["model"],
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {
            "oneOf": [_MESSAGE, _FUNCTION_CALL, _FUNCTION_OUTPUT, _REASONING, _COMPACTION]}}]},
        **{name: {"type": ["string", "null"]} for name in ("instructions", "previous_response_id", "prompt_cache_key")},
    },
}

ERROR_ENVELOPE: dict[str, Any] = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type", "param", "code"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}

_ERRORS = {str(status): {"description": reason, "content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/Error"}}}}
    for status, reason in ((400, "invalid request"), (413, "body too large"), (415, "not JSON"),
                           (429, "too many concurrent streams, or the upstream's rate limit"),
                           (502, "the upstream failed or is unreachable"), (503, "shutting down"),
                           (504, "the upstream did not answer in time"))}


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Responses gateway", "version": __version__,
                 "description": "OpenAI Responses API over any Chat Completions upstream."},
        "paths": {
            "/v1/responses": {"post": {
                "operationId": "createResponse",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ResponseRequest"}}}},
                "responses": {"200": {"description": "a Response object, or its event stream when stream is true",
                                      "content": {"application/json": {"schema": {"type": "object"}},
                                                  "text/event-stream": {"schema": {"type": "string"}}}},
                              **_ERRORS}}},
            "/v1/responses/compact": {"post": {
                "operationId": "compactResponse",
                "description": "The conversation summarised by the upstream into one sealed compaction item, "
                               "to send as the base input of the next request (README: Compaction).",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/CompactRequest"}}}},
                "responses": {"200": _json("a response.compaction object"), **_ERRORS}}},
            "/v1/chat/completions": {"post": {
                "operationId": "chatCompletions",
                "description": "Pass-through to the upstream: bytes in both directions unchanged.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"200": _json("the upstream's answer"), "502": _ERRORS["502"]}}},
            "/v1/models": {"get": {"operationId": "listModels",
                                   "responses": {"200": _json("the upstream's model list"),
                                                 "502": _ERRORS["502"]}}},
            "/healthz": {"get": {"operationId": "healthz", "responses": {"200": _json("the process is up")}}},
            "/readyz": {"get": {"operationId": "readyz", "responses": {
                "200": _json("the upstream answers"), "503": _json("the upstream does not answer")}}},
        },
        "components": {"schemas": {"ResponseRequest": RESPONSE_REQUEST, "CompactRequest": COMPACT_REQUEST,
                                   "Error": ERROR_ENVELOPE}},
    }
