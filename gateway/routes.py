"""HTTP edge: parse and validate client requests, run the pipeline, shape errors."""
from __future__ import annotations

import re
import time
from contextvars import ContextVar
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from .errors import GatewayError, InvalidRequest, UpstreamUnavailable, error_envelope
from .event_stream import EventStream, FinalResponse
from .ids import new_request_id
from .log import get_logger
from .openapi import openapi_document
from .pipeline import Run, run_pipeline
from .state import STATE, AppState
from .store.recorder import StoreRecorder, Tee
from .store.service import with_context
from .translate import translate_request
from .upstream import http_error

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_JSON_TYPES = ("application/json", "")
# HTTP status for a non-streaming response that failed, by error code.
_FAILED_STATUS = {"upstream_timeout": 504, "server_shutting_down": 503, "rate_limit_exceeded": 429,
                  "store_unavailable": 503}

routes = web.RouteTableDef()
OPENAPI = openapi_document()
# Each request runs in its own task, so a ContextVar carries its id to handlers and logs.
current_request_id: ContextVar[str] = ContextVar("request_id", default="")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=headers,
                        content_type="application/json")


def error_response(exc: GatewayError) -> web.Response:
    return json_response(exc.envelope(), status=exc.status, headers=exc.headers)


def request_id_of(request: web.Request) -> str:
    given = request.headers.get("X-Request-ID", "")
    return given if _REQUEST_ID.match(given) else new_request_id()


@web.middleware
async def envelope_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Request ids on every answer; every error, even aiohttp's own 404/405/413, in OpenAI's shape."""
    request_id = request_id_of(request)
    current_request_id.set(request_id)
    try:
        response = await handler(request)
    except GatewayError as exc:
        response = error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = json_response(error_envelope(_http_message(exc), "invalid_request_error", None,
                                                exc.reason.lower().replace(" ", "_")),
                                 status=exc.status, headers={k: v for k, v in exc.headers.items()
                                                             if k in ("Allow", "Retry-After")})
    except Exception:
        get_logger().exception("request.crashed", request_id=request_id, path=request.path)
        response = json_response(error_envelope("The gateway hit an internal error; see its log for "
                                                f"request {request_id}.", "server_error", None, "internal_error"),
                                 status=500)
    if not response.prepared:
        response.headers["X-Request-ID"] = request_id
    return response


def _http_message(exc: web.HTTPException) -> str:
    if exc.status == 404:
        return "Unknown path. Endpoints: POST /v1/responses, POST /v1/chat/completions, GET /v1/models."
    if exc.status == 405:
        return f"Method not allowed. Allowed: {exc.headers.get('Allow', '')}."
    if exc.status == 413:
        return "Request body too large."
    return exc.text or exc.reason


async def read_json(request: web.Request, state: AppState) -> Any:
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type not in _JSON_TYPES and not content_type.endswith("+json"):
        raise InvalidRequest(f"Unsupported Content-Type {content_type!r}: send application/json.",
                             status=415, code="unsupported_media_type")
    body = await request.read()
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"We could not parse the JSON body of your request ({exc}).",
                             code="invalid_json") from None
    if _depth_exceeds(document, state.config.server.max_json_depth):
        raise InvalidRequest(f"The JSON body is nested deeper than {state.config.server.max_json_depth} levels.",
                             code="invalid_json")
    return document


def _depth_exceeds(document: Any, limit: int) -> bool:
    level = [document]
    for _ in range(limit):
        level = [child for node in level if isinstance(node, (dict, list))
                 for child in (node.values() if isinstance(node, dict) else node)
                 if isinstance(child, (dict, list))]
        if not level:
            return False
    return True


@routes.post("/v1/responses")
@routes.post("/responses")
async def create_response(request: web.Request) -> web.StreamResponse:
    state = STATE.get(request.app)
    request_id = current_request_id.get()
    received = time.monotonic()
    try:
        if state.shutting_down:
            raise GatewayError("The gateway is shutting down; retry the request.", status=503,
                               code="server_shutting_down", headers={"Retry-After": "1"})
        body = await read_json(request, state)
        background = isinstance(body, dict) and body.get("background") is True  # queued past the limit instead
        if state.active >= state.config.server.max_concurrent_streams and not background:
            raise GatewayError("Too many concurrent streams on this gateway; retry shortly.", status=429,
                               code="rate_limit_exceeded", headers={"Retry-After": "1"})
        turn = await state.stored.prepare(body, request.headers.get("Authorization"))
        chat = translate_request(with_context(body, turn), state.config.upstream)
        if background:
            return await state.background.submit(request, request_id, turn, chat)
    except GatewayError as exc:
        _log_rejected(state, request_id, exc, received)
        raise
    run = Run(request_id, chat)
    sink = EventStream(request, {"X-Request-ID": request_id}, state.keepalive) if chat.stream else FinalResponse()
    del chat, body  # `run` keeps what it needs; the request body goes once it was sent upstream
    # Stored responses: the recorder sees each batch before the client does (gateway/store/recorder.py).
    pipeline_sink = Tee(sink, StoreRecorder(state.stored, turn)) if turn is not None and turn.records else sink
    http_status, error_code = 200, None
    state.runs.add(run)
    try:
        await run_pipeline(run, state.upstream, pipeline_sink,
                           keepalive_interval=state.config.server.keepalive_interval, client_authorization=request.headers.get("Authorization"), debug=state.debug)
        if isinstance(sink, EventStream):
            await sink.close()
            assert sink.response is not None
            return sink.response
        response = run.stream.response
        if response["status"] == "failed":
            error_code = response["error"]["code"]
            http_status = _FAILED_STATUS.get(error_code, 502)
            return json_response(error_envelope(response["error"]["message"], "upstream_error", None, error_code),
                                 status=http_status)
        return json_response(response)
    except GatewayError as exc:
        http_status, error_code = exc.status, exc.code
        raise
    finally:
        if isinstance(sink, EventStream):
            sink.abandon()
        state.runs.discard(run)
        _log_finished(state, run, http_status, error_code)


def _log_rejected(state: AppState, request_id: str, exc: GatewayError, received: float) -> None:
    """The one log line of a request refused before it reached the upstream (same fields as below)."""
    get_logger().info(
        "response.finished", request_id=request_id, response_id=None, model=None,
        upstream=state.upstream.base_url, stream=None, http_status=exc.status, status=None, finish_reason=None,
        error_code=exc.code, param=exc.param, ttft_ms=None,
        duration_ms=round((time.monotonic() - received) * 1000, 1), events=0, input_tokens=None,
        output_tokens=None, client_disconnected=False)


def _log_finished(state: AppState, run: Run, http_status: int, error_code: str | None) -> None:
    stream = run.stream
    terminal = stream.terminal
    response = terminal["response"] if terminal else None
    usage = (response or {}).get("usage") or {}
    for warning in run.warnings + stream.warnings:
        get_logger().warning("response.warning", request_id=run.request_id, warning=warning)
    get_logger().info(
        "response.finished", request_id=run.request_id, response_id=stream.response_id,
        model=run.model, upstream=state.upstream.base_url, stream=run.streaming,
        http_status=http_status, status=response["status"] if response else None,
        finish_reason=stream.finish_reason,
        error_code=((response or {}).get("error") or {}).get("code") or error_code,
        ttft_ms=run.ttft_ms, duration_ms=round((time.monotonic() - run.started_at) * 1000, 1),
        events=stream.events_emitted, input_tokens=usage.get("input_tokens"),
        output_tokens=usage.get("output_tokens"), client_disconnected=run.client_disconnected)


@routes.post("/v1/chat/completions")
@routes.post("/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Pass-through: the client's bytes go up, the upstream's bytes come back unchanged."""
    state = STATE.get(request.app)
    body = await request.read()
    headers = state.upstream.headers(current_request_id.get(), request.headers.get("Authorization"))
    headers["Content-Type"] = request.headers.get("Content-Type", "application/json")
    try:
        upstream = await state.upstream.session.post(f"{state.upstream.base_url}/chat/completions",
                                                     data=body, headers=headers)
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamUnavailable(f"cannot reach the upstream at {state.upstream.base_url}: {exc}") from None
    try:
        if upstream.status >= 400 and upstream.content_type != "application/json":
            raise await http_error(upstream)
        response = web.StreamResponse(status=upstream.status, headers={
            "Content-Type": upstream.headers.get("Content-Type", "application/json"),
            "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        if "Retry-After" in upstream.headers:
            response.headers["Retry-After"] = upstream.headers["Retry-After"]
        response.headers["X-Request-ID"] = current_request_id.get()
        await response.prepare(request)
        async for data in upstream.content.iter_any():
            await response.write(data)
        await response.write_eof()
        return response
    finally:
        upstream.close()


@routes.get("/v1/models")
@routes.get("/models")
async def models(request: web.Request) -> web.Response:
    state = STATE.get(request.app)
    status, body, content_type = await state.upstream.get_json(
        "/models", request_id=current_request_id.get(), client_authorization=request.headers.get("Authorization"),
        timeout=state.config.upstream.connect_timeout + 5)
    return web.Response(body=body, status=status, content_type=content_type or "application/json")


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(OPENAPI)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    state = STATE.get(request.app)
    try:
        status, _, _ = await state.upstream.get_json("/models", request_id=current_request_id.get(),
                                                     client_authorization=None,
                                                     timeout=state.config.upstream.connect_timeout)
    except GatewayError as exc:
        return json_response({"status": "unavailable", "upstream": state.upstream.base_url,
                              "error": exc.message}, status=503)
    ready = status < 500
    return json_response({"status": "ready" if ready else "unavailable", "upstream": state.upstream.base_url,
                          "upstream_status": status}, status=200 if ready else 503)
