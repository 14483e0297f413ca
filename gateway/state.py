"""What the running app holds: config, routing table and keys (swapped on reload), metrics, the runs in flight."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .capture import CaptureStore
from .config import Config
from .errors import GatewayError
from .event_stream import KeepAlive
from .inspector import Inspector
from .memory import Trimmer
from .pipeline import Run
from .store.service import StateService
from .tools.mcp_pool import SessionPool

if TYPE_CHECKING:
    from .keys import KeyRing, StreamLimits
    from .metrics import Metrics
    from .routing import RoutingTable

if TYPE_CHECKING:
    from .background import BackgroundRuns


@dataclass
class AppState:
    config: Config
    routing: RoutingTable
    keys: KeyRing
    stream_limits: StreamLimits
    metrics: Metrics
    keepalive: KeepAlive
    stored: StateService
    debug: bool = False
    shutting_down: bool = False
    runs: set[Run] = field(default_factory=set)
    # Open WebSocket connections (gateway/websocket.py). Each holds one stream slot for its life; while
    # it runs a turn, that turn's run is in `runs` and counts instead (`socket_turns` of them).
    sockets: set[Any] = field(default_factory=set)
    socket_turns: int = 0
    capture: CaptureStore | None = None   # debug.capture on
    inspector: Inspector | None = None    # debug.inspector on
    background: BackgroundRuns = field(init=False)  # set by create_app
    trimmer: Trimmer | None = None        # gives freed memory back after bursts (set by create_app)
    mcp_sessions: SessionPool = field(init=False)  # open MCP sessions (gateway/tools), set by create_app

    @property
    def active(self) -> int:
        return len(self.runs) + len(self.sockets) - self.socket_turns

    def refuse_when_shutting_down(self, retry: str = "retry the request") -> None:
        """New work is refused (503) once shutdown began: running streams get the time left."""
        if self.shutting_down:
            raise GatewayError(f"The gateway is shutting down; {retry}.", status=503, code="server_shutting_down",
                               headers={"Retry-After": "1"})

    def run_ended(self, run: Run) -> None:
        """Forget a finished run; the trimmer decides whether the memory it freed should go back now."""
        self.runs.discard(run)
        if self.trimmer is not None:
            self.trimmer.ended(run.upstream.held if run.upstream is not None else 0)


class _StateKey:
    """`STATE.get(app)` reads the AppState; one typed key instead of string lookups."""

    key = web.AppKey("gateway_state", AppState)

    def get(self, app: web.Application) -> AppState:
        return app[self.key]


STATE = _StateKey()
