"""MCP sessions kept open across calls and responses, per server and headers (`tools.mcp.idle_timeout`).

The `mcp` package's sessions are anyio task groups, which must be left by the task that entered them,
while calls come from many tasks (parallel calls, responses). So each pooled session is owned by a task
of its own that enters the client, waits until the session is closed, and leaves it; callers use the
entered client concurrently (MCP multiplexes requests on one session). A session closes after
`idle_timeout` without a call, when a caller saw its transport fail, when the pool is full and it is
the one idle longest, and on shutdown. A cancelled caller only stops waiting: the session stays usable.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from mcp import Client

from ..log import get_logger

Key = tuple[str, str]   # (url, fingerprint of the headers): the headers themselves are never kept as a key
Opener = Callable[[], AbstractAsyncContextManager[Client]]


def pool_key(url: str, headers: dict[str, str]) -> Key:
    digest = hashlib.sha256()
    for name, value in sorted((name.lower(), value) for name, value in headers.items()):
        digest.update(f"{name}\0{value}\0".encode())
    return url, digest.hexdigest()


class Session:
    """One open MCP session and the task that owns it."""

    def __init__(self, pool: SessionPool | None, key: Key, opener: Opener) -> None:
        self.pool = pool          # None: a session of its own (the pool was full), closed after its call
        self.key = key
        self.active = 0           # calls using it now
        self.uses = 0             # calls that used it, ever: a reused session may have gone stale
        self.closing = asyncio.Event()
        self.ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        self.ready.add_done_callback(_retrieved)
        self._timer: asyncio.TimerHandle | None = None
        self.task = asyncio.create_task(self._own(opener))

    async def _own(self, opener: Opener) -> None:
        try:
            async with opener() as client:
                self.ready.set_result(client)
                await self.closing.wait()
        except Exception as exc:  # opening failed, or the transport broke: the next call opens anew
            if not self.ready.done():
                self.ready.set_exception(exc)
            get_logger().debug("mcp.session_ended", error=type(exc).__name__)  # the type only: texts may carry URLs
        finally:
            self.close()
            if not self.ready.done():
                self.ready.set_exception(ConnectionError("the MCP session closed"))

    def acquire(self) -> None:
        self.active += 1
        self.uses += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def release(self, idle_timeout: float) -> None:
        self.active -= 1
        if self.active == 0 and not self.closing.is_set():
            if self.pool is None:
                self.close()
            else:
                self._timer = asyncio.get_running_loop().call_later(idle_timeout, self.close)

    def close(self) -> None:
        """End the session (its owner leaves it); calls still using it fail."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.closing.set()
        if self.pool is not None:
            self.pool.forget(self)


class SessionPool:
    """At most `size` open sessions, keyed by `pool_key`; and which transport each server answered on."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self.sessions: dict[Key, Session] = {}   # least recently used first
        self.transports: dict[str, str] = {}     # url → "sse" for a server that answered only there
        self.closed = False

    @contextlib.asynccontextmanager
    async def client(self, key: Key, opener: Opener, idle_timeout: float) -> AsyncIterator[tuple[Session, Client]]:
        """An entered client for `key`: a pooled one, or one opened by `opener` now."""
        session = self.sessions.pop(key, None)
        if session is None or session.closing.is_set():
            session = self._open(key, opener)
        else:
            self.sessions[key] = session  # now the most recently used
        session.acquire()
        try:
            # Shielded: a cancelled caller must not cancel the opening that other callers wait for.
            yield session, await asyncio.shield(session.ready)
        finally:
            session.release(idle_timeout)

    def _open(self, key: Key, opener: Opener) -> Session:
        if self.closed:
            return Session(None, key, opener)
        for stale in [s for s in self.sessions.values() if s.active == 0][:max(0, len(self.sessions) + 1 - self.size)]:
            stale.close()  # the pool is full: the sessions idle longest make room
        if len(self.sessions) >= self.size:
            return Session(None, key, opener)  # every pooled session is busy: this one closes after its call
        session = self.sessions[key] = Session(self, key, opener)
        return session

    def remember(self, url: str, transport: str) -> None:
        self.transports.pop(url, None)
        self.transports[url] = transport
        if len(self.transports) > 4 * self.size:
            del self.transports[next(iter(self.transports))]

    def forget(self, session: Session) -> None:
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]

    async def close(self, timeout: float = 5.0) -> None:
        """Close every session (app shutdown); owners still closing after `timeout` are cancelled."""
        self.closed = True
        sessions = list(self.sessions.values())
        for session in sessions:
            session.close()
        tasks = [session.task for session in sessions]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A failed opening nobody waits for any more (its callers were cancelled) is no 'never retrieved' warning."""
    if not future.cancelled():
        future.exception()
