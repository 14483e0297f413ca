"""Typed errors and the OpenAI error envelope.

Every failure that reaches a client is one of these, so routes never have to guess
an HTTP status or an error shape.
"""
from __future__ import annotations

import re
from typing import Any

# Codes clients act on (Codex backs off on rate limits, explains quota and context overflows).
CLIENT_ERROR_CODES = frozenset({
    "context_length_exceeded", "insufficient_quota", "rate_limit_exceeded", "server_error",
    "invalid_prompt",
})
# How upstreams spell a context overflow (llama.cpp, vLLM, Anthropic-compatible servers, ...).
_CONTEXT_CODES = frozenset({"exceed_context_size_error", "context_window_exceeded", "context_length_exceeded"})
_CONTEXT_MESSAGE = re.compile(r"context (length|window|size)|maximum context|maximum model length|prompt is too long",
                              re.IGNORECASE)


class GatewayError(Exception):
    """An error with everything the OpenAI envelope needs."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        return error_envelope(self.message, self.type, self.param, self.code)


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class UpstreamError(GatewayError):
    """The upstream failed before our stream started (or, mid-stream, the code for response.failed)."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamHTTPError(UpstreamError):
    """The upstream answered non-2xx: we keep its status and message."""

    def __init__(self, status: int, message: str, *, code: str | None = None, err_type: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, param=param, code=code or "upstream_error", status=status, headers=headers)
        if err_type:
            self.type = err_type


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class ConfigError(Exception):
    """A bad configuration value: the message names the key."""


def error_envelope(message: str, err_type: str, param: str | None = None,
                   code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def internal_error_message(request_id: str) -> str:
    """What a client learns of a gateway bug: where to look, nothing more."""
    return f"The gateway hit an internal error; see its log for request {request_id}."


def error_code(code: Any, err_type: Any, message: Any, status: int | None = None) -> str:
    """The `error.code` a client should see for an upstream error, in OpenAI's vocabulary where one fits."""
    for candidate in (code, err_type):
        if isinstance(candidate, str):
            if candidate in CLIENT_ERROR_CODES:
                return candidate
            if candidate in _CONTEXT_CODES:
                return "context_length_exceeded"
    if isinstance(message, str) and _CONTEXT_MESSAGE.search(message):
        return "context_length_exceeded"
    if status == 429:
        return "rate_limit_exceeded"
    return code if isinstance(code, str) and code else "upstream_error"
