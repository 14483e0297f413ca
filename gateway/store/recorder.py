"""The store recorder: one more sink on the pipeline's event sequence.

Placed ahead of the client's sink in the pipeline's `Tee`, it sees every batch first, so the finished
response is in the store before its terminal event leaves the gateway: a client that sees
`response.completed` and continues at once finds it. If the write fails, the terminal event
becomes `response.failed` (`store_unavailable`): the client asked for state that was not kept.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import GatewayError
from ..pipeline import Observer
from ..stream_processor import TERMINAL_TYPES
from .service import StateService, Turn

# The code a cancelled background run is stopped with; its response ends with status `cancelled`.
CANCELLED = "response_cancelled"


class StoreRecorder(Observer):
    __slots__ = ("service", "turn")

    def __init__(self, service: StateService, turn: Turn) -> None:
        self.service = service
        self.turn = turn

    async def send(self, events: Sequence[Any]) -> None:
        if events and events[-1]["type"] in TERMINAL_TYPES:
            terminal = events[-1]
            mark_cancelled(terminal["response"])
            try:
                await self.service.record(self.turn, terminal["response"])
            except GatewayError as exc:
                _fail_in_place(terminal, exc)

    def ready(self) -> bool:
        return True

    def take(self, events: Sequence[Any]) -> None:
        pass  # deltas: the record is written from the terminal event, in `send`


def mark_cancelled(response: dict[str, Any]) -> None:
    """A response failed with `CANCELLED` was cancelled (POST …/cancel): status `cancelled`, no error.

    No `response.cancelled` stream event exists, so its stream still ends with `response.failed`.
    """
    if response["status"] == "failed" and (response.get("error") or {}).get("code") == CANCELLED:
        response.update(status="cancelled", completed_at=None, error=None)


def _fail_in_place(terminal: dict[str, Any], exc: GatewayError) -> None:
    """Turn the terminal event into response.failed; in place, since the stream processor's
    final response (the non-streaming answer, the log line) is this same object."""
    terminal["type"] = "response.failed"
    response = terminal["response"]
    response["status"] = "failed"
    response["incomplete_details"] = None
    response["error"] = {"code": exc.code, "message": f"{exc.message} The response was not stored."}
