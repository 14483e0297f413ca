"""Background responses (`background: true`): answered at once, run by the app, resumable and cancellable.

A background request is stored as `queued` and answered at once. Its run is a task of the app,
not of the request, so it goes on when the client leaves; it takes one of
`server.max_concurrent_streams` slots and waits in a queue (`server.max_queued_background`, then
429) while there is none. The run is the ordinary pipeline with one more sink, `EventLog`, next to
the store recorder: it moves the stored status to `in_progress` and appends every event's SSE
frame to the response's event log in the store. Every client stream of a background response —
the POST's own and each `GET …?stream=true&starting_after=N`, on any instance — is a follower of
that log, so a resumed stream is byte for byte what a client connected from the start saw.

A run holds a lease in the store (`store.background_lease`), renewed by its instance; any instance
ends a run whose lease lapsed as `failed`. Cancelling sets a flag the running instance polls every
`TICK` seconds (a run on the same instance is stopped at once); stopping closes the upstream.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from .errors import GatewayError, InvalidRequest
from .event_stream import EventStream, json_response
from .log import get_logger
from .pipeline import Loop, Observer, Run, Tee
from .request_context import current_request_id, log_finished
from .routes import run_create
from .sse import encode_events
from .stream_processor import TERMINAL_TYPES
from .store.base import StoreUnavailable
from .store.recorder import CANCELLED, StoreRecorder, mark_cancelled
from .store.service import TERMINAL_STATUSES, StateService, Turn, unguessable_id
from .translate import ChatRequest

if TYPE_CHECKING:
    from .routing import RoutedRequest
    from .state import AppState

TICK = 0.25            # seconds between polls for cancel requests (the 1 s cancel promise)
CANCEL_WAIT = 3.0      # seconds a cancel request waits for the run to end
FOLLOW_WAIT = 2.0      # seconds a follower waits for new events before checking the stored status
LIVE_BACKLOG = 1000    # appends queued for one slow local follower before it reads from the store instead
TRUNCATED = b""        # the log entry where the log stopped keeping events (store.max_event_log_bytes)
_TERMINAL_FRAMES = tuple(b"event: " + t.encode() + b"\n" for t in TERMINAL_TYPES)
_TERMINAL_EVENT = {"completed": "response.completed", "incomplete": "response.incomplete"}


def frame(event: dict[str, Any]) -> bytes:
    return encode_events((event,))


def terminal_frame(response: dict[str, Any], seq: int) -> bytes:
    """The terminal event for a response that ended outside its run (lease lapsed, cancelled orphan)."""
    kind = _TERMINAL_EVENT.get(response["status"], "response.failed")
    return frame({"type": kind, "sequence_number": seq, "response": response})


def is_terminal(entry: bytes) -> bool:
    return entry.startswith(_TERMINAL_FRAMES)


class EventLogGone(GatewayError):
    status = 410
    code = "event_log_truncated"


class EventLog(Observer):
    """The background run's sink: the stored status as the run moves, and each event's frame in the log.

    The log keeps `max_bytes` of frames; past that it records `TRUNCATED` once and then only the
    terminal event, so the run still finishes and followers still end, but a new resume is a 410.
    """

    __slots__ = ("service", "turn", "response_id", "max_bytes", "size", "truncated", "started", "listeners")
    # `started` is its own: set by start(), so a background run's failures go in-band to the log.

    def __init__(self, service: StateService, turn: Turn, response_id: str, max_bytes: int) -> None:
        self.service = service
        self.turn = turn
        self.response_id = response_id
        self.max_bytes = max_bytes
        self.size = 0
        self.truncated = False
        self.started = False
        self.listeners: list[asyncio.Queue[list[tuple[int, bytes]]]] = []

    def listen(self) -> asyncio.Queue[list[tuple[int, bytes]]]:
        """A queue that gets every append from now on (followers on this instance)."""
        queue: asyncio.Queue[list[tuple[int, bytes]]] = asyncio.Queue()
        self.listeners.append(queue)
        return queue

    def unlisten(self, queue: asyncio.Queue[list[tuple[int, bytes]]]) -> None:
        self.listeners.remove(queue)

    async def queue(self, events: list[dict[str, Any]], instance: str, lease: float) -> list[tuple[int, bytes]]:
        """Store the queued response, its lease and its first events (created, queued) in one round trip
        (the create answers after it); the log entries written. Nobody listens yet: the run is not known."""
        return await self._write(events, (instance, lease))

    async def start(self, events: list[dict[str, Any]]) -> None:
        """The run starts: the stored status and its events (in_progress) in one round trip."""
        self.started = True
        self._tell(await self._write(events, None))

    async def _write(self, events: list[dict[str, Any]], claim: tuple[str, float] | None) -> list[tuple[int, bytes]]:
        service, kept = self.service, self._entries(events)
        # The response as its head says: a compaction's item may follow the head (stream.start()).
        head = next(event["response"] for event in reversed(events) if "response" in event)
        record = service.encode_response(self.turn, head)
        await service.call(service.store.write_run(self.response_id, record, service.config.ttl, kept, claim))
        return kept

    async def send(self, events: Sequence[Any]) -> None:
        kept = self._entries(events)
        if kept:
            await self.service.call(self.service.store.append_events(self.response_id, kept, self.service.config.ttl))
            self._tell(kept)

    def _tell(self, kept: list[tuple[int, bytes]]) -> None:
        """Hand written entries to this instance's followers."""
        if kept:
            for listener in self.listeners:
                listener.put_nowait(kept)

    def _entries(self, events: Sequence[Any]) -> list[tuple[int, bytes]]:
        """The log entries of `events`: none unless the stream is resumable, `TRUNCATED` past the limit."""
        if not self.turn.resumable:
            return []
        kept = []
        for event in events:
            entry = frame(event)
            if event["type"] in TERMINAL_TYPES:
                kept.append((event["sequence_number"], entry))
            elif not self.truncated:
                self.size += len(entry)
                self.truncated = self.size > self.max_bytes
                kept.append((event["sequence_number"], TRUNCATED if self.truncated else entry))
        return kept


class Job:
    """One background run: the request it came from (for its log line), its route, its sinks."""

    __slots__ = ("run", "turn", "request", "received", "routed", "log", "settled", "task")

    def __init__(self, run: Run, turn: Turn, request: web.Request, received: float, routed: RoutedRequest,
                 log: EventLog, settled: dict[str, Any] | None) -> None:
        self.run = run
        self.turn = turn
        self.request = request
        self.received = received
        self.routed = routed  # held (its key's stream slot too) until the run ends
        self.log = log
        self.settled = settled  # a compaction_trigger's answer, settled by its compaction (routes.run_create)
        self.task: asyncio.Task[None] | None = None

    @property
    def response_id(self) -> str:
        return self.run.stream.response_id

    def sinks(self) -> Tee:
        """The recorder first (the final record is written before the terminal event is logged)."""
        return Tee(StoreRecorder(self.log.service, self.turn), self.log)


class BackgroundRuns:
    """This instance's background runs: the queue, the running tasks, leases, cancel polling."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.instance = unguessable_id("gw")
        self.jobs: dict[str, Job] = {}       # queued and running, by response id
        self.queue: deque[Job] = deque()
        self._keeper: asyncio.Task[None] | None = None

    @property
    def service(self) -> StateService:
        return self.state.stored

    @property
    def lease(self) -> float:
        return self.state.config.store.background_lease

    # ------------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        self._keeper = asyncio.get_running_loop().create_task(self._keep())

    async def close(self, flush: float) -> None:
        """At shutdown, after the drain: queued runs end as failed, running ones (stopped) finish writing."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        while self.queue:
            self._end_queued(self.queue.popleft(), "server_shutting_down",
                             "The gateway shut down before this background response started.")
        for job in list(self.jobs.values()):
            job.run.stop("server_shutting_down", "The gateway is shutting down.")
        tasks = [job.task for job in self.jobs.values() if job.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=flush)

    # ------------------------------------------------------------------ create
    def admit(self, turn: Turn | None) -> Turn:
        """The request's turn, or the refusal of a background request this gateway cannot take (400, 503, 429):
        before any upstream call."""
        if turn is None or not turn.store:
            raise InvalidRequest("Background mode requires store=true: a background response is kept so it can "
                                 "be polled; stateless requests cannot run in the background.", param="background")
        self.state.refuse_when_shutting_down()
        if len(self.queue) >= self.state.config.server.max_queued_background:
            raise GatewayError("Too many background responses waiting on this gateway; retry shortly.", status=429,
                               code="rate_limit_exceeded", headers={"Retry-After": "1"})
        return turn

    async def submit(self, request: web.Request, request_id: str, received: float, turn: Turn | None,
                     chat: ChatRequest, routed: RoutedRequest, loop: Loop | None,
                     settled: dict[str, Any] | None) -> web.StreamResponse:
        """Store the response as queued, queue its run, answer: the queued Response, or the stream."""
        turn = self.admit(turn)  # again: a compaction may have taken a while since the route admitted it
        turn.resumable = chat.stream
        run = Run(request_id, chat, loop)
        job = Job(run, turn, request, received, routed,
                  EventLog(self.service, turn, run.stream.response_id, self.service.config.max_event_log_bytes),
                  settled)
        queued = run.stream.queued()
        logged = await job.log.queue(queued, self.instance, self.lease)
        self.jobs[job.response_id] = job
        self.queue.append(job)
        self._dispatch()
        if not chat.stream:
            return json_response(queued[-1]["response"])
        # The run's task starts at the next await; `follow` subscribes before its first one, so the
        # stream is the entries just written, then the live ones: no second read of the store.
        return await self.follow(request, job.response_id, -1, logged)

    def _dispatch(self) -> None:
        state = self.state
        while self.queue and state.active < state.config.server.max_concurrent_streams and not state.shutting_down:
            job = self.queue.popleft()
            state.runs.add(job.run)
            job.task = asyncio.get_running_loop().create_task(self._execute(job))

    async def _execute(self, job: Job) -> None:
        state, run = self.state, job.run
        current_request_id.set(run.request_id)  # this task may have been started from another request's
        try:
            sinks = job.sinks()
            await sinks.start(run.stream.start())
            await run_create(state, job.request, run, job.routed, sinks, job.settled)
        except Exception:  # noqa: BLE001 - the store failed at the start; the lease lapses and another end comes
            get_logger().exception("background.crashed", request_id=run.request_id,
                                   response_id=job.response_id)
        finally:
            state.run_ended(run)
            await self._finished(job)

    async def _finished(self, job: Job) -> None:
        """Release the lease once the terminal state is stored (else it lapses and the run is ended later)."""
        self.jobs.pop(job.response_id, None)
        if job.run.stream.terminal is not None:
            with contextlib.suppress(StoreUnavailable):
                await self.service.call(self.service.store.release_run(job.response_id))
        job.routed.release()
        await log_finished(self.state, job.request, job.received, 200, run=job.run, routed=job.routed)
        self._dispatch()

    def _end_queued(self, job: Job, code: str, message: str) -> asyncio.Task[None]:
        async def end() -> None:
            current_request_id.set(job.run.request_id)
            with contextlib.suppress(StoreUnavailable):
                await job.sinks().send(job.run.stream.fail(code, message))
            await self._finished(job)
        job.task = asyncio.get_running_loop().create_task(end())
        return job.task

    # ------------------------------------------------------------------ leases and cancel requests
    async def _keep(self) -> None:
        """Every TICK: stop runs whose cancel was requested elsewhere, renew leases, end lapsed runs."""
        store = self.service.store
        renewed = reaped = 0.0
        while True:
            try:
                # Only calls that reach the store: a call without I/O would mark a down store as up.
                if self.jobs:
                    for rid in await self.service.call(store.cancel_requested(list(self.jobs))):
                        if rid in self.jobs:
                            self._cancel_local(self.jobs[rid])
                now = time.monotonic()
                if self.jobs and now - renewed >= self.lease / 3:
                    renewed = now
                    await self.service.call(store.renew_runs(list(self.jobs), self.instance, self.lease))
                if now - reaped >= min(self.lease / 2, 5.0):
                    reaped = now
                    await self._reap()
            except StoreUnavailable:
                pass  # logged by service.call; the next tick tries again
            self._dispatch()
            await asyncio.sleep(TICK)

    async def _reap(self) -> None:
        store = self.service.store
        for rid in await self.service.call(store.take_lapsed_runs()):
            if rid in self.jobs:  # ours, renewed late: keep it
                await self.service.call(store.claim_run(rid, self.instance, self.lease))
                continue
            get_logger().warning("background.lease_lapsed", response_id=rid)
            await self.end_elsewhere(rid, "server_error", "The gateway instance running this background "
                                     "response stopped before it finished (its lease lapsed).")

    async def end_elsewhere(self, response_id: str, code: str, message: str) -> None:
        """End a response no live run will end (its instance died, or it never started there)."""
        store, ttl = self.service.store, self.service.config.ttl
        found = await self.service.call(store.get_responses([response_id]))
        if response_id not in found:
            return
        record = orjson.loads(found[response_id])
        if record["response"]["status"] in TERMINAL_STATUSES:
            return
        record["response"] = {**record["response"], "status": "failed", "completed_at": None,
                              "error": {"code": code, "message": message}}
        mark_cancelled(record["response"])
        await self.service.call(store.put_response(response_id, orjson.dumps(record), ttl))
        if record.get("resumable"):
            logged = await self.service.call(store.read_events(response_id, -1))
            if not (logged and is_terminal(logged[-1][1])):
                seq = logged[-1][0] + 1 if logged else 0
                await self.service.call(store.append_events(response_id, [(seq, terminal_frame(record["response"],
                                                                                              seq))], ttl))

    def _cancel_local(self, job: Job) -> asyncio.Task[None] | None:
        message = "The response was cancelled."
        if job.task is None:
            self.queue.remove(job)
            return self._end_queued(job, CANCELLED, message)
        job.run.stop(CANCELLED, message)
        return job.task

    async def cancel(self, response_id: str, owner: str) -> dict[str, Any]:
        """POST /v1/responses/{id}/cancel: stop the run wherever it runs; the response as it ended."""
        response = (await self.service.response_record(response_id, owner))["response"]
        if not response.get("background"):
            raise InvalidRequest("Only responses created with background=true can be cancelled.",
                                 code="invalid_request")
        if response["status"] in TERMINAL_STATUSES:
            return response
        store = self.service.store
        job = self.jobs.get(response_id)
        if job is not None:
            task = self._cancel_local(job)
            if task is not None:
                await asyncio.wait([task], timeout=CANCEL_WAIT)
        else:
            await self.service.call(store.request_cancel(response_id, max(60.0, 3 * self.lease)))
            deadline = time.monotonic() + CANCEL_WAIT
            while time.monotonic() < deadline:
                await asyncio.sleep(TICK / 2)
                response = (await self.service.response_record(response_id, owner))["response"]
                if response["status"] in TERMINAL_STATUSES:
                    return response
            if await self.service.call(store.run_owner(response_id)) is None:
                await self.end_elsewhere(response_id, CANCELLED, "The response was cancelled.")
        return (await self.service.response_record(response_id, owner))["response"]

    # ------------------------------------------------------------------ streams
    async def resume(self, request: web.Request, response_id: str, owner: str) -> web.StreamResponse:
        """GET /v1/responses/{id}?stream=true[&starting_after=N]: the log after N, then the live events."""
        record = await self.service.response_record(response_id, owner)
        if not record.get("resumable"):
            raise InvalidRequest("You can only start a new stream from a background response if you created it "
                                 "with stream=true.", param="stream")
        after = starting_after(request)
        _flag(request, "include_obfuscation")  # accepted; this gateway adds no obfuscation padding
        return await self.follow(request, response_id, after)

    async def follow(self, request: web.Request, response_id: str, after: int,
                     logged: list[tuple[int, bytes]] | None = None) -> web.StreamResponse:
        """Write the log after `after` (`logged`, when the caller has it, else read), then the live events
        to the terminal one.

        A run of this instance hands its appended entries to local followers directly (`EventLog.listen`):
        they read the store once, for the backlog. Subscribing before that read leaves no gap; the
        overlap is skipped by sequence number.
        """
        store, call = self.service.store, self.service.call
        job = self.jobs.get(response_id)
        live = job.log.listen() if job is not None else None
        try:
            if logged is None:
                logged = await call(store.read_events(response_id, after))
            if any(entry == TRUNCATED for _, entry in logged):
                raise EventLogGone(f"The event log of response {response_id} grew past this gateway's limit "
                                   f"(store.max_event_log_bytes = {self.service.config.max_event_log_bytes} bytes), "
                                   "so its stream cannot be resumed; GET /v1/responses/{id} returns the response.")
            return await self._write(request, response_id, after, logged, live)
        finally:
            if job is not None and live is not None:
                job.log.unlisten(live)

    async def _write(self, request: web.Request, response_id: str, after: int, logged: list[tuple[int, bytes]],
                     live: asyncio.Queue[list[tuple[int, bytes]]] | None) -> web.StreamResponse:
        store, call = self.service.store, self.service.call
        sink = EventStream(request, {"X-Request-ID": current_request_id.get()}, self.state.keepalive,
                           done=self.state.config.server.sse_done)
        await sink.start([])
        assert sink.response is not None
        try:
            while True:
                if logged:
                    after = logged[-1][0]
                    await sink.response.write(b"".join(entry for _, entry in logged))
                    if is_terminal(logged[-1][1]):
                        break
                elif await self._ended(response_id):
                    # Its terminal event may be on its way into the log, or never made it (a store fault).
                    logged = await call(store.read_events(response_id, after))
                    if not logged:
                        await sink.response.write(await self._terminal_of(response_id, after + 1))
                        break
                    continue
                if live is not None and live.qsize() <= LIVE_BACKLOG:
                    logged = []
                    with contextlib.suppress(TimeoutError):
                        logged = [entry for entry in await asyncio.wait_for(live.get(), FOLLOW_WAIT)
                                  if entry[0] > after]
                else:  # a follower on another instance, or one too slow for its queue: the store
                    live = None
                    logged = await call(store.follow_events(response_id, after, FOLLOW_WAIT))
            await sink.finish()
        except ConnectionResetError:
            pass  # the client left; the run goes on
        finally:
            sink.abandon()
        return sink.response

    async def _ended(self, response_id: str) -> bool:
        found = await self.service.call(self.service.store.get_responses([response_id]))
        return response_id not in found or orjson.loads(found[response_id])["response"]["status"] in TERMINAL_STATUSES

    async def _terminal_of(self, response_id: str, seq: int) -> bytes:
        """The terminal event of a response whose log lacks it: as stored, or failed if it was deleted."""
        found = await self.service.call(self.service.store.get_responses([response_id]))
        if response_id in found:
            return terminal_frame(orjson.loads(found[response_id])["response"], seq)
        return terminal_frame({"id": response_id, "object": "response", "status": "failed", "output": [],
                               "error": {"code": "response_deleted", "message": "The response was deleted."}}, seq)


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise InvalidRequest(f"Invalid '{name}': expected true or false, got {value!r}.", param=name,
                             code="invalid_value")
    return value in ("true", "1")


def wants_stream(request: web.Request) -> bool:
    return _flag(request, "stream")


def starting_after(request: web.Request) -> int:
    """The `starting_after` sequence number of a resume (-1: from the start); checked on every GET, so a
    malformed one is a 400 even where it would not be used."""
    given = request.query.getall("starting_after", [])
    if not given:
        return -1
    if len(given) > 1 or not given[0].isascii() or not given[0].isdigit():
        raise InvalidRequest(f"Invalid 'starting_after': {', '.join(given)!r} is not a sequence number.",
                             param="starting_after", code="invalid_value")
    return int(given[0])

