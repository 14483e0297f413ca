"""One sink for the pipeline that feeds the client's sink and, after it, debugging observers.

Observers (capture, inspector) get exactly what the client was sent: a batch the client's sink
failed to write is not passed on. Until the pipeline fans out to several sinks itself, this is
the seam; the route keeps the client's sink for its own checks.
"""
from __future__ import annotations

from typing import Any, Protocol


class Observer(Protocol):
    async def start(self, events: list[dict[str, Any]]) -> None: ...

    async def send(self, events: list[dict[str, Any]]) -> None: ...

    async def close(self) -> None: ...


class Tee:
    __slots__ = ("primary", "observers")

    def __init__(self, primary: Any, observers: list[Observer]) -> None:
        self.primary = primary
        self.observers = observers

    @property
    def streaming(self) -> bool:
        return bool(self.primary.streaming)

    @property
    def started(self) -> bool:
        return bool(self.primary.started)

    async def start(self, events: list[dict[str, Any]]) -> None:
        await self.primary.start(events)
        for observer in self.observers:
            await observer.start(events)

    async def send(self, events: list[dict[str, Any]]) -> None:
        await self.primary.send(events)
        for observer in self.observers:
            await observer.send(events)

    async def close(self) -> None:
        await self.primary.close()
        for observer in self.observers:
            await observer.close()


def tee(primary: Any, *observers: Observer | None) -> Any:
    """`primary` itself when no observer is present (the hot path stays as it was)."""
    present = [o for o in observers if o is not None]
    return Tee(primary, present) if present else primary
