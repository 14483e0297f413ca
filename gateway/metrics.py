"""Prometheus metrics (`GET /metrics`), named after OpenTelemetry's GenAI conventions where they have a name.

Recorded once per request when it ends (plus the open-streams gauge when it starts), never per
chunk, so a stream costs the same whatever its length. Breaker states are read at scrape time.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from .state import STATE

if TYPE_CHECKING:
    from .pipeline import Loop, Run
    from .routing import RoutedRequest

# Seconds: a local model's prompt processing can take minutes before the first token.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800)
# OpenTelemetry's advice for gen_ai.client.token.usage.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
# Final error codes the gateway itself causes: not the upstream's fault.
_GATEWAY_CODES = frozenset({"server_shutting_down", "server_error"})
_MODEL, _UPSTREAM, _KEY = "gen_ai_request_model", "upstream", "key"

routes = web.RouteTableDef()


class Metrics:
    """One registry per app (tests run several gateways in one process)."""

    def __init__(self, breakers: Callable[[], Iterable[tuple[str, Breaker]]], enabled: bool = True) -> None:
        self.enabled = enabled  # off: nothing is recorded and /metrics is a 404 (server.metrics: false)
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("gateway_requests", "Requests by route, model, upstream, key, HTTP status and outcome",
                                ("route", _MODEL, _UPSTREAM, _KEY, "http_status", "outcome"), registry=registry)
        self.ttft = Histogram("gen_ai_server_time_to_first_token", "Time to the first output token",
                              (_MODEL, _UPSTREAM), unit="seconds", buckets=TTFT_BUCKETS, registry=registry)
        self.duration = Histogram("gen_ai_server_request_duration", "Request duration, to the end of the stream",
                                  ("route", _MODEL, _UPSTREAM, "error_type"), unit="seconds",
                                  buckets=DURATION_BUCKETS, registry=registry)
        self.tokens = Histogram("gen_ai_client_token_usage", "Tokens per request, by gen_ai_token_type (input, output)",
                                (_MODEL, _UPSTREAM, _KEY, "gen_ai_token_type"), buckets=TOKEN_BUCKETS,
                                registry=registry)
        self.open_streams = Gauge("gateway_open_streams", "Requests in flight to an upstream", registry=registry)
        self.upstream_errors = Counter("gateway_upstream_errors", "Upstream failures by error code",
                                       (_UPSTREAM, "error_type"), registry=registry)
        self.failovers = Counter("gateway_failovers", "Requests moved on to a fallback upstream",
                                 ("from_upstream", "to_upstream"), registry=registry)
        self.panics = Counter("gateway_upstream_panic", "Attempts sent to an upstream although its breaker was "
                              "open or a 429 paused it, because no other upstream of the route could take them",
                              (_UPSTREAM,), registry=registry)
        self.tool_calls = Counter("gateway_tool_calls", "Hosted tool calls (gateway/tools) by server host and outcome",
                                  ("server", "outcome"), registry=registry)
        self.tool_duration = Histogram("gateway_tool_call_duration", "Hosted tool call latency, by server host",
                                       ("server",), unit="seconds", buckets=DURATION_BUCKETS, registry=registry)
        self.tool_rounds = Histogram("gateway_tool_rounds", "Rounds of hosted tool calls per response with hosted "
                                     "tools", buckets=(0, 1, 2, 3, 4, 6, 8, 12, 16), registry=registry)
        registry.register(_BreakerCollector(breakers))
        # Labelled children by (metric, label values): `labels()` costs more than the observation itself.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def failover(self, failed: str, next_upstream: str) -> None:
        self._child(self.failovers, failed, next_upstream).inc()

    def panic(self, upstream: str) -> None:
        self._child(self.panics, upstream).inc()

    def upstream_error(self, upstream: str, code: str) -> None:
        self._child(self.upstream_errors, upstream, code).inc()

    def rejected(self, route: str, status: int, key: str | None, model: str = "") -> None:
        """A request answered with an error before any upstream was asked."""
        if not self.enabled:
            return
        self._child(self.requests, route, model, "", key or "", str(status), "rejected").inc()

    def finished(self, route: str, run: Run, routed: RoutedRequest, http_status: int, error_code: str | None) -> None:
        """Everything about one /v1/responses request, at its end."""
        if not self.enabled:
            return
        terminal = run.stream.terminal
        response: dict[str, Any] = terminal["response"] if terminal else {}
        code = (response.get("error") or {}).get("code") or error_code
        outcome = "client_disconnected" if run.client_disconnected else response.get("status") or "error"
        upstream, key = routed.upstream_name, routed.key.name if routed.key else ""
        self._child(self.requests, route, run.model, upstream, key, str(http_status), outcome).inc()
        self._child(self.duration, route, run.model, upstream, code or "").observe(time.monotonic() - run.started_at)
        if run.first_output_at is not None:
            self._child(self.ttft, run.model, upstream).observe(run.first_output_at - run.started_at)
        usage = response.get("usage") or {}
        for kind in ("input", "output"):
            tokens = usage.get(f"{kind}_tokens")
            if isinstance(tokens, int):
                self._child(self.tokens, run.model, upstream, key, kind).observe(tokens)
        if run.loop is not None:
            self._tools(run.loop)
        # Failures before an answer were counted per attempt; count what went wrong after it.
        upstream_fault = routed.answered is not None or (code == "upstream_timeout" and not routed.failed)
        if code and code not in _GATEWAY_CODES and upstream_fault:
            self.upstream_error(upstream, code)

    def _tools(self, loop: Loop) -> None:
        self.tool_rounds.observe(loop.rounds)
        for server, outcome, seconds in loop.records:
            self._child(self.tool_calls, server, outcome).inc()
            self._child(self.tool_duration, server).observe(seconds)

    def passthrough(self, route: str, model: Any, routed: RoutedRequest, http_status: int, started: float) -> None:
        if not self.enabled:
            return
        key, model = routed.key.name if routed.key else "", model if isinstance(model, str) else ""
        outcome = "completed" if http_status < 400 else "error"
        self._child(self.requests, route, model, routed.upstream_name, key, str(http_status), outcome).inc()
        self._child(self.duration, route, model, routed.upstream_name, "" if http_status < 400 else str(http_status)
                    ).observe(time.monotonic() - started)


class _BreakerCollector(Collector):
    def __init__(self, breakers: Callable[[], Iterable[tuple[str, Breaker]]]) -> None:
        self.breakers = breakers

    def collect(self) -> Iterable[Any]:
        state = GaugeMetricFamily("gateway_upstream_breaker_state",
                                  "Circuit breaker per upstream: 1 for its current state", labels=(_UPSTREAM, "state"))
        opened = CounterMetricFamily("gateway_upstream_breaker_opened", "Times the breaker opened",
                                     labels=(_UPSTREAM,))
        paused = GaugeMetricFamily("gateway_upstream_rate_limited_seconds",
                                   "Seconds an upstream's last 429 (its Retry-After) still keeps it aside",
                                   labels=(_UPSTREAM,))
        limited = CounterMetricFamily("gateway_upstream_rate_limited", "429 answers that paused the upstream",
                                      labels=(_UPSTREAM,))
        for name, breaker in self.breakers():
            current = breaker.state
            for each in (CLOSED, OPEN, HALF_OPEN):
                state.add_metric((name, each), 1.0 if each == current else 0.0)
            opened.add_metric((name,), breaker.opened_total)
            paused.add_metric((name,), breaker.paused_for)
            limited.add_metric((name,), breaker.rate_limits)
        yield from (state, opened, paused, limited)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    metrics = STATE.get(request.app).metrics
    if not metrics.enabled:
        raise web.HTTPNotFound()
    return web.Response(body=generate_latest(metrics.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})
