"""WebSocket mode of the Responses API: `GET /v1/responses` upgraded, one turn per `response.create`.

A connection is a transport, not a second path: each turn runs the one pipeline (pipeline.py) with
`WebSocketSink` as the client's sink among the usual consumers (store recorder, capture, inspector)
and leaves the usual `response.finished` line, with `transport: websocket`. The connection's own:

- Messages in order: the handler only receives and queues (at most `MAX_QUEUED` waiting); one worker
  answers them one at a time, so one response is in flight and later turns wait for their turn.
- Events out: one text message per event, the same objects and sequence numbers as SSE, framed
  here (unmasked text frames, no compression negotiated) and written straight to the transport,
  like `EventStream` does, waiting only while the socket is backed up.
- Failures are `{"type": "error", "status", "error": {type, code, message, param}}`; bad input never
  closes the connection, except a message over `server.max_body_bytes` (aiohttp stops reading).
- The connection-local cache: the latest response with its whole context, so a `store: false` chain
  continues with `previous_response_id` and only the new items. `store: true` turns read older ids
  from the store. A turn continuing from an id that fails evicts that id.
- Age: `server.websocket_max_age` seconds, then `websocket_connection_limit_reached` and a close.
  Keep-alive: aiohttp's heartbeat (a ping every `server.keepalive_interval`; no pong closes).
- Slots: a connection holds one of `server.max_concurrent_streams` and one of its key's streams
  for its whole life; its turns run inside that slot.
"""
from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.http_websocket import WebSocketError

from .bounds import depth_exceeds
from .errors import GatewayError, InvalidRequest, internal_error_message
from .fast_path import EncodedEvent, FastBatch
from .ids import new_request_id
from .keys import owner_of, request_key
from .log import get_logger
from .pipeline import Run, Sink
from .request_context import current_request_id, log_finished
from .routes import consumers, plan_create, run_create, start_capture
from .routing import RoutedRequest, route_request
from .sse import Joined
from .state import STATE, AppState
from .store.recorder import StoreRecorder
from .store.history import History, history_item
from .store.service import Turn, both_previous_and_conversation, normalize_items, previous_not_found, resolve_references
from .stream_processor import TERMINAL_TYPES

MAX_QUEUED = 8  # `response.create` messages waiting behind the running one; more are refused (429)
TRANSPORT = "websocket"
# Fields of the HTTP transport a WebSocket turn must not carry (`stream_id`: OpenAI's multiplexing
# beta; the Open Responses specification forbids several responses in flight on one connection).
_HTTP_ONLY = ("stream", "stream_options", "background", "stream_id")
_SHORT_HEADERS = [bytes((0x81, length)) for length in range(126)]  # FIN + text, unmasked, length < 126

routes = web.RouteTableDef()


# ---------------------------------------------------------------------------------------- framing
def text_frame(payload: bytes) -> bytes:
    """`payload` as one unmasked, final WebSocket text frame (RFC 6455 5.2)."""
    length = len(payload)
    if length < 126:
        return _SHORT_HEADERS[length] + payload
    if length < 65536:
        return struct.pack("!BBH", 0x81, 126, length) + payload
    return struct.pack("!BBQ", 0x81, 127, length) + payload


def encode_messages(events: Sequence[Any]) -> bytes:
    """One text frame per event, joined once: a batch is one write. Events the fast path made are
    already encoded (as SSE frames): their JSON is cut out of the frame, never parsed."""
    kind = type(events)
    if kind is FastBatch:
        return _fast_frames(events)  # type: ignore[arg-type]
    if kind is Joined:
        return b"".join(map(encode_messages, events.batches))  # type: ignore[attr-defined]
    return b"".join([text_frame(_json_of(event)) for event in events])


def _json_of(event: Any) -> bytes:
    if type(event) is EncodedEvent:
        frame = event.frame
        return frame[frame.index(b"\ndata: ") + 7:-2]
    return orjson.dumps(event)


def _fast_frames(batch: FastBatch) -> bytes:
    template = batch.frame  # `event: …\ndata: {…%d…%s…}\n\n`: the data line is the message's template
    template = template[template.index(b"\ndata: ") + 7:-2]
    numbers = range(batch.first, batch.first + len(batch.bodies))
    return b"".join([text_frame(template % pair) for pair in zip(numbers, batch.bodies)])


def error_message(exc: GatewayError) -> bytes:
    """The WebSocket error envelope for `exc`: its HTTP status beside the usual error object."""
    return orjson.dumps({"type": "error", "status": exc.status, **exc.envelope()})


# ---------------------------------------------------------------------------------------- the sink
class WebSocketSink:
    """The client's sink on a WebSocket turn (see pipeline.py's sink contract).

    Not `streaming`: the head goes out once the upstream answered, so a failure before that is an
    error envelope with its status (which evicts a continued id), as on a non-streaming request.
    """

    __slots__ = ("_socket", "_protocol", "started")
    streaming = False

    def __init__(self, socket: web.WebSocketResponse, protocol: Any) -> None:
        self._socket = socket
        self._protocol = protocol  # the connection's; aiohttp's own frames (pings, close) go there too
        self.started = False

    async def start(self, events: Sequence[Any]) -> None:
        await self.send(events)
        self.started = True

    async def send(self, events: Sequence[Any]) -> None:
        if not events:
            return
        protocol = self._protocol
        transport = protocol.transport
        if self._socket.closed or transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.write(encode_messages(events))
        if protocol._paused:  # noqa: SLF001 - as EventStream.send: a slow reader pauses the upstream
            await protocol._drain_helper()  # noqa: SLF001

    def ready(self) -> bool:
        protocol = self._protocol
        if not self.started or protocol._paused or self._socket.closed:  # noqa: SLF001
            return False
        transport = protocol.transport
        return transport is not None and not transport.is_closing()

    def take(self, events: Sequence[Any]) -> None:
        self._protocol.transport.write(encode_messages(events))

    async def finish(self) -> None:
        return None  # the connection goes on; nothing to answer per turn

    def abandon(self) -> None:
        pass


# ---------------------------------------------------------------------------------------- messages
def create_body(data: bytes, max_depth: int) -> tuple[dict[str, Any], bool]:
    """A `response.create` message as a create request's body, and its `generate` (False: warm-up)."""
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"We could not parse the JSON of your message ({exc}).", code="invalid_json") from None
    if depth_exceeds(message, max_depth):
        raise InvalidRequest(f"The message is nested deeper than {max_depth} levels.", code="invalid_json")
    kind = message.get("type") if isinstance(message, dict) else None
    if kind != "response.create":
        raise InvalidRequest(f"Unknown message type {kind!r}: send a JSON object with type 'response.create'.",
                             param="type", code="unknown_message_type")
    if message.get("stream") is True:
        # Codex CLI (supports_websockets = true) sends `stream: true` on every turn, as to OpenAI's
        # endpoint; it asks for what a WebSocket turn does anyway. The specification's MUST NOT
        # binds the client: refusing it would break the client people run (README "WebSocket mode").
        del message["stream"]
    for name in _HTTP_ONLY:
        if name in message:
            raise InvalidRequest(f"'{name}' is not accepted over a WebSocket: every response streams its "
                                 "events on the connection, one at a time.", param=name,
                                 code="unsupported_parameter")
    generate = message.get("generate", True)
    if not isinstance(generate, bool):
        raise InvalidRequest("Invalid type for 'generate': expected a boolean.", param="generate")
    return {k: v for k, v in message.items() if k not in ("type", "generate")}, generate


def too_large(limit: int) -> InvalidRequest:
    return InvalidRequest(f"The message is larger than this gateway accepts ({limit} bytes, server.max_body_bytes).",
                          status=413, code="request_too_large")


class Context:
    """A turn's items: its input (with the earlier items its body carried), after a chain's earlier turns as
    read from the store, which are parsed only when a later turn needs them (a `store: false` continuation)."""

    __slots__ = ("_items", "_history")

    def __init__(self, items: list[dict[str, Any]], history: History | None) -> None:
        self._items = items
        self._history = history

    def items(self) -> list[dict[str, Any]]:
        if self._history is not None:
            self._items, self._history = [*self._history.items(), *self._items], None
        return self._items

    def then(self, output: list[dict[str, Any]]) -> Context:
        """This context followed by `output`."""
        return Context([*self._items, *output], self._history)


@dataclass(slots=True)
class Latest:
    """The connection-local cache: the latest response and everything it was made from."""

    response_id: str
    context: Context   # its whole context: input items (earlier turns' too), then its output
    stored: bool       # recorded in the store (its chain continues there)


# ---------------------------------------------------------------------------------------- a connection
class _Socket(web.WebSocketResponse):
    """aiohttp closes a connection whose message is over `max_msg_size` (1009) from inside receive();
    the client first gets the error envelope, like for any other bad message."""

    def __init__(self, *, limit: int, heartbeat: float) -> None:
        super().__init__(heartbeat=heartbeat, max_msg_size=limit, compress=False, decode_text=False)
        self.limit = limit

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG and not self.closed:
            with contextlib.suppress(Exception):  # the client may be gone already
                await self.send_frame(error_message(too_large(self.limit)), WSMsgType.TEXT)
        return await super().close(code=code, message=message, drain=drain)


class Connection:
    """One upgraded connection: the reader (`serve`) and the worker answering its messages in order."""

    def __init__(self, state: AppState, request: web.Request, socket: web.WebSocketResponse) -> None:
        self.state = state
        self.request = request
        self.socket = socket
        self.queue: asyncio.Queue[tuple[float, Any]] = asyncio.Queue(MAX_QUEUED)
        self.deadline = asyncio.get_running_loop().time() + state.config.server.websocket_max_age
        self.owner = owner_of(request)
        self.latest: Latest | None = None
        self.closing = False  # the worker is closing the connection (its age limit)

    async def serve(self) -> None:
        worker = asyncio.create_task(self._work())
        try:
            while not worker.done():
                message = await self.socket.receive()
                received = time.monotonic()
                if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await self._enqueue(received, message)
                    continue
                if message.type is WSMsgType.ERROR and isinstance(message.data, WebSocketError):
                    # Too large (its envelope went out with the close) or a protocol violation.
                    await self._refused(received, too_large(self.state.config.server.max_body_bytes)
                                        if message.data.code == WSCloseCode.MESSAGE_TOO_BIG else
                                        InvalidRequest(f"WebSocket protocol error: {message.data}.",
                                                       code="websocket_protocol_error"), send=False)
                break  # closed, closing or broken: a running turn is cancelled (its upstream closed)
        finally:
            if not self.closing:
                worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            await self.socket.close()

    async def _enqueue(self, received: float, message: Any) -> None:
        try:
            self.queue.put_nowait((received, message))
        except asyncio.QueueFull:
            await self._refused(received, GatewayError(
                f"Too many response.create messages waiting on this connection (at most {MAX_QUEUED} behind "
                "the running one); wait for a response to end.", status=429, code="rate_limit_exceeded"))

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout_at(self.deadline):
                    received, message = await self.queue.get()
            except TimeoutError:
                break
            if loop.time() >= self.deadline:
                break
            await self._answer(received, message)
        self.closing = True
        limit = self.state.config.server.websocket_max_age
        await self._send_error(InvalidRequest(f"This WebSocket connection reached its age limit ({limit:g}s, "
                                              "server.websocket_max_age); open a new connection.",
                                              code="websocket_connection_limit_reached"))
        await self.socket.close(code=WSCloseCode.OK, message=b"websocket_connection_limit_reached")

    async def _answer(self, received: float, message: Any) -> None:
        request_id = new_request_id()
        current_request_id.set(request_id)
        try:
            if message.type is not WSMsgType.TEXT:
                raise InvalidRequest("Binary messages are not accepted: send each response.create as a "
                                     "JSON text message.", code="unsupported_message_type")
            body, generate = create_body(message.data, self.state.config.server.max_json_depth)
        except GatewayError as exc:
            await self._refused(received, exc)
            return
        await self._turn(request_id, received, body, generate)

    async def _refused(self, received: float, exc: GatewayError, *, send: bool = True) -> None:
        """A message answered with an error envelope before any turn: logged like a refused request."""
        if send:
            await self._send_error(exc)
        await log_finished(self.state, self.request, received, exc.status, error=exc, transport=TRANSPORT)

    async def _send_error(self, exc: GatewayError) -> None:
        with contextlib.suppress(Exception):  # the client is gone: nobody to tell
            await self.socket.send_frame(error_message(exc), WSMsgType.TEXT)

    # ------------------------------------------------------------------------ turns
    async def _turn(self, request_id: str, received: float, body: dict[str, Any], generate: bool) -> None:
        state, request = self.state, self.request
        previous = body.get("previous_response_id")
        routed: RoutedRequest | None = None
        try:
            state.refuse_when_shutting_down("retry on a new connection")
            routed = route_request(state, request, body.get("model"), hold=False)  # the connection holds it
            turn, body = await self._context(body)
            plan = await plan_create(state, request, routed, {**body, "stream": True}, turn, compact=generate)
            body, chat, loop, settled = plan.document, plan.chat, plan.loop, plan.settled   # events stream, always
            context = Context(normalize_items(body["input"]), plan.earlier)
            del plan
        except GatewayError as exc:
            if routed is not None:
                routed.release()
            self._evict(previous)
            await self._refused(received, exc)
            return
        run = Run(request_id, chat, loop)
        capture = start_capture(state, request, run, body, chat)
        watch = state.inspector.watch(run, routed.upstream_name) if state.inspector is not None else None
        sink = consumers(state, WebSocketSink(self.socket, request.protocol),
                         StoreRecorder(state.stored, turn) if turn is not None and turn.records else None,
                         (capture, watch))
        del chat, body
        http_status, error = 200, None
        state.runs.add(run)
        state.socket_turns += 1
        try:
            await self._run(run, routed, sink, generate, settled)
        except GatewayError as exc:
            http_status, error = exc.status, exc
            await self._send_error(exc)
        except Exception:  # a gateway bug before the head went out: the client still gets an answer
            get_logger().exception("request.crashed", path=request.path)
            http_status = 500
            error = GatewayError(internal_error_message(request_id), code="internal_error")
            await self._send_error(error)
        finally:
            sink.abandon()
            state.run_ended(run)
            state.socket_turns -= 1
            routed.release()
            self._remember(run, turn, context, previous)
            await log_finished(state, request, received, http_status, error=error, run=run, routed=routed,
                               capture=capture, watch=watch, transport=TRANSPORT)

    async def _run(self, run: Run, routed: RoutedRequest, sink: Sink, generate: bool,
                   settled: dict[str, Any] | None) -> None:
        if not generate:
            # Warm-up: the response's head and its completion, nothing sampled; its id continues.
            await sink.start(run.stream.start())
            await sink.send(run.stream.finish(True))
        else:
            await run_create(self.state, self.request, run, routed, sink, settled)
        await sink.finish()

    async def _context(self, body: dict[str, Any]) -> tuple[Turn | None, dict[str, Any]]:
        """The turn's store plan and its body, for `plan_create` to add the store's context to.

        A continuation of the cached response takes its items from here, in `input`; unless both are
        stored, then the store continues the chain. `store: false` has no fallback past the cache.
        """
        previous = body.get("previous_response_id")
        latest = self.latest if isinstance(previous, str) and self.latest and self.latest.response_id == previous \
            else None
        stored = body.get("store") is not False
        if isinstance(previous, str) and latest is None and not stored:
            raise previous_not_found(previous)
        prepare = self.state.stored.prepare
        if latest is not None and not (stored and latest.stored):
            if body.get("conversation") is not None:   # as without the cache (prepare)
                raise both_previous_and_conversation()
            new = body.get("input")
            items = latest.context.items()
            new = resolve_references(normalize_items(new), items) if new is not None else []
            body = {**body, "input": [*items, *new]}
            # A stored turn from an unstored parent records its whole context: it has no chain to read.
            return await prepare({**body, "previous_response_id": None}, self.owner), body
        return await prepare(body, self.owner), body

    def _remember(self, run: Run, turn: Turn | None, context: Context, previous: Any) -> None:
        """Keep a finished response as the latest; a failed continuation evicts the id it continued."""
        terminal = run.stream.terminal
        response = terminal["response"] if terminal is not None and terminal["type"] in TERMINAL_TYPES else None
        if response is None or response["status"] not in ("completed", "incomplete"):
            self._evict(previous)
            return
        self.latest = Latest(response["id"], context.then(list(map(history_item, response["output"]))),
                             stored=turn is not None and turn.store)

    def _evict(self, previous: Any) -> None:
        if self.latest is not None and self.latest.response_id == previous:
            self.latest = None


# ---------------------------------------------------------------------------------------- the route
@routes.get("/v1/responses", allow_head=False)
@routes.get("/responses", allow_head=False)
async def responses_socket(request: web.Request) -> web.StreamResponse:
    """The WebSocket upgrade of the Responses resource; a plain GET is 426 Upgrade Required (POST creates)."""
    state = STATE.get(request.app)
    config = state.config.server
    socket = _Socket(limit=config.max_body_bytes, heartbeat=config.keepalive_interval)
    if not socket.can_prepare(request).ok:
        raise InvalidRequest("GET /v1/responses is the WebSocket mode: send Upgrade: websocket, or POST to create "
                             "a response.", status=426, code="upgrade_required", headers={"Upgrade": "websocket"})
    received = time.monotonic()
    key = request_key(request)
    try:
        state.refuse_when_shutting_down()
        if state.active >= config.max_concurrent_streams:
            raise GatewayError("Too many concurrent streams on this gateway; retry shortly.", status=429,
                               code="rate_limit_exceeded", headers={"Retry-After": "1"})
        release = state.stream_limits.acquire(key) if key is not None else None
    except GatewayError as exc:
        await log_finished(state, request, received, exc.status, error=exc, transport=TRANSPORT)
        raise
    try:
        socket.headers["X-Request-ID"] = current_request_id.get()
        await socket.prepare(request)
        connection = Connection(state, request, socket)
        state.sockets.add(connection)
        try:
            await connection.serve()
        finally:
            state.sockets.discard(connection)
    finally:
        if release is not None:
            release()
    return socket


async def close_sockets(app: web.Application) -> None:
    """At shutdown, after the drain stopped the turns: close every connection (going away)."""
    for connection in list(STATE.get(app).sockets):
        await connection.socket.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
