"""One request's trip: upstream chunks → `ResponseStream` → sink, with timeouts and faults.

Streaming and non-streaming requests take exactly this path; only the sink differs.
Before the sink has started, failures propagate as `GatewayError` (the route answers
with an HTTP error); after it started they become `response.failed` on the stream.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

from .errors import GatewayError, UpstreamError, UpstreamTimeout
from .ids import new_id, new_response_id
from .log import get_logger
from .stream_processor import ResponseStream
from .translate import ChatRequest
from .upstream import UpstreamClient, UpstreamStream


class Sink(Protocol):
    streaming: bool

    @property
    def started(self) -> bool: ...

    async def start(self, events: list[dict[str, Any]]) -> None: ...

    async def send(self, events: list[dict[str, Any]]) -> None: ...

    async def close(self) -> None: ...


class StreamStopped(Exception):
    """Raised inside a running pipeline when the server stops it (shutdown)."""


class Run:
    """The state of one pipeline run, shared with the route (logging) and the app (shutdown)."""

    __slots__ = ("request_id", "body", "model", "streaming", "warnings", "started_at", "first_output_at", "stream",
                 "upstream", "opening", "stop_reason", "stop_cancelled", "client_disconnected", "tap")

    def __init__(self, request_id: str, chat: ChatRequest) -> None:
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


async def run_pipeline(run: Run, client: UpstreamClient, sink: Sink, *, keepalive_interval: float,
                       client_authorization: str | None, debug: bool = False) -> None:
    stream = run.stream
    log = get_logger().bind(request_id=run.request_id) if debug else None
    try:
        run.upstream = await _open(run, client, sink, keepalive_interval, client_authorization)
        run.body = None  # sent: not needed for the rest of the stream
        if run.stop_reason is not None:
            raise StreamStopped  # stopped as the headers arrived
        if not sink.started:
            await sink.start(stream.start())
        feed = stream.feed
        async for batch in run.upstream.batches():
            if log is not None:
                for chunk in batch:
                    log.debug("upstream.chunk", chunk=chunk)
            # One read is usually one chunk (a paced token): skip the flattening then.
            events = feed(batch[0]) if len(batch) == 1 else [event for chunk in batch for event in feed(chunk)]
            if run.first_output_at is None and stream.has_output:
                run.first_output_at = time.monotonic()
            if log is None:
                await sink.send(events)  # the hot path: one coroutine frame fewer than _send
            else:
                await _send(sink, events, log)
            if stream.terminal is not None:
                break
            # Not kept alive while the next read waits (most of a paced stream's life).
            batch = events = None  # type: ignore[assignment]
        if run.stop_reason is not None:
            raise StreamStopped
        if run.upstream.skipped_warning:
            run.warnings.append(run.upstream.skipped_warning)
        await _send(sink, stream.finish(run.upstream.saw_done), log)
    except (GatewayError, StreamStopped) as exc:
        code, message = _failure(run, exc)
        if not sink.started:
            if isinstance(exc, GatewayError):
                raise
            raise UpstreamError(message, code=code, status=503) from None
        await _send(sink, stream.fail(code, message), log)
    except ConnectionResetError:
        run.client_disconnected = True
    except asyncio.CancelledError:
        # aiohttp cancels the handler when the client goes away.
        run.client_disconnected = True
        raise
    except Exception:
        # A gateway bug after the stream started: the route can no longer answer with an HTTP
        # error, so end the stream properly instead of leaving the client waiting forever.
        if not sink.started:
            raise
        get_logger().exception("pipeline.crashed", request_id=run.request_id)
        await sink.send(stream.fail("server_error", "The gateway hit an internal error; see its log for "
                                                    f"request {run.request_id}."))
    finally:
        if run.upstream is not None:
            run.upstream.close()


async def _open(run: Run, client: UpstreamClient, sink: Sink, keepalive_interval: float,
                client_authorization: str | None) -> UpstreamStream:
    """Wait for the upstream's answer; a streaming client gets its stream (and keep-alives) early.

    The usual answer within `keepalive_interval` costs one timer handle: the open runs in this
    task. Only a slow upstream makes a task, to start the client's stream meanwhile.
    """
    loop = asyncio.get_running_loop()
    early: list[asyncio.Task[None]] = []

    def start_early() -> None:
        early.append(loop.create_task(sink.start(run.stream.start())))

    timer = loop.call_later(keepalive_interval, start_early) if sink.streaming else None
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


async def _await_upstream(run: Run, client: UpstreamClient, client_authorization: str | None) -> UpstreamStream:
    timeout = client.config.first_byte_timeout
    current = run.opening = asyncio.current_task()
    assert run.body is not None
    try:
        async with asyncio.timeout(timeout):
            return await client.open(run.body, request_id=run.request_id,
                                     client_authorization=client_authorization, tap=run.tap)
    except TimeoutError:
        raise UpstreamTimeout(f"the upstream did not answer within {timeout:g}s") from None
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


async def _send(sink: Sink, events: list[dict[str, Any]], log: Any) -> None:
    if log is not None:
        for event in events:
            log.debug("response.event", data=event)  # `event` is structlog's message key
    await sink.send(events)


def _failure(run: Run, exc: Exception) -> tuple[str, str]:
    if run.stop_reason is not None:
        return run.stop_reason
    assert isinstance(exc, GatewayError)
    return exc.code or "upstream_error", exc.message
