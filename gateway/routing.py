"""Which upstream serves a model, failover between upstreams, and the upstream clients' lifetimes.

A request's `model` picks an upstream in this order: an exact name in some upstream's `models`,
an alias (`public: upstream-model`), a `name/model` prefix, a glob in `models`, the default.
The chosen upstream's `fallbacks` follow it. One `RoutingTable` is built per configuration: a
reload builds a new one (reusing unchanged upstreams, breaker state included) while requests
that started on the old one finish on it; its clients close once the last of them is done.
"""
from __future__ import annotations

import asyncio
import contextlib
import email.utils
import fnmatch
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from .breaker import Breaker
from .config import Config, UpstreamConfig
from .errors import GatewayError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from .keys import Key, check_model, request_key
from .log import get_logger
from .translate import ChatRequest, Earlier, translate_request
from .truncation import send_fitting
from .upstream import UpstreamClient, UpstreamStream

if TYPE_CHECKING:
    from aiohttp import web

    from .metrics import Metrics
    from .state import AppState
    from .stream_processor import StreamOptions

T = TypeVar("T")
_TRACE_HEADERS = ("traceparent", "tracestate")
_MODELS_CACHE_ENTRIES = 64   # one per distinct forwarded Authorization (only when upstreams have no key)
_LISTED_MODELS = 30          # in the model_not_found message


class Upstream:
    """One configured upstream: its client and its circuit breaker."""

    __slots__ = ("name", "config", "client", "breaker")

    def __init__(self, config: UpstreamConfig, breaker: tuple[int, float, float, float]) -> None:
        self.name = config.name
        self.config = config
        self.client = UpstreamClient(config)
        self.breaker = Breaker(*breaker)


@dataclass(frozen=True, slots=True)
class Target:
    upstream: Upstream
    model: str  # the name this upstream knows the model by


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class RoutingTable:
    def __init__(self, config: Config, previous: RoutingTable | None = None) -> None:
        routing = config.routing
        reusable = {u.name: u for u in previous.upstreams.values()} if previous else {}
        self.upstreams: dict[str, Upstream] = {}
        self._new: list[Upstream] = []
        breaker = (routing.breaker_failures, routing.breaker_failure_ratio, routing.breaker_window,
                   routing.breaker_cooldown)
        for entry in config.upstream_list:
            old = reusable.get(entry.name)
            if old is not None and old.config == entry and old.breaker.settings == breaker:
                self.upstreams[entry.name] = old
            else:
                self.upstreams[entry.name] = upstream = Upstream(entry, breaker)
                self._new.append(upstream)
        self.routing = routing
        default = routing.default or (config.upstream.name if not config.upstreams else "")
        self.default = self.upstreams.get(default)
        self._exact: dict[str, Target] = {}
        self._globs: list[tuple[str, Upstream]] = []
        for upstream in self.upstreams.values():
            for model in upstream.config.models:
                if any(c in model for c in "*?["):
                    self._globs.append((model, upstream))
                else:
                    self._exact.setdefault(model, Target(upstream, model))
        self._aliases = {alias: Target(upstream, model) for upstream in self.upstreams.values()
                         for alias, model in upstream.config.aliases.items()}
        self.models_ttl = routing.models_cache_ttl
        self._models: dict[str | None, tuple[float, list[dict[str, Any]]]] = {}
        # Lifetime: requests in flight on this table; retired tables close what the next one dropped.
        self.users = 0
        self._dropped: list[Upstream] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        # Retired tables still draining, one set shared by every table since the first: a table
        # leaves it when its last request ends, so nothing keeps it (and its config) alive after.
        self.retiring: set[RoutingTable] = previous.retiring if previous else set()

    # ------------------------------------------------------------------------------------------ routing
    def resolve(self, model: str) -> Target | None:
        target = self._exact.get(model) or self._aliases.get(model)
        if target is not None:
            return target
        prefix, slash, rest = model.partition("/")
        if slash and rest and prefix in self.upstreams:
            return Target(self.upstreams[prefix], rest)
        for pattern, upstream in self._globs:
            if fnmatch.fnmatchcase(model, pattern):
                return Target(upstream, model)
        return Target(self.default, model) if self.default is not None else None

    def targets(self, model: str) -> list[Target]:
        """The resolved target, then its upstream's fallbacks (each under its own name for the model)."""
        first = self.resolve(model)
        if first is None:
            raise ModelNotFound(f"The model {model!r} does not exist on this gateway. Models: "
                                f"{', '.join(self.public_names())}.", param="model")
        chain = [first]
        for name in first.upstream.config.fallbacks:
            upstream = self.upstreams[name]
            own = self._own_name(upstream, model)
            chain.append(Target(upstream, own if own is not None else first.model))
        return chain

    def _own_name(self, upstream: Upstream, model: str) -> str | None:
        for target in (self._exact.get(model), self._aliases.get(model)):
            if target is not None and target.upstream is upstream:
                return target.model
        return None

    def public_names(self) -> list[str]:
        names = [*self._exact, *self._aliases, *(pattern for pattern, _ in self._globs),
                 *(f"{name}/…" for name in self.upstreams)]
        if self.default is not None:
            names.append(f"anything else (default: {self.default.name})")
        return names[:_LISTED_MODELS] + (["…"] if len(names) > _LISTED_MODELS else [])

    # ---------------------------------------------------------------------------------------- listing
    async def list_models(self, request_id: str, authorization: str | None) -> list[dict[str, Any]]:
        """Every upstream's models under the names that route to them, cached for `models_cache_ttl`.

        An upstream that is down is left out (with a warning); when all are, the first failure is raised.
        """
        if all(u.config.api_key for u in self.upstreams.values()):
            authorization = None  # not forwarded anywhere: one list for every caller
        cached = self._models.get(authorization)
        if cached is not None and time.monotonic() - cached[0] < self.models_ttl:
            return cached[1]
        upstreams = list(self.upstreams.values())
        answers = await asyncio.gather(*(self._models_of(u, request_id, authorization) for u in upstreams),
                                       return_exceptions=True)
        merged: dict[str, dict[str, Any]] = {}
        failures: list[BaseException] = []
        for upstream, answer in zip(upstreams, answers):
            if isinstance(answer, BaseException):
                if not isinstance(answer, GatewayError):
                    raise answer
                failures.append(answer)
                get_logger().warning("models.upstream_left_out", request_id=request_id, upstream=upstream.name,
                                     error=answer.message)
                continue
            for entry in self._public_entries(upstream, answer):
                merged.setdefault(entry["id"], entry)
        if failures and len(failures) == len(upstreams):
            raise failures[0]
        data = list(merged.values())
        if len(self._models) >= _MODELS_CACHE_ENTRIES:
            self._models.clear()
        self._models[authorization] = (time.monotonic(), data)
        return data

    async def _models_of(self, upstream: Upstream, request_id: str,
                         authorization: str | None) -> list[dict[str, Any]]:
        status, body, _ = await upstream.client.get_json("/models", request_id=request_id,
                                                         client_authorization=authorization,
                                                         timeout=upstream.config.connect_timeout + 5)
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            document = None
        if status >= 400 or not isinstance(document, dict) or not isinstance(document.get("data"), list):
            raise UpstreamError(f"upstream {upstream.name!r} answered GET /models with HTTP {status}",
                                status=status if status >= 400 else 502)
        return [entry for entry in document["data"] if isinstance(entry, dict) and isinstance(entry.get("id"), str)]

    def _public_entries(self, upstream: Upstream, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        public = []
        for entry in entries:
            target = self.resolve(entry["id"])
            routed_here = target is not None and target.upstream is upstream and target.model == entry["id"]
            public.append(entry if routed_here else {**entry, "id": f"{upstream.name}/{entry['id']}"})
        for alias, target in self._aliases.items():
            if target.upstream is upstream:
                public.append({"id": alias, "object": "model", "created": 0, "owned_by": upstream.name})
        return public

    # -------------------------------------------------------------------------------------- readiness
    async def readiness(self, request_id: str) -> tuple[bool, dict[str, Any]]:
        """Each upstream's answer to GET /models and its breaker; ready when any upstream is."""
        upstreams = list(self.upstreams.values())
        reports = await asyncio.gather(*(self._probe(u, request_id) for u in upstreams))
        ready = any(report["status"] == "ready" for report in reports)
        return ready, {"status": "ready" if ready else "unavailable",
                       "upstreams": {u.name: report for u, report in zip(upstreams, reports)}}

    async def _probe(self, upstream: Upstream, request_id: str) -> dict[str, Any]:
        report: dict[str, Any] = {"breaker": upstream.breaker.state}
        paused = upstream.breaker.paused_for
        if paused:
            report["rate_limited_for"] = round(paused, 1)
        try:
            status, _, _ = await upstream.client.get_json("/models", request_id=request_id, client_authorization=None,
                                                          timeout=upstream.config.connect_timeout)
        except GatewayError as exc:
            return {"status": "unavailable", "error": exc.message.replace(upstream.client.base_url, upstream.name),
                    **report}
        return {"status": "ready" if status < 500 else "unavailable", "upstream_status": status, **report}

    # --------------------------------------------------------------------------------------- lifetime
    async def start(self) -> None:
        for upstream in self._new:
            await upstream.client.start()
        self._new = []

    def retire(self, successor: RoutingTable) -> None:
        """Hand over to `successor`; the upstreams it dropped close once this table's requests are done."""
        kept = {id(u) for u in successor.upstreams.values()}
        self._dropped = [u for u in self.upstreams.values() if id(u) not in kept]
        if self.users:
            self.retiring.add(self)
        else:
            self._close_dropped()

    @contextlib.contextmanager
    def hold(self) -> Iterator[RoutingTable]:
        """Keep this table's clients open while a short request uses it."""
        self.users += 1
        try:
            yield self
        finally:
            self.release()

    def release(self) -> None:
        self.users -= 1
        if self.users == 0 and self._dropped is not None:
            self._close_dropped()

    def _close_dropped(self) -> None:
        self.retiring.discard(self)
        dropped, self._dropped = self._dropped or [], []
        for upstream in dropped:
            task = asyncio.get_running_loop().create_task(upstream.client.close())
            self._closing.add(task)  # the loop keeps only a weak reference
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """At shutdown: this table's clients and those of retired tables still draining."""
        for table in list(self.retiring):
            for upstream in table._dropped or ():
                await upstream.client.close()
        for upstream in self.upstreams.values():
            await upstream.client.close()


class RoutedRequest:
    """One request's way upstream: targets in failover order, the key's stream slot, what happened.

    `open()` has `UpstreamClient.open`'s signature, so the pipeline runs over it unchanged; the
    pipeline waits at most `first_byte_deadline` for it in all. `release()` must be called once the
    request is done (routes do it in their `finally`).
    """

    __slots__ = ("table", "targets", "config", "key", "trace", "metrics", "answered", "failed", "retranslate",
                 "options", "_last_error", "_release", "truncation")

    def __init__(self, table: RoutingTable, targets: list[Target], *, key: Key | None, trace: Mapping[str, str],
                 metrics: Metrics | None, release: Callable[[], None] | None = None) -> None:
        self.table = table
        self.targets = targets
        self.config = targets[0].upstream.config  # the request is translated with its options first
        self.key = key
        self.trace = trace
        self.metrics = metrics
        self.answered: str | None = None
        self.failed: list[str] = []
        # The request translated for another upstream's options (a fallback of another kind), and
        # the stream options of that translation once such a fallback answered (see `open`).
        self.retranslate: Callable[[UpstreamConfig], ChatRequest] | None = None
        self.options: StreamOptions | None = None
        self._last_error: UpstreamError | None = None
        self._release = release
        self.truncation = "disabled"  # the request's `truncation` (gateway/truncation.py), set by `translate`
        table.users += 1
        if metrics is not None:
            metrics.open_streams.inc()

    @property
    def upstream_name(self) -> str:
        return self.answered or (self.failed[-1] if self.failed else self.targets[0].upstream.name)

    def translate(self, document: Any, earlier: Earlier | None = None) -> ChatRequest:
        """The request (after the `earlier` items of a chain) translated for the first target; a fallback of
        another kind gets its own at its turn."""
        chat = translate_request(document, self.config, earlier)
        self.truncation = chat.options.echo.get("truncation") or "disabled"
        if any(t.upstream.config.translation != self.config.translation for t in self.targets[1:]):
            self.retranslate = lambda config: translate_request(document, config, earlier)
        return chat

    @property
    def first_byte_deadline(self) -> float:
        """How long all attempts together wait for an answer; each one also has its upstream's own limit."""
        return self.table.routing.first_byte_deadline or max(t.upstream.config.first_byte_timeout
                                                             for t in self.targets)

    def log_fields(self) -> dict[str, Any]:
        return {"upstream": self.upstream_name, "failed_first": self.failed[0] if self.failed else None,
                "key": self.key.name if self.key else None}

    def release(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None
        if self.table is not None:
            self.table.release()
            self.table = None  # type: ignore[assignment]
            if self.metrics is not None:
                self.metrics.open_streams.dec()

    async def open(self, body: dict[str, Any], *, request_id: str, client_authorization: str | None = None,
                   tap: Callable[[bytes], None] | None = None,
                   carry: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> UpstreamStream:
        """Open the first target that answers; `body` is the translation for the first target's options.

        A fallback whose options translate differently (`UpstreamConfig.translation`) gets its own
        translation, with what `carry` adds to it (a tool loop's listed tools), and `options` then holds
        the stream options the answer must be read with.
        """
        async def attempt(target: Target, last: bool) -> UpstreamStream:
            config = target.upstream.config
            chat = None
            if self.retranslate is not None and config.translation != self.config.translation:
                chat = self.retranslate(config)
            sent = body if chat is None else chat.body if carry is None else carry(chat.body)
            sent["model"] = target.model
            client = target.upstream.client
            stream = await send_fitting(sent, self.truncation, config.context_window, target.upstream.name,
                                        lambda: client.open(sent, request_id=request_id,
                                                            client_authorization=client_authorization,
                                                            trace=self.trace, tap=tap))
            self.options = chat.options if chat is not None else None
            return stream
        try:
            return await self.first_answer(attempt)
        finally:
            self.retranslate = None  # it holds the whole request: not kept for the stream's life

    async def first_answer(self, attempt: Callable[[Target, bool], Awaitable[T]]) -> T:
        """Try the targets in order; a connection error, timeout, 5xx or 429 moves on to the next.

        Only failures before the upstream answered count: once `attempt` returned, the answer is
        relayed whatever happens next. Upstreams whose breaker is open, or that a 429 paused, are
        skipped while another target can take the request; when none can, the request goes to
        them anyway, in order (panic mode): the breaker never refuses a request by itself.
        """
        targets = self.targets
        tried = False
        for i, target in enumerate(targets):
            if not target.upstream.breaker.acquire():
                continue
            tried = True
            last = not any(t.upstream.breaker.available() for t in targets[i + 1:])
            answer = await self._try(attempt, target, last)
            if answer is not _NEXT:
                return answer  # type: ignore[return-value]
        if not tried:
            for i, target in enumerate(targets):
                if self.metrics is not None:
                    self.metrics.panic(target.upstream.name)
                answer = await self._try(attempt, target, i == len(targets) - 1)
                if answer is not _NEXT:
                    return answer  # type: ignore[return-value]
        assert self._last_error is not None  # every target tried failed over, the last as it became unavailable
        raise self._last_error

    async def _try(self, attempt: Callable[[Target, bool], Awaitable[T]], target: Target, last: bool) -> Any:
        """One attempt within its upstream's own first-byte limit: its answer, or `_NEXT` to fail over."""
        upstream = target.upstream
        breaker = upstream.breaker
        if self.failed and self.metrics is not None:
            self.metrics.failover(self.failed[-1], upstream.name)
        limit = upstream.config.first_byte_timeout
        try:
            try:
                async with asyncio.timeout(limit) as deadline:
                    result = await attempt(target, last)
            except TimeoutError:
                if not deadline.expired():
                    raise  # the request's overall deadline: the caller reports it
                raise UpstreamTimeout(f"upstream {upstream.name!r} did not answer within {limit:g}s") from None
        except UpstreamError as exc:
            if not fails_over(exc):
                breaker.succeeded()  # it answered; the request itself was refused
                raise
            if exc.status == 429:
                breaker.rate_limited(self._pause(exc))
            else:
                breaker.failed()
            self.failed.append(upstream.name)
            if self.metrics is not None:
                self.metrics.upstream_error(upstream.name, exc.code or "upstream_error")
            if last:
                raise
            self._last_error = exc
            return _NEXT
        except BaseException:
            breaker.abandoned()
            raise
        breaker.succeeded()
        self.answered = upstream.name
        return result

    def _pause(self, exc: UpstreamError) -> float:
        """How long a 429 keeps its upstream aside: its Retry-After, bounded."""
        routing = self.table.routing
        seconds = retry_after_seconds(exc.headers.get("Retry-After"))
        return min(routing.rate_limit_max_pause, routing.rate_limit_pause if seconds is None else seconds)


_NEXT = object()  # an attempt failed over


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header in seconds (delay-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def fails_over(exc: UpstreamError) -> bool:
    """Connection errors, 5xx and 429 before the first byte: worth another upstream."""
    return isinstance(exc, UpstreamUnavailable) or exc.status >= 500 or exc.status == 429


def route_request(state: AppState, request: web.Request, model: Any, *, hold: bool = True) -> RoutedRequest:
    """Route a request for `model` on the current table, checking the caller's key (403) and its stream limit.

    `hold=False`: the caller already holds the key's stream slot (a WebSocket connection, for its turns).

    A missing or mistyped model routes to the default (or first) upstream so that translation
    reports it with its usual 400.
    """
    table = state.routing
    key = request_key(request)
    if isinstance(model, str) and model:
        check_model(key, model)
        targets = table.targets(model)
    else:
        targets = [Target(table.default or next(iter(table.upstreams.values())), "")]
    release = state.stream_limits.acquire(key) if key is not None and hold else None
    trace = {name: request.headers[name] for name in _TRACE_HEADERS if name in request.headers}
    metrics = state.metrics if state.metrics.enabled else None
    return RoutedRequest(table, targets, key=key, trace=trace, metrics=metrics, release=release)
