"""The aiohttp application: routes, middleware, the upstream session's lifecycle, draining on shutdown."""
from __future__ import annotations

import asyncio
import time

from aiohttp import web

from .background import BackgroundRuns
from .capture import CaptureStore
from .compaction_routes import compaction_routes
from .config import Config, for_debugging
from .event_stream import KeepAlive
from .input_tokens import input_tokens_routes
from .inspector import Inspector
from .inspector_routes import inspector_routes
from .keys import KeyRing, StreamLimits, auth_middleware
from .log import get_logger
from .memory import Trimmer, malloc_trim
from .metrics import Metrics
from .metrics import routes as metrics_routes
from .routes import envelope_middleware, routes
from .routing import RoutingTable
from .state import STATE, AppState
from .store import StoreUnavailable, display_url, open_store_url
from .store.service import StateService
from .stored_routes import stored_routes
from .tools.mcp_pool import SessionPool
from .websocket import close_sockets
from .websocket import routes as websocket_routes

_DRAIN_POLL = 0.05
# After the grace period, stopped streams get this long to write their response.failed.
_STOP_FLUSH = 5.0


def create_app(config: Config) -> web.Application:
    config = for_debugging(config)  # also for configs built in code rather than parsed
    # auto_decompress off: gateway/bodies.py decodes request bodies, bounded after decoding, in the envelope.
    app = web.Application(middlewares=[envelope_middleware, auth_middleware],
                          client_max_size=config.server.max_body_bytes,
                          handler_args={"auto_decompress": False})
    metrics = Metrics(lambda: ((u.name, u.breaker) for u in state.routing.upstreams.values()),
                      enabled=config.server.metrics)
    state = AppState(config=config, routing=RoutingTable(config), keys=KeyRing(config.auth),
                     stream_limits=StreamLimits(), metrics=metrics,
                     keepalive=KeepAlive(config.server.keepalive_interval),
                     stored=StateService(open_store_url(config.store.url, config.store.events_url), config.store),
                     debug=config.server.log_level == "debug",
                     capture=CaptureStore(config) if config.debug.capture != "off" else None,
                     inspector=Inspector(config.debug.inspector_recent) if config.debug.inspector else None)
    state.background = BackgroundRuns(state)
    state.mcp_sessions = SessionPool(config.tools.mcp.max_sessions)
    state.trimmer = Trimmer(lambda: state.active, malloc_trim())
    app[STATE.key] = state
    app.add_routes(routes)
    app.add_routes(compaction_routes)
    app.add_routes(input_tokens_routes)  # before stored_routes, like compaction's
    app.add_routes(websocket_routes)
    app.add_routes(stored_routes)
    app.add_routes(metrics_routes)
    if state.inspector is not None:
        app.add_routes(inspector_routes)
    app.on_startup.append(_start_upstream)
    app.on_startup.append(_open_store)
    app.on_startup.append(_start_background)
    app.on_shutdown.append(_drain)
    app.on_shutdown.append(close_sockets)
    app.on_shutdown.append(_stop_background)
    app.on_cleanup.append(_close_upstream)
    app.on_cleanup.append(_close_store)
    app.on_cleanup.append(_close_mcp_sessions)
    return app


async def _open_store(app: web.Application) -> None:
    """An unreachable store is not fatal: stateless requests keep working (requests needing it get 503)."""
    stored = STATE.get(app).stored
    try:
        await stored.store.open()
    except StoreUnavailable as exc:
        stored.down_since = time.monotonic()
        get_logger().warning("store.unavailable", store=display_url(stored.store.url), error=exc.detail,
                             note="stateless requests (store: false) keep working")


async def _start_background(app: web.Application) -> None:
    await STATE.get(app).background.open()


async def _stop_background(app: web.Application) -> None:
    await STATE.get(app).background.close(_STOP_FLUSH)


async def _close_store(app: web.Application) -> None:
    await STATE.get(app).stored.store.close()


async def _close_mcp_sessions(app: web.Application) -> None:
    await STATE.get(app).mcp_sessions.close()


async def _start_upstream(app: web.Application) -> None:
    await STATE.get(app).routing.start()


async def _close_upstream(app: web.Application) -> None:
    state = STATE.get(app)
    await state.keepalive.close()
    if state.trimmer is not None:
        state.trimmer.close()
    await state.routing.close()


async def _drain(app: web.Application) -> None:
    """Let running streams finish within the grace period, then end the rest with response.failed."""
    state = STATE.get(app)
    state.shutting_down = True
    log = get_logger()
    if state.runs:
        log.info("shutdown.draining", streams=state.active, grace_s=state.config.server.shutdown_grace)
    deadline = time.monotonic() + state.config.server.shutdown_grace
    while state.runs and time.monotonic() < deadline:
        await asyncio.sleep(_DRAIN_POLL)
    if not state.runs:
        return
    log.warning("shutdown.stopping_streams", streams=state.active)
    for run in list(state.runs):
        run.stop("server_shutting_down", "The gateway is shutting down; retry the request.")
    deadline = time.monotonic() + _STOP_FLUSH
    while state.runs and time.monotonic() < deadline:
        await asyncio.sleep(_DRAIN_POLL)
