"""The upstream edge: one shared aiohttp session, retries, timeouts and SSE decoding.

`UpstreamClient.open()` returns once the upstream has answered 2xx with an event
stream (or raises a typed `UpstreamError`); `UpstreamStream.batches()` then yields the
decoded chunks of each network read, so a burst of tokens becomes one batch of events
and one write to the client.

`UpstreamStream.push()` adds a shortcut for the steady state of a stream: a read made only of
whole fast-path deltas (fast_path.py) goes to a consumer right inside aiohttp's read callback,
while `batches()` stays parked on the response's reader. On a paced stream, where every token
is one read, this saves waking the request's task per token: a future, a loop round and the
coroutine chain down to the client's write. Anything else (the first events, a partial event,
the finish, an error, a client that is not ready) takes the ordinary path through `batches()`.
"""
from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import orjson

from .config import UpstreamConfig
from .errors import UpstreamError, UpstreamHTTPError, UpstreamTimeout, UpstreamUnavailable, error_code
from .log import get_logger
from .sse import ChunkDecoder, EventTooLarge

_RETRY_STATUSES = frozenset({502, 503, 504})
_ERROR_BODY_LIMIT = 64 * 1024
# An upstream that ignores `stream: true` sends the whole completion as one JSON body.
_WHOLE_BODY_LIMIT = 16 * 1024 * 1024


class UpstreamClient:
    """Owns the shared `ClientSession`; started on app startup, closed on cleanup."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.name = config.name
        self.base_url = config.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=self.config.connect_timeout)
        # limit=0: concurrency is bounded by server.max_concurrent_streams, not by the pool.
        connector = aiohttp.TCPConnector(limit=0, enable_cleanup_closed=False)
        self._session = aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not awaited")
        return self._session

    def headers(self, request_id: str, client_authorization: str | None,
                trace: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
                   "X-Request-ID": request_id, **(trace or {})}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        elif client_authorization:
            headers["Authorization"] = client_authorization
        return headers

    async def open(self, body: dict[str, Any], *, request_id: str, client_authorization: str | None = None,
                   trace: Mapping[str, str] | None = None,
                   tap: Callable[[bytes], None] | None = None) -> UpstreamStream:
        """POST /chat/completions; retry connection errors and 502/503/504 before any byte.

        `tap`, when given, is called with every body read of the answer (debug capture).
        """
        payload = orjson.dumps(body)
        headers = self.headers(request_id, client_authorization, trace)
        attempts = 1 + self.config.retries
        answered: UpstreamHTTPError | None = None  # the upstream's last word, when a retry then lost the connection
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await self.session.post(f"{self.base_url}/chat/completions",
                                                   data=payload, headers=headers)
            except (aiohttp.ClientConnectionError, aiohttp.InvalidURL, OSError) as exc:
                if last:
                    # An upstream that just answered 503 is reachable: a retry that found the pooled
                    # connection closed under it must not turn that 503 into a 502 "cannot reach".
                    raise answered or self.unreachable(exc, request_id) from None
            else:
                if response.status < 400:
                    return await UpstreamStream.from_response(response, self.config, tap)
                answered = await http_error(response, self.config.idle_timeout)
                if response.status not in _RETRY_STATUSES or last:
                    raise answered
            await asyncio.sleep(self.config.retry_backoff * (2 ** attempt) * random.uniform(0.5, 1.5))
        raise AssertionError("unreachable")  # pragma: no cover

    async def get_json(self, path: str, *, request_id: str, client_authorization: str | None,
                       timeout: float) -> tuple[int, bytes, str]:
        """GET a small JSON document (models list, readiness probe)."""
        headers = self.headers(request_id, client_authorization)
        try:
            async with asyncio.timeout(timeout):
                async with self.session.get(f"{self.base_url}{path}", headers=headers) as response:
                    return response.status, await response.read(), response.content_type
        except TimeoutError:
            raise UpstreamTimeout(f"the upstream did not answer GET {path} within {timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self.unreachable(exc, request_id) from None

    def unreachable(self, exc: BaseException, request_id: str) -> UpstreamUnavailable:
        """The client's error names no address (often private, sometimes with a token): the log line does."""
        get_logger().warning("upstream.unreachable", upstream=self.name, url=self.base_url, reason=_reason(exc))
        return UpstreamUnavailable(f"The gateway cannot reach upstream {self.name!r} ({_public_reason(exc)}); its "
                                   f"log has the details under request {request_id}.")


class _PushReader(aiohttp.StreamReader):
    """aiohttp's body reader, with its bytes offered to the stream's push consumer first.

    Swapped in as the class of a response's reader (no new slots: the layout is aiohttp's), so
    aiohttp's parser calls this `feed_data`. Bytes the consumer takes never reach the buffer
    (nor `total_bytes`, so aiohttp does not count an HTTP chunk for them and wakes no reader).
    """

    __slots__ = ()

    def feed_data(self, data: bytes, *args: Any) -> bool:
        push = _PUSHED.get(self)
        if push is not None and not self._buffer and push(data):
            return False
        return super().feed_data(data, *args)


# The push callback of each reader swapped to _PushReader (its slots are aiohttp's, so it cannot hold one).
_PUSHED: dict[aiohttp.StreamReader, Callable[[bytes], bool]] = {}


class UpstreamStream:
    """An open upstream answer; `batches()` yields decoded chunks per network read."""

    __slots__ = ("_response", "_config", "_whole", "saw_done", "skipped_warning", "_wait", "_deadline", "_reading",
                 "_timer", "_expired", "_tap", "_decoder", "_consumer", "_push_error")

    def __init__(self, response: aiohttp.ClientResponse, config: UpstreamConfig,
                 whole: list[Any] | None = None, tap: Callable[[bytes], None] | None = None) -> None:
        self._response = response
        self._tap = tap
        self._config = config
        self._whole = whole          # the upstream ignored stream:true and sent one JSON body
        self.saw_done = False
        self.skipped_warning = ""  # set at the end when non-JSON data lines were dropped
        # The read deadline: stored by every read, checked by one lazy timer (see _check).
        self._wait = 0.0
        self._deadline = 0.0
        self._reading = False
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False
        self._decoder: ChunkDecoder | None = None
        self._consumer: Callable[[list[Any]], bool] | None = None  # see push()
        self._push_error: BaseException | None = None

    @classmethod
    async def from_response(cls, response: aiohttp.ClientResponse, config: UpstreamConfig,
                            tap: Callable[[bytes], None] | None = None) -> UpstreamStream:
        content_type = response.content_type
        if content_type == "application/json":
            body = await _read_limited(response, config.idle_timeout, _WHOLE_BODY_LIMIT + 1)
            response.release()
            if len(body) > _WHOLE_BODY_LIMIT:
                raise UpstreamError(f"the upstream answered {response.status} with a JSON body larger than "
                                    f"{_WHOLE_BODY_LIMIT} bytes")
            if tap is not None:
                tap(body)
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise UpstreamError(f"the upstream answered {response.status} with invalid JSON: "
                                    f"{_snippet(body)}") from None
            return cls(response, config, whole=[document], tap=tap)
        if content_type in ("text/html", "application/xml", "text/xml"):
            body = await _read_limited(response, config.idle_timeout)
            response.release()
            raise UpstreamError(f"the upstream answered {response.status} with {content_type} instead of an "
                                f"event stream: {_snippet(body)}")
        return cls(response, config, tap=tap)

    @property
    def held(self) -> int:
        """The largest unfinished upstream event this stream held between reads (see memory.Trimmer)."""
        return self._decoder.held if self._decoder is not None else 0

    def close(self) -> None:
        """Drop the upstream connection now (client gone, shutdown, timeout)."""
        self._unpush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._response.close()

    def push(self, consumer: Callable[[list[Any]], bool]) -> None:
        """From now on, offer `consumer` each read that is whole fast-path deltas, while `batches()` waits.

        `consumer(items)` runs inside aiohttp's read callback: it handles the items completely and
        returns True, or returns False having changed nothing, and the read takes the ordinary path.
        Not with a tap (capture sees reads as they come) nor before `batches()` has started.
        """
        content = self._response.content
        if (self._decoder is None or not self._decoder.fast or self._tap is not None
                or type(content) is not aiohttp.StreamReader):
            return
        self._consumer = consumer
        content.__class__ = _PushReader
        _PUSHED[content] = self._on_data

    def _unpush(self) -> None:
        if self._consumer is not None:
            self._consumer = None
            _PUSHED.pop(self._response.content, None)

    def _on_data(self, data: bytes) -> bool:
        """A read offered by _PushReader: True when the consumer took it."""
        if not self._reading or self._expired or self._consumer is None:
            return False  # batches() is busy with an earlier read (or done): it must see this one after
        decoder = self._decoder
        assert decoder is not None
        items = decoder.whole_fast(data)
        if not items:
            return False
        try:
            taken = self._consumer(items)
        except Exception as exc:  # noqa: BLE001 - a gateway bug: batches() raises it in the request's task
            self._push_error = exc
            self.close()
            return True
        if taken:
            self._deadline = asyncio.get_running_loop().time() + self._wait
        return taken

    def _check(self) -> None:
        """The read-deadline timer: one per stream, instead of an `asyncio.timeout` per read.

        A timeout around every `readany` costs a Timeout object, a heap push and a cancel per
        network read (per token on a paced stream). Here a read only stores its deadline; this
        timer fires at the deadline it last saw and re-arms itself if the read moved it on.
        Time spent waiting for the client (back-pressure) does not count, as before.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not self._reading:
            self._timer = loop.call_at(now + self._wait, self._check)
        elif now < self._deadline:
            self._timer = loop.call_at(self._deadline, self._check)
        else:
            self._timer = None
            self._expired = True
            self.close()  # wakes the pending read, which raises or sees EOF; batches() reports the timeout

    def _rearm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(loop.time() + self._wait, self._check)

    async def batches(self) -> AsyncIterator[list[Any]]:
        if self._whole is not None:
            self.saw_done = True
            yield self._whole
            return
        decoder = self._decoder = ChunkDecoder(fast_path=self._config.fast_path)
        content = self._response.content
        loop = asyncio.get_running_loop()
        wait = self._wait = self._config.first_byte_timeout
        idle = self._config.idle_timeout
        self._timer = loop.call_at(loop.time() + wait, self._check)
        while True:
            self._deadline = loop.time() + wait
            self._reading = True
            failure = ""
            try:
                data = await content.readany()
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError) as exc:
                # aiohttp raises one module-level exception object for every closed response (the
                # timer's close() among them): each raise appends this request's frames to its
                # traceback, which would keep every timed-out request alive. Drop them here.
                exc.__traceback__ = None
                failure = _reason(exc)
                data = b""
            if self._push_error is not None:
                raise self._push_error
            if failure:
                if self._expired:
                    raise UpstreamTimeout(f"the upstream sent nothing for {wait:g}s")
                # Bytes that arrived together with the failure are still ours: decode them first.
                unread = _unread(content)
                if self._tap is not None and unread:
                    self._tap(unread)
                try:
                    tail = decoder.feed(unread)
                except EventTooLarge as exc:
                    raise UpstreamError(str(exc), code="upstream_protocol_error") from None
                self.close()
                if tail:
                    yield tail
                if decoder.done:
                    break
                raise UpstreamError(f"the upstream connection failed mid-stream: {failure}",
                                    code="upstream_disconnected")
            self._reading = False
            if self._expired:
                raise UpstreamTimeout(f"the upstream sent nothing for {wait:g}s")
            if not data:
                break
            if self._tap is not None:
                self._tap(data)
            if wait != idle:
                # The answer started: the deadline moves from first_byte_timeout to idle_timeout, which
                # is usually much shorter, so the timer armed at the first-byte deadline is re-armed.
                wait = self._wait = idle
                self._rearm(loop)
            try:
                chunks = decoder.feed(data)
            except EventTooLarge as exc:
                raise UpstreamError(str(exc), code="upstream_protocol_error") from None
            data = b""  # nothing of this read stays alive while the next one waits
            if chunks:
                yield chunks
                chunks = None  # type: ignore[assignment]
            if decoder.done:
                break
        if not decoder.done:
            tail = decoder.close()
            if tail:
                yield tail
        self.saw_done = decoder.done
        if decoder.skipped:
            self.skipped_warning = (f"skipped {decoder.skipped} non-JSON data line(s) from the upstream, "
                                    f"first: {decoder.skipped_sample!r}")
        self._unpush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._response.release()


def _unread(content: aiohttp.StreamReader) -> bytes:
    """What aiohttp buffered but withholds once the payload failed (`readany` raises before returning it)."""
    buffer = getattr(content, "_buffer", None)
    if not buffer:
        return b""
    return b"".join(buffer)[getattr(content, "_buffer_offset", 0):]


async def _read_limited(response: aiohttp.ClientResponse, idle_timeout: float,
                        limit: int = _ERROR_BODY_LIMIT) -> bytes:
    """Up to `limit` bytes of the body, over as many network reads as it takes (any framing).

    A body cut short, or silent for `idle_timeout`, keeps what arrived: a partial error message
    beats none, and waiting longer would hang the client.
    """
    parts: list[bytes] = []
    size = 0
    try:
        while size < limit:
            async with asyncio.timeout(idle_timeout):
                data = await response.content.read(limit - size)
            if not data:
                break
            parts.append(data)
            size += len(data)
    except (aiohttp.ClientError, OSError, TimeoutError):
        pass
    return b"".join(parts)


async def http_error(response: aiohttp.ClientResponse, idle_timeout: float) -> UpstreamHTTPError:
    """An upstream non-2xx answer as our error, keeping status, message and Retry-After."""
    body = await _read_limited(response, idle_timeout)
    response.release()
    message, code, err_type, param = f"the upstream answered HTTP {response.status}", None, None, None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        if body.strip():
            message += f": {_snippet(body)}"
    else:
        error = document.get("error", document) if isinstance(document, dict) else document
        if isinstance(error, Mapping):
            message = str(error.get("message") or document.get("message") or message)
            code = error.get("code")
            err_type = error.get("type") if isinstance(error.get("type"), str) else None
            param = error.get("param") if isinstance(error.get("param"), str) else None
        elif isinstance(error, str):
            message = error
    headers = {}
    if "Retry-After" in response.headers:
        headers["Retry-After"] = response.headers["Retry-After"]
    status = response.status if 400 <= response.status < 600 else 502
    return UpstreamHTTPError(status, message, code=error_code(code, err_type, message, status), err_type=err_type,
                             param=param, headers=headers)


def _snippet(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    return text[:200] + ("…" if len(text) > 200 else "")


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _public_reason(exc: BaseException) -> str:
    """Why a connection failed, in words that carry no host, port or URL."""
    os_error = getattr(exc, "os_error", exc)
    if isinstance(os_error, OSError) and os_error.errno:
        return os.strerror(os_error.errno).lower()
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server disconnected"
    if isinstance(exc, aiohttp.InvalidURL):
        return "the configured URL is invalid"
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        return "connection timed out"
    return type(exc).__name__
