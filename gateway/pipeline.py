"""One request's trip: upstream chunks → `ResponseStream` → sink, with timeouts and faults.

One pipeline, many sinks. Streaming and non-streaming requests take exactly this path; only
the sink differs. Before the sink has started, failures propagate as `GatewayError` (the route
answers with an HTTP error); after it started they become `response.failed` on the stream.

The sink contract. A sink consumes one run's event sequence; `run_pipeline` drives it:

- `start(events)` once, with the stream's head (`response.created`, `response.in_progress`);
  for a `streaming` sink possibly before the upstream answered, so keep-alives can flow.
- `send(events)` for every later batch, in order, including empty ones. Sequence numbers run
  on by one across `start` and `send`; the one terminal event (`response.completed`,
  `.incomplete` or `.failed`) is the last event of the last batch. A batch is all or nothing:
  a sink that raises has delivered none of it (the pipeline then ends the stream with a
  terminal numbered after the last batch every sink took). A batch is a read-only sequence
  of events (mappings): a list, or for a run of fast-path deltas a `FastBatch` (or a `Joined`
  holding one) that makes its events as they are read and has its SSE bytes ready: sinks
  index and iterate it, never concatenate, slice or extend it (the store recorder still
  changes a terminal event in place; a batch holding one is a list or a `Joined`).
- `started` is true once the client has seen the head: from then on failures go in-band.
  A sink that does not answer the client (a recorder, a log) is never `started`.
- `finish()` after the pipeline returned: the sink's own ending (write the SSE end, build the
  JSON answer, flush a record) and the web response for the route to return, or None for a
  sink that does not answer the client.
- `abandon()` always, last, also after errors and disconnects: release what the sink holds.
  It must be idempotent and must not raise.
- `ready()` and `take(events)`: the synchronous twin of `send` for the steady state. When every
  sink is `ready()`, a batch of deltas (never a head or a terminal) may be handed to `take`
  from inside the upstream's read callback (`UpstreamStream.push`), with the same ordering as
  `send`. A sink that cannot take a batch without waiting (a socket backed up, a store write)
  answers False, and the batch goes through `send` as usual.

More consumers are more sinks, fanned out by `Tee(first, second, ...)`: each call reaches each
sink in that order, so a sink that must act before the client sees an event goes before the
client's sink (the store recorder persists the final response in `send` before the terminal
event reaches the client). A consumer that must not slow the client down (the background event
log, a live inspector tap) returns from `send` at once and does its I/O from a queue. At debug
level the route puts `DebugLog` in front; its chunk-side twin wraps the upstream's batches.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .bounds import encode_bounded
from .errors import GatewayError, UpstreamError, UpstreamTimeout, internal_error_message
from .ids import new_id, new_response_id
from .log import get_logger
from .sse import joined
from .stream_processor import ResponseStream
from .translate import ChatRequest
from .upstream import UpstreamStream

if TYPE_CHECKING:
    from aiohttp import web

    from .routing import RoutedRequest

Events = Sequence[Any]  # see the sink contract above
T = TypeVar("T")


class Sink(Protocol):
    """One consumer of a run's events (see the module docstring for the contract)."""

    streaming: bool

    @property
    def started(self) -> bool: ...

    async def start(self, events: Events) -> None: ...

    async def send(self, events: Events) -> None: ...

    async def finish(self) -> web.StreamResponse | None: ...

    def abandon(self) -> None: ...

    def ready(self) -> bool: ...

    def take(self, events: Events) -> None: ...


class Tee:
    """Several sinks driven by one run, each call reaching each sink in the given order."""

    __slots__ = ("sinks", "streaming")

    def __init__(self, *sinks: Sink) -> None:
        self.sinks = sinks
        self.streaming = any(sink.streaming for sink in sinks)

    @property
    def started(self) -> bool:
        return any(sink.started for sink in self.sinks)

    async def start(self, events: Events) -> None:
        for sink in self.sinks:
            await sink.start(events)

    async def send(self, events: Events) -> None:
        for sink in self.sinks:
            await sink.send(events)

    async def finish(self) -> web.StreamResponse | None:
        answer = None
        for sink in self.sinks:
            response = await sink.finish()
            answer = answer or response
        return answer

    def abandon(self) -> None:
        for sink in self.sinks:
            sink.abandon()

    def ready(self) -> bool:
        return all(sink.ready() for sink in self.sinks)

    def take(self, events: Events) -> None:
        for sink in self.sinks:
            sink.take(events)


class Observer:
    """A sink that consumes a run's events without answering the client (recorder, logs, taps):
    never `started`, no web response of its own, the stream's head sent like any batch.
    Not `ready()` by default; a `SyncObserver` is."""

    __slots__ = ()
    streaming = False
    started = False

    async def start(self, events: Events) -> None:
        await self.send(events)

    async def send(self, events: Events) -> None:
        raise NotImplementedError

    async def finish(self) -> None:
        return None

    def abandon(self) -> None:
        pass

    def ready(self) -> bool:
        return False

    def take(self, events: Events) -> None:
        raise NotImplementedError


class SyncObserver(Observer):
    """An observer that never waits: `take` does the work, for `send` and for the read callback alike."""

    __slots__ = ()

    async def send(self, events: Events) -> None:
        self.take(events)

    def ready(self) -> bool:
        return True


class DebugLog(SyncObserver):
    """A tap that logs every event at debug level (`server.log_level: debug`)."""

    __slots__ = ()

    def take(self, events: Events) -> None:
        log = get_logger()
        for event in events:
            log.debug("response.event", data=event)  # `event` is structlog's message key


async def _logged_chunks(batches: AsyncIterator[list[Any]]) -> AsyncIterator[list[Any]]:
    """The upstream's chunks, each logged at debug level first, bounded: the upstream controls them."""
    log = get_logger()
    async for batch in batches:
        for chunk in batch:
            fits = encode_bounded(chunk, depth=64, size=1 << 20) is not None
            log.debug("upstream.chunk", chunk=chunk if fits else "(nested too deep or too large to log)")
        yield batch


class Loop(Protocol):
    """The agentic loop of a request with hosted tools (gateway/tools/loop.py), as the pipeline drives it
    (and the log line and metrics read it: `rounds` run, `calls` run, `records` of (server, outcome, seconds),
    the `bound` that ended the response incomplete, if one did)."""

    rounds: int
    calls: int
    bound: str | None
    records: list[tuple[str, str, float]]

    async def prepare(self, run: Run) -> None:
        """Before the stream's head: what must hold before the client sees anything (a GatewayError else)."""

    def head(self, stream: ResponseStream) -> list[Any]:
        """The events that follow the stream's head, before the first sample."""

    async def next_sample(self, run: Run, sink: Sink) -> dict[str, Any] | None:
        """A sample ended (not terminal): run its hosted calls, sending their events to `sink`; the next
        upstream body, or None once the stream reached its terminal event."""

    def carry(self, body: dict[str, Any]) -> dict[str, Any]:
        """A body translated anew for a fallback upstream, with what the loop added to the first one."""


class StreamStopped(Exception):
    """Raised inside a running pipeline when the server stops it (shutdown)."""


class Run:
    """The state of one pipeline run, shared with the route (logging) and the app (shutdown)."""

    __slots__ = ("request_id", "body", "model", "streaming", "warnings", "started_at", "first_output_at", "stream",
                 "upstream", "opening", "stop_reason", "stop_cancelled", "client_disconnected", "tap", "delivered",
                 "loop")

    def __init__(self, request_id: str, chat: ChatRequest, loop: Loop | None = None) -> None:
        self.request_id = request_id
        # Only what outlives the upstream request is kept from `chat`: the body (the whole
        # conversation, often the largest thing a request holds) is dropped once it was sent.
        self.body: dict[str, Any] | None = chat.body
        self.model: str = chat.body["model"]
        self.streaming = chat.stream
        self.warnings = chat.warnings
        self.started_at = time.monotonic()
        self.first_output_at: float | None = None
        self.stream = response_stream(chat, new_response_id())
        self.upstream: UpstreamStream | None = None
        self.opening: asyncio.Task[Any] | None = None  # the task waiting for the upstream's headers
        self.stop_reason: tuple[str, str] | None = None
        self.stop_cancelled = False  # stop() cancelled `opening`: that CancelledError is ours to absorb
        self.client_disconnected = False
        self.tap: Callable[[bytes], None] | None = None  # sees the upstream's raw reads (debug capture)
        self.delivered = 0  # events every sink has taken: a crash gives the numbers after them back
        self.loop = loop  # samples again after running hosted tools (gateway/tools); None: one sample

    def stop(self, code: str, message: str) -> None:
        """Ask the run to end now with response.failed(code): closing the upstream wakes its read."""
        self.stop_reason = (code, message)
        if self.upstream is not None:
            self.upstream.close()
        elif self.opening is not None and not self.stop_cancelled:
            self.stop_cancelled = True
            self.opening.cancel()

    @property
    def ttft_ms(self) -> float | None:
        if self.first_output_at is None:
            return None
        return round((self.first_output_at - self.started_at) * 1000, 1)


def response_stream(chat: ChatRequest, response_id: str, created_at: int | None = None) -> ResponseStream:
    """The stream processor that answers `chat` (also used by `gateway replay` to rebuild a run)."""
    clock = time.time if created_at is None else (lambda: float(created_at))
    return ResponseStream(chat.options, response_id=response_id, clock=clock, new_id=new_id)


async def run_pipeline(run: Run, client: RoutedRequest, sink: Sink, *, keepalive_interval: float,
                       client_authorization: str | None, debug: bool = False) -> None:
    """Drive `run` to its terminal event through `sink`; raises `GatewayError` only before the sink started."""
    try:
        await _stream(run, client, sink, keepalive_interval, client_authorization, debug)
        return
    except (GatewayError, StreamStopped) as exc:
        code, message = _failure(run, exc)
        if not sink.started:
            if isinstance(exc, GatewayError):
                raise
            raise UpstreamError(message, code=code, status=503) from None
    except ConnectionResetError:
        run.client_disconnected = True
        return
    except asyncio.CancelledError:
        # aiohttp cancels the handler when the client goes away.
        run.client_disconnected = True
        raise
    except Exception:
        # A gateway bug: before the stream started the route answers 500; after it, the stream
        # must still end properly instead of leaving the client waiting forever.
        if not sink.started:
            raise
        get_logger().exception("pipeline.crashed")
        code, message = "server_error", internal_error_message(run.request_id)
    finally:
        if run.upstream is not None:
            run.upstream.close()
    await _end(run, sink, code, message)


async def _stream(run: Run, client: RoutedRequest, sink: Sink, keepalive_interval: float,
                  client_authorization: str | None, debug: bool) -> None:
    loop = run.loop
    if loop is not None:
        await loop.prepare(run)
        await _start(run, sink)
        await sink.send(loop.head(run.stream))
        run.delivered = run.stream.events_emitted
        if run.stream.terminal is not None:  # the loop ended it before any sample (a bound: gateway/tools)
            return
    while True:
        await _sample(run, client, sink, keepalive_interval, client_authorization, debug, headed=loop is not None)
        if loop is None or run.stream.terminal is not None:
            return
        run.body = await loop.next_sample(run, sink)
        run.delivered = run.stream.events_emitted
        if run.body is None:
            return


async def _sample(run: Run, client: RoutedRequest, sink: Sink, keepalive_interval: float,
                  client_authorization: str | None, debug: bool, headed: bool) -> None:
    """One upstream call, its chunks to the sink; its end is the stream's unless a tool loop goes on."""
    stream = run.stream
    run.upstream = await _open(run, client, sink, keepalive_interval, client_authorization)
    run.body = None  # sent: not needed for the rest of the stream
    if run.stop_reason is not None:
        raise StreamStopped  # stopped as the headers arrived
    if not sink.started and not headed:
        await _start(run, sink)
    feed = stream.feed
    batches = run.upstream.batches()
    if debug:
        batches = _logged_chunks(batches)
    armed = debug  # the debug log sees every chunk: no shortcut then
    async for batch in batches:
        # One read is usually one chunk (a paced token) or one FastRun (a fast upstream): no joining then.
        events = feed(batch[0]) if len(batch) == 1 else joined([feed(chunk) for chunk in batch])
        if run.first_output_at is None and stream.has_output:
            run.first_output_at = time.monotonic()
        await sink.send(events)
        run.delivered = stream.events_emitted
        if stream.terminal is not None:
            break
        if not armed:  # from the second read on: the first events are out, the stream is steady
            armed = True
            run.upstream.push(_taker(run, sink))
        # Not kept alive while the next read waits (most of a paced stream's life).
        batch = events = None  # type: ignore[assignment]
    if run.stop_reason is not None:
        raise StreamStopped
    if run.upstream.skipped_warning:
        run.warnings.append(run.upstream.skipped_warning)
    if run.loop is None:
        await sink.send(stream.finish(run.upstream.saw_done))
    else:
        await sink.send(stream.end_sample(run.upstream.saw_done))
    run.delivered = stream.events_emitted


def _taker(run: Run, sink: Sink) -> Callable[[list[Any]], bool]:
    """The consumer for `UpstreamStream.push`: one read's fast deltas, all the way to the sinks, now;
    or False, having changed nothing, when a sink would wait or the state needs more than appending."""
    stream = run.stream
    feed, takes_fast, appended = stream.feed, stream.takes_fast, stream.appended

    def take(items: list[Any]) -> bool:
        if not sink.ready():
            return False
        if len(items) == 1:  # a paced stream's read
            events = appended(items[0])
            if events is None:
                return False
        elif all(map(takes_fast, items)):
            events = joined([feed(item) for item in items])
        else:
            return False
        if run.first_output_at is None:
            run.first_output_at = time.monotonic()
        sink.take(events)
        run.delivered = stream.events_emitted
        return True

    return take


async def _start(run: Run, sink: Sink) -> None:
    await sink.start(run.stream.start())
    run.delivered = run.stream.events_emitted


async def _end(run: Run, sink: Sink, code: str, message: str) -> None:
    """End a started stream with response.failed; whatever goes wrong, the client gets a terminal event.

    When every built event was delivered, `fail` closes the open items properly. When events
    were built but not delivered (building or encoding them failed), or ending normally fails,
    `salvage` sends a bare terminal numbered right after the last delivered event.
    """
    stream = run.stream
    try:
        if run.delivered == stream.events_emitted:
            await sink.send(stream.fail(code, message))
            return
    except ConnectionResetError:
        run.client_disconnected = True
        return
    except Exception:
        get_logger().exception("pipeline.crashed")
        code, message = "server_error", internal_error_message(run.request_id)
    try:
        await sink.send(stream.salvage(code, message, run.delivered))
    except ConnectionResetError:
        run.client_disconnected = True


async def _open(run: Run, client: RoutedRequest, sink: Sink, keepalive_interval: float,
                client_authorization: str | None) -> UpstreamStream:
    """Wait for the upstream's answer; a streaming client gets its stream (and keep-alives) early.

    The usual answer within `keepalive_interval` costs one timer handle: the open runs in this
    task. Only a slow upstream makes a task, to start the client's stream meanwhile.
    """
    loop = asyncio.get_running_loop()
    early: list[asyncio.Task[None]] = []

    def start_early() -> None:
        early.append(loop.create_task(_start(run, sink)))

    timer = loop.call_later(keepalive_interval, start_early) if sink.streaming and not sink.started else None
    try:
        upstream = await _await_upstream(run, client, client_authorization)
    except BaseException as exc:
        await _settle(early, cancel=isinstance(exc, asyncio.CancelledError), quiet=True)
        raise
    finally:
        if timer is not None:
            timer.cancel()
    try:
        await _settle(early, cancel=False, quiet=False)  # the stream's head goes out before any event
    except BaseException:
        upstream.close()
        raise
    return upstream


async def _await_upstream(run: Run, client: RoutedRequest, client_authorization: str | None) -> UpstreamStream:
    timeout = client.first_byte_deadline
    assert run.body is not None
    try:
        async with asyncio.timeout(timeout):
            upstream = await stoppable(run, client.open(run.body, request_id=run.request_id,
                                                        client_authorization=client_authorization, tap=run.tap,
                                                        carry=run.loop.carry if run.loop is not None else None))
    except TimeoutError:
        raise UpstreamTimeout(f"the upstream did not answer within {timeout:g}s") from None
    if client.options is not None:  # a fallback with its own translation answered
        run.stream.retarget(client.options)
    return upstream


async def stoppable(run: Run, work: Awaitable[T]) -> T:
    """`work` in this task, which `Run.stop` (shutdown, a background cancel) cancels while no upstream
    stream is open to close: waiting for headers, or a tool loop's calls (gateway/tools)."""
    run.opening = current = asyncio.current_task()
    try:
        return await work
    except asyncio.CancelledError:
        # Run.stop() cancels this task; a client disconnect (aiohttp) may cancel it too.
        if run.stop_cancelled and current is not None and current.uncancel() == 0:
            raise StreamStopped from None
        raise
    finally:
        run.opening = None


async def _settle(early: list[asyncio.Task[None]], *, cancel: bool, quiet: bool) -> None:
    """Wait for the early stream start, if the timer made one; `quiet` drops its failure."""
    if not early:
        return
    task = early[0]
    if cancel:
        task.cancel()
    try:
        await task
    except BaseException:
        if not quiet:
            raise


def _failure(run: Run, exc: Exception) -> tuple[str, str]:
    if run.stop_reason is not None:
        return run.stop_reason
    assert isinstance(exc, GatewayError)
    return exc.code or "upstream_error", exc.message
