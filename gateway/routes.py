"""HTTP edge: parse and validate client requests, run the pipeline, shape errors."""
from __future__ import annotations

import asyncio
import time
from typing import Any, NamedTuple

import aiohttp
import orjson
from aiohttp import web

from .auto_compaction import compaction_asked, compact_in_request, settle
from .bodies import read_body
from .bounds import depth_exceeds
from .capture import Recorder
from .errors import GatewayError, InvalidRequest, UpstreamTimeout, error_envelope, internal_error_message
from .event_stream import EventStream, FinalResponse, json_response
from .keys import forwarded_authorization, owner_of, request_key
from .log import get_logger
from .openapi import openapi_document
from .pipeline import DebugLog, Run, Sink, Tee, run_pipeline
from .request_context import current_request_id, log_finished, request_id_of
from .routing import RoutedRequest, Target, route_request
from .state import STATE, AppState
from .store.recorder import StoreRecorder
from .store.history import History
from .store.service import Turn, with_history
from .tools.loop import ToolLoop
from .translate import ChatRequest
from .upstream import http_error

_JSON_TYPES = ("application/json", "")
_PASSTHROUGH = "/v1/chat/completions"

routes = web.RouteTableDef()
OPENAPI = openapi_document()


def error_response(exc: GatewayError) -> web.Response:
    return json_response(exc.envelope(), status=exc.status, headers=exc.headers)


@web.middleware
async def envelope_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Request ids on every answer; every error, even aiohttp's own 404/405/413, in OpenAI's shape."""
    request_id = request_id_of(request)
    current_request_id.set(request_id)
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
    body = await read_body(request, state.config.server.max_body_bytes)
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
    routed: RoutedRequest | None = None
    settled: dict[str, Any] | None = None
    try:
        state.refuse_when_shutting_down()
        body = await read_json(request, state)
        background = isinstance(body, dict) and body.get("background") is True  # queued past the limit instead
        if state.active >= state.config.server.max_concurrent_streams and not background:
            raise GatewayError("Too many concurrent streams on this gateway; retry shortly.", status=429,
                               code="rate_limit_exceeded", headers={"Retry-After": "1"})
        routed = route_request(state, request, body.get("model") if isinstance(body, dict) else None)
        turn = await state.stored.prepare(body, owner_of(request))
        if background:
            state.background.admit(turn)
        plan = await plan_create(state, request, routed, body, turn)
        chat, loop, settled = plan.chat, plan.loop, plan.settled
        del plan  # the chain's records and the document: `chat` is what is sent
        if background:
            return await state.background.submit(request, request_id, received, turn, chat, routed, loop, settled)
    except GatewayError as exc:
        if routed is not None:
            routed.release()
        await log_finished(state, request, received, exc.status, error=exc)
        raise
    run = Run(request_id, chat, loop)
    capture = start_capture(state, request, run, body, chat)
    watch = state.inspector.watch(run, routed.upstream_name) if state.inspector is not None else None
    sink = _sink(request, state, request_id, streaming=chat.stream,
                 recorder=StoreRecorder(state.stored, turn) if turn is not None and turn.records else None,
                 observers=(capture, watch))
    del chat, body  # `run` keeps what it needs; the request body goes once it was sent upstream
    http_status, error = 200, None
    state.runs.add(run)
    try:
        await run_create(state, request, run, routed, sink, settled)
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
        state.run_ended(run)
        routed.release()
        await log_finished(state, request, received, http_status, error=error, run=run, routed=routed,
                            capture=capture, watch=watch)


class Plan(NamedTuple):
    """What a create request runs (`plan_create`)."""

    document: Any                    # the request as translated: with a chain, its own input alone
    earlier: History | None          # the chain's earlier turns as read from the store (else None)
    chat: ChatRequest                # the upstream request
    loop: ToolLoop | None            # its tool loop
    settled: dict[str, Any] | None   # for a compaction_trigger, the usage of the answer the compaction settled


async def plan_create(state: AppState, request: web.Request, routed: RoutedRequest, body: Any, turn: Turn | None,
                      *, compact: bool = True) -> Plan:
    """What a create request runs, for a POST and a WebSocket turn alike, from its body and its turn's store
    plan: the upstream request (compacted first when it asks: gateway/auto_compaction.py; not `compact`: a
    warm-up, which calls no upstream) and its tool loop. The context comes with earlier items where they are
    read (approval requests are answered from them), else as a chain's turns as stored, placed by their kept
    messages (`with_history`); the turn then keeps its own, as translated for the routed upstream. Every
    refusal comes before the first upstream call (a compaction's token count or summary)."""
    document, earlier = with_history(body, turn)
    chat, settled = routed.translate(document, earlier), None
    loop = ToolLoop.for_request(document, chat, state.config, request_key(request), state.mcp_sessions)
    if loop is not None and compact:
        await loop.check_egress()
    asked = compaction_asked(document)
    if asked is not None and compact:  # context_management or a compaction_trigger
        compacted = await compact_in_request(state, request, routed, document, chat, asked)
        chat, settled = compacted.chat, compacted.settled
    if turn is not None:
        turn.upstream = routed.config
    return Plan(document, earlier, chat, loop, settled)


async def run_create(state: AppState, request: web.Request, run: Run, routed: RoutedRequest, sink: Sink,
                     settled: dict[str, Any] | None) -> None:
    """Drive a planned create (`plan_create`) to its terminal event through `sink`."""
    if settled is not None:  # a compaction_trigger: answered whole by the compaction
        await settle(run, sink, settled)
        return
    # `routed` opens upstream like an UpstreamClient, failing over between the route's upstreams.
    await run_pipeline(run, routed, sink, keepalive_interval=state.config.server.keepalive_interval,
                       client_authorization=forwarded_authorization(request), debug=state.debug)


def start_capture(state: AppState, request: web.Request, run: Run, document: Any,
                   chat: ChatRequest) -> Recorder | None:
    """Debug capture (`debug.capture`): a recorder tapping the upstream's bytes, or None."""
    if state.capture is None:
        return None
    recorder = state.capture.recorder(run.request_id, request.headers, document, chat.body)
    if recorder is not None:
        run.tap = recorder.tap
    return recorder


def _sink(request: web.Request, state: AppState, request_id: str, *, streaming: bool,
          recorder: StoreRecorder | None, observers: tuple[Sink | None, ...]) -> Sink:
    """The request's consumers of its events, chosen once, in order: a debug tap at debug level, the
    store recorder (it persists before the client sees the terminal event), the client's sink, then
    observers of what the client was sent (the capture, the live inspector)."""
    client: Sink = (EventStream(request, {"X-Request-ID": request_id}, state.keepalive,
                                done=state.config.server.sse_done) if streaming
                    else FinalResponse(request_id))
    return consumers(state, client, recorder, observers)


def consumers(state: AppState, client: Sink, recorder: StoreRecorder | None,
              observers: tuple[Sink | None, ...]) -> Sink:
    """`client` with the other consumers of a run, in the order `_sink` describes (also the WebSocket turns')."""
    sinks = [sink for sink in (DebugLog() if state.debug else None, recorder, client, *observers) if sink is not None]
    return Tee(*sinks) if len(sinks) > 1 else client


@routes.post("/v1/chat/completions")
@routes.post("/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Pass-through: the client's bytes go up (only `model` renamed for an alias), the upstream's come back."""
    state = STATE.get(request.app)
    started = time.monotonic()
    body = await read_body(request, state.config.server.max_body_bytes)  # sent on uncompressed
    document, model = _model_of(body)
    try:
        routed = route_request(state, request, model)
    except GatewayError as exc:
        key = request_key(request)
        state.metrics.rejected(_PASSTHROUGH, exc.status, key.name if key else None)
        raise
    authorization = forwarded_authorization(request)
    config = routed.config

    async def attempt(target: Target, last: bool) -> aiohttp.ClientResponse:
        client = target.upstream.client
        headers = client.headers(current_request_id.get(), authorization, routed.trace)
        headers["Content-Type"] = request.headers.get("Content-Type", "application/json")
        data = body if target.model in (model, "") else orjson.dumps({**document, "model": target.model})
        try:
            answer = await client.session.post(f"{client.base_url}/chat/completions", data=data, headers=headers)
        except (aiohttp.ClientError, OSError) as exc:
            raise client.unreachable(exc, current_request_id.get()) from None
        retry_elsewhere = not last and (answer.status >= 500 or answer.status == 429)
        if answer.status >= 400 and (answer.content_type != "application/json" or retry_elsewhere):
            raise await http_error(answer, config.idle_timeout)
        return answer

    try:
        deadline = routed.first_byte_deadline
        try:
            async with asyncio.timeout(deadline):
                upstream = await routed.first_answer(attempt)
        except TimeoutError:
            raise UpstreamTimeout(f"the upstream did not answer within {deadline:g}s") from None
    except BaseException as exc:
        routed.release()
        state.metrics.passthrough(_PASSTHROUGH, model, routed, getattr(exc, "status", 499), started)
        raise
    status = upstream.status
    try:
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
            get_logger().warning("passthrough.upstream_cut", upstream=routed.upstream_name, reason=failure)
            response.force_close()
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response
    finally:
        upstream.close()
        routed.release()
        state.metrics.passthrough(_PASSTHROUGH, model, routed, status, started)


def _model_of(body: bytes) -> tuple[Any, Any]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    return document, document.get("model") if isinstance(document, dict) else None


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
    """Every upstream's models, under names that route to them (see routing.RoutingTable.list_models)."""
    key = request_key(request)
    with STATE.get(request.app).routing.hold() as table:
        data = await table.list_models(current_request_id.get(), forwarded_authorization(request))
    if key is not None:
        data = [entry for entry in data if key.allows(entry["id"])]
    return json_response({"object": "list", "data": data})


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(OPENAPI)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Each upstream's state; 200 while at least one answers."""
    with STATE.get(request.app).routing.hold() as table:
        ready, report = await table.readiness(current_request_id.get())
    return json_response(report, status=200 if ready else 503)
