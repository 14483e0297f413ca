"""The scripted upstream and the gateway in a background thread, for synchronous clients."""
from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web

from gateway.app import create_app

from .conftest import gateway_config
from .scripted_upstream import ScriptedUpstream


class LiveGateway:
    """Real servers on 127.0.0.1 with their own event loop; `url` is the gateway's base URL."""

    def __init__(self, **server: Any) -> None:
        self.upstream = ScriptedUpstream()
        self._server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runners: list[web.AppRunner] = []
        self.url = ""

    def __enter__(self) -> LiveGateway:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _serve(self, app: web.Application) -> str:
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    async def _start(self) -> None:
        upstream_url = await self._serve(self.upstream.app) + "/v1"
        self.url = await self._serve(create_app(gateway_config(upstream_url, **self._server)))

    async def _stop(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
