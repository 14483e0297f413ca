"""A circuit breaker per upstream: after N failures in a row, skip it for T seconds, then probe once."""
from __future__ import annotations

import time

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class Breaker:
    """Closed → (N consecutive failures) → open → (cooldown over) → one probe → closed or open again.

    Only the outcome of opening a request (connection, status) counts; what happens after the
    first byte is the stream's business. A probe that ends without an outcome (the client left,
    a timeout cancelled it) gives its slot back so the next request probes instead.
    """

    __slots__ = ("failures", "cooldown", "consecutive", "opened_at", "probing", "opened_total")

    def __init__(self, failures: int, cooldown: float) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self.consecutive = 0
        self.opened_at: float | None = None
        self.probing = False
        self.opened_total = 0

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return CLOSED
        return HALF_OPEN if time.monotonic() >= self.opened_at + self.cooldown else OPEN

    @property
    def retry_after(self) -> float:
        """Seconds until a probe may go (0 when closed)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.cooldown - time.monotonic())

    def available(self) -> bool:
        """Whether a request could go now (without taking the probe slot)."""
        state = self.state
        return state == CLOSED or (state == HALF_OPEN and not self.probing)

    def acquire(self) -> bool:
        """Take the right to send one request; in half-open state only one at a time gets it."""
        if not self.available():
            return False
        if self.opened_at is not None:
            self.probing = True
        return True

    def succeeded(self) -> None:
        self.consecutive = 0
        self.opened_at = None
        self.probing = False

    def failed(self) -> None:
        self.consecutive += 1
        if self.probing or self.consecutive >= self.failures:
            if self.opened_at is None or self.probing:
                self.opened_total += 1
            self.opened_at = time.monotonic()
        self.probing = False

    def abandoned(self) -> None:
        self.probing = False
