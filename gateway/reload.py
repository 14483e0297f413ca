"""SIGHUP: re-read the configuration; new requests use the new routes and keys, running ones finish as they are.

A bad new configuration is refused with one log line and the running one stays in force.
`server.*` settings (listen address, logging, limits fixed at startup) need a restart.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

from aiohttp import web

from .config import Config
from .errors import ConfigError
from .keys import KeyRing
from .log import get_logger
from .routing import RoutingTable
from .state import STATE


async def reload_config(app: web.Application, load: Callable[[], Config],
                        on_loaded: Callable[[Config], None] | None = None) -> bool:
    state = STATE.get(app)
    log = get_logger()
    try:
        config = load()
    except ConfigError as exc:
        log.error("config.reload_refused", error=str(exc), note="the running configuration stays in force")
        return False
    if config.server != state.config.server:
        log.warning("config.reload_server_ignored", note="server.* settings take effect after a restart")
        config = dataclasses.replace(config, server=state.config.server)
    if on_loaded is not None:
        on_loaded(config)  # e.g. log scrubbing learns the new secrets before any request uses them
    table = RoutingTable(config, previous=state.routing)
    await table.start()
    old = state.routing
    state.config, state.routing, state.keys = config, table, KeyRing(config.auth)
    old.retire(table)
    log.info("config.reloaded", upstreams=list(table.upstreams), keys=len(config.auth.keys))
    return True
