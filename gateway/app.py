"""The aiohttp application: routes, middleware, the upstream session's lifecycle, draining on shutdown."""
from __future__ import annotations

import asyncio
import dataclasses
import time

from aiohttp import web

from .config import Config
from .event_stream import KeepAlive
from .log import get_logger
from .routes import envelope_middleware, routes
from .state import STATE, AppState
from .upstream import UpstreamClient

_DRAIN_POLL = 0.05
# After the grace period, stopped streams get this long to write their response.failed.
_STOP_FLUSH = 5.0


def create_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[envelope_middleware], client_max_size=config.server.max_body_bytes)
    debug = config.server.log_level == "debug"
    # Debug logs show every chunk and event as parsed JSON: the fast path would only show them framed.
    upstream = dataclasses.replace(config.upstream, fast_path=False) if debug else config.upstream
    state = AppState(config=config, upstream=UpstreamClient(upstream),
                     keepalive=KeepAlive(config.server.keepalive_interval), debug=debug)
    app[STATE.key] = state
    app.add_routes(routes)
    app.on_startup.append(_start_upstream)
    app.on_shutdown.append(_drain)
    app.on_cleanup.append(_close_upstream)
    return app


async def _start_upstream(app: web.Application) -> None:
    await STATE.get(app).upstream.start()


async def _close_upstream(app: web.Application) -> None:
    state = STATE.get(app)
    await state.keepalive.close()
    await state.upstream.close()


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
