"""HTTP edge: parse and validate client requests, run the pipeline, shape errors."""
from __future__ import annotations

import asyncio
import re
import time
from contextvars import ContextVar
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp import web

from .bounds import depth_exceeds
from .errors import GatewayError, InvalidRequest, UpstreamTimeout, error_envelope, internal_error_message
from .event_stream import EventStream, FinalResponse, json_response
from .ids import new_request_id
from .log import get_logger
from .openapi import openapi_document
from .pipeline import DebugLog, Run, Sink, Tee, run_pipeline
from .state import STATE, AppState
from .translate import translate_request
from .upstream import http_error

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_JSON_TYPES = ("application/json", "")

routes = web.RouteTableDef()
OPENAPI = openapi_document()
# Each request runs in its own task, so a ContextVar carries its id to handlers and logs.
current_request_id: ContextVar[str] = ContextVar("request_id", default="")


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
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        response = await _answer(request, handler, request_id)
    if not response.prepared:
        response.headers["X-Request-ID"] = request_id
    return response


async def _answer(request: web.Request, handler: Any, request_id: str) -> web.StreamResponse:
    try:
        return await handler(request)
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
        get_logger().exception("request.crashed", path=request.path)
        response = json_response(error_envelope(internal_error_message(request_id), "server_error", None,
                                                "internal_error"), status=500)
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
    if depth_exceeds(document, state.config.server.max_json_depth):
        raise InvalidRequest(f"The JSON body is nested deeper than {state.config.server.max_json_depth} levels.",
                             code="invalid_json")
    return document


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
        if state.active >= state.config.server.max_concurrent_streams:
            raise GatewayError("Too many concurrent streams on this gateway; retry shortly.", status=429,
                               code="rate_limit_exceeded", headers={"Retry-After": "1"})
        chat = translate_request(await read_json(request, state), state.config.upstream)
    except GatewayError as exc:
        _log_finished(state, received, exc.status, error=exc)
        raise
    run = Run(request_id, chat)
    sink = _sink(request, state, request_id, streaming=chat.stream)
    del chat  # `run` keeps what it needs; the request body goes once it was sent upstream
    http_status, error = 200, None
    state.runs.add(run)
    try:
        await run_pipeline(run, state.upstream, sink, keepalive_interval=state.config.server.keepalive_interval,
                           client_authorization=request.headers.get("Authorization"), debug=state.debug)
        response = await sink.finish()
        assert response is not None, "the client's sink answers"
        http_status = response.status
        return response
    except GatewayError as exc:
        http_status, error = exc.status, exc
        raise
    except Exception:
        http_status = 500  # a gateway bug before the stream started: the middleware answers and logs it
        raise
    finally:
        sink.abandon()
        state.runs.discard(run)
        _log_finished(state, received, http_status, error=error, run=run)


def _sink(request: web.Request, state: AppState, request_id: str, *, streaming: bool) -> Sink:
    """The request's consumers of its events, chosen once: the client's sink, behind a debug tap at debug level."""
    client: Sink = (EventStream(request, {"X-Request-ID": request_id}, state.keepalive) if streaming
                    else FinalResponse(request_id))
    return Tee(DebugLog(), client) if state.debug else client


def _log_finished(state: AppState, received: float, http_status: int, *, error: GatewayError | None = None,
                  run: Run | None = None) -> None:
    """The one `response.finished` line of every request, refused before the upstream or run (same fields)."""
    fields: dict[str, Any] = {
        "response_id": None, "model": None, "stream": None, "status": None, "finish_reason": None,
        "error_code": error.code if error else None, "param": error.param if error else None, "ttft_ms": None,
        "events": 0, "input_tokens": None, "output_tokens": None, "client_disconnected": False}
    log = get_logger()
    if run is not None:
        stream = run.stream
        response = stream.terminal["response"] if stream.terminal else None
        usage = (response or {}).get("usage") or {}
        for warning in run.warnings + stream.warnings:
            log.warning("response.warning", warning=warning)
        fields.update(
            response_id=stream.response_id, model=run.model, stream=run.streaming,
            status=response["status"] if response else None, finish_reason=stream.finish_reason,
            error_code=((response or {}).get("error") or {}).get("code") or fields["error_code"],
            ttft_ms=run.ttft_ms, events=stream.events_emitted, input_tokens=usage.get("input_tokens"),
            output_tokens=usage.get("output_tokens"), client_disconnected=run.client_disconnected)
    log.info("response.finished", upstream=state.upstream.base_url, http_status=http_status,
             duration_ms=round((time.monotonic() - received) * 1000, 1), **fields)


@routes.post("/v1/chat/completions")
@routes.post("/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Pass-through: the client's bytes go up, the upstream's bytes come back unchanged."""
    state = STATE.get(request.app)
    body = await request.read()
    headers = state.upstream.headers(current_request_id.get(), request.headers.get("Authorization"))
    headers["Content-Type"] = request.headers.get("Content-Type", "application/json")
    config = state.upstream.config
    try:
        async with asyncio.timeout(config.first_byte_timeout):
            upstream = await state.upstream.session.post(f"{state.upstream.base_url}/chat/completions",
                                                         data=body, headers=headers)
    except TimeoutError:
        raise UpstreamTimeout(f"the upstream did not answer within {config.first_byte_timeout:g}s") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise state.upstream.unreachable(exc, current_request_id.get()) from None
    try:
        if upstream.status >= 400 and upstream.content_type != "application/json":
            raise await http_error(upstream, config.idle_timeout)
        response = web.StreamResponse(status=upstream.status, headers={
            "Content-Type": upstream.headers.get("Content-Type", "application/json"),
            "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        if "Retry-After" in upstream.headers:
            response.headers["Retry-After"] = upstream.headers["Retry-After"]
        response.headers["X-Request-ID"] = current_request_id.get()
        await response.prepare(request)
        failure = await _relay(upstream, response, config.idle_timeout)
        if failure:
            # Bytes were relayed: a second status line cannot follow, and ending the body normally
            # would pass the truncation off as complete. Close the connection without the body's end.
            get_logger().warning("passthrough.upstream_cut", upstream=state.upstream.base_url, reason=failure)
            response.force_close()
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response
    finally:
        upstream.close()


async def _relay(upstream: aiohttp.ClientResponse, response: web.StreamResponse, idle_timeout: float) -> str:
    """Copy the upstream's body to the client as it arrives; why it stopped early, or "" at its end."""
    content = upstream.content
    while True:
        try:
            async with asyncio.timeout(idle_timeout):  # waiting for the client does not count
                data = await content.readany()
        except TimeoutError:
            return f"the upstream sent nothing for {idle_timeout:g}s"
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            exc.__traceback__ = None  # aiohttp may raise one shared object (see UpstreamStream.batches)
            return str(exc) or type(exc).__name__
        if not data:
            return ""
        await response.write(data)


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
