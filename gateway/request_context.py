"""The request being answered: its id, on every log line written for it, and its one `response.finished` line.

The id travels in one ContextVar. The envelope middleware sets it for each request (each runs in its
own task); a background run sets its request's id again in its own task, which may have been started
from another request's (see background.BackgroundRuns._execute). `add_request_id`, a log processor,
puts it on every line.
"""
from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .errors import GatewayError
from .ids import new_request_id
from .keys import request_key
from .log import get_logger

if TYPE_CHECKING:
    from .capture import Recorder
    from .inspector import Watch
    from .pipeline import Run
    from .routing import RoutedRequest
    from .state import AppState

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
current_request_id: ContextVar[str] = ContextVar("request_id", default="")


def request_id_of(request: web.Request) -> str:
    """The client's X-Request-ID when it is a sensible one, else a new id."""
    given = request.headers.get("X-Request-ID", "")
    return given if _REQUEST_ID.match(given) else new_request_id()


def add_request_id(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Log processor: the current request's id, unless the line names one itself."""
    request_id = current_request_id.get()
    if request_id:
        event.setdefault("request_id", request_id)
    return event


async def log_finished(state: AppState, request: web.Request, received: float, http_status: int, *,
                       error: GatewayError | None = None, run: Run | None = None,
                       routed: RoutedRequest | None = None, capture: Recorder | None = None,
                       watch: Watch | None = None, transport: str = "http") -> None:
    """The one `response.finished` line of every request (of every WebSocket turn: `transport`),
    refused before the upstream or run (same fields), and its metrics; a kept capture is named on
    the line, and the inspector keeps the outcome."""
    key = request_key(request)
    fields: dict[str, Any] = {
        "transport": transport,
        "response_id": None, "model": None, "upstream": None, "failed_first": None, "key": key.name if key else None,
        "stream": None, "status": None, "finish_reason": None, "error_code": error.code if error else None,
        "error_message": error.message if error else None, "param": error.param if error else None,
        "ttft_ms": None, "events": 0, "input_tokens": None, "output_tokens": None, "client_disconnected": False,
        "incomplete_reason": None}
    log = get_logger()
    if run is not None:
        stream = run.stream
        response = stream.terminal["response"] if stream.terminal else None
        usage = (response or {}).get("usage") or {}
        failure = (response or {}).get("error") or {}
        for warning in run.warnings + stream.warnings:
            log.warning("response.warning", warning=warning)
        fields.update(
            response_id=stream.response_id, model=run.model, stream=run.streaming,
            status=response["status"] if response else None, finish_reason=stream.finish_reason,
            error_code=failure.get("code") or fields["error_code"],
            error_message=(failure.get("message") or fields["error_message"] or "")[:500] or None,
            ttft_ms=run.ttft_ms, events=stream.events_emitted, input_tokens=usage.get("input_tokens"),
            output_tokens=usage.get("output_tokens"), client_disconnected=run.client_disconnected,
            incomplete_reason=((response or {}).get("incomplete_details") or {}).get("reason"))
        if run.loop is not None:  # hosted tools (gateway/tools): how far the loop went, and the bound it hit
            fields.update(tool_rounds=run.loop.rounds, tool_calls=run.loop.calls)
            if run.loop.bound is not None:  # the response says max_messages: the line says which bound
                fields["incomplete_reason"] = run.loop.bound
    if routed is not None:
        fields.update(routed.log_fields())
    if run is not None and routed is not None:
        state.metrics.finished("/v1/responses", run, routed, http_status, fields["error_code"])
    else:
        state.metrics.rejected("/v1/responses", http_status, fields["key"])
    outcome = {"response_id": fields["response_id"], "http_status": http_status, "status": fields["status"],
               "error_code": fields["error_code"], "error_message": fields["error_message"],
               "client_disconnected": fields["client_disconnected"]}
    kept = await capture.save(outcome, routed) if capture is not None else None
    if kept:
        fields["capture"] = kept
    if watch is not None and state.inspector is not None:
        state.inspector.end(watch, {**outcome, "upstream": fields["upstream"]}, kept)
    log.info("response.finished", http_status=http_status,
             duration_ms=round((time.monotonic() - received) * 1000, 1), **fields)


@contextlib.contextmanager
def finished_line(event: str, fields: dict[str, Any]) -> Iterator[dict[str, int]]:
    """The one `event` line of a side endpoint (compaction, token counts): `fields` as the handler filled
    them, its status (set `http_status` in the yielded dict on success; a GatewayError sets its own and
    `error_code`; anything else is a 500) and its duration."""
    received = time.monotonic()
    outcome = {"http_status": 500}
    try:
        yield outcome
    except GatewayError as exc:
        outcome["http_status"], fields["error_code"] = exc.status, exc.code
        raise
    finally:
        get_logger().info(event, http_status=outcome["http_status"],
                          duration_ms=round((time.monotonic() - received) * 1000, 1), **fields)
