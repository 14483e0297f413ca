"""Per-upstream health: a circuit breaker that opens on a failure ratio, and rate-limit pauses.

The breaker only ever steers requests away from an upstream while another one can take them: the
routing (`RoutedRequest.first_answer`) sends anyway when every upstream of a route is open or
paused (panic mode, as Envoy's panic threshold), so a lone upstream is never refused by it.
"""
from __future__ import annotations

import time
from collections import deque

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# The sliding window is kept as counts per slice of time: cheap at any request rate.
_SLICES = 10


class Breaker:
    """Closed → (a failure ratio over a window, with enough failures) → open → (cooldown) → one probe.

    Only the outcome of opening a request (connection, status) counts; what happens after the
    first byte is the stream's business. A 429 is no failure: the upstream is well and asks for
    time, so `rate_limited()` pauses it for its `Retry-After` instead. A probe that ends without
    an outcome (the client left, a timeout cancelled it) gives its slot back.
    """

    __slots__ = ("failures", "ratio", "window", "cooldown", "opened_at", "probing", "opened_total", "paused_until",
                 "rate_limits", "_slices")

    def __init__(self, failures: int, ratio: float, window: float, cooldown: float) -> None:
        self.failures = failures  # the least evidence: failures within the window
        self.ratio = ratio        # ... that are at least this share of the window's outcomes
        self.window = window
        self.cooldown = cooldown
        self.opened_at: float | None = None
        self.probing = False
        self.opened_total = 0
        self.paused_until = 0.0   # a 429's Retry-After: skipped until then where another upstream exists
        self.rate_limits = 0      # 429s that paused this upstream
        self._slices: deque[list[float]] = deque()  # [start, successes, failures], oldest first

    @property
    def settings(self) -> tuple[int, float, float, float]:
        return self.failures, self.ratio, self.window, self.cooldown

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return CLOSED
        return HALF_OPEN if time.monotonic() >= self.opened_at + self.cooldown else OPEN

    @property
    def paused_for(self) -> float:
        """Seconds the last 429's Retry-After still keeps this upstream aside."""
        return max(0.0, self.paused_until - time.monotonic())

    def available(self) -> bool:
        """Whether a request could go now (without taking the probe slot)."""
        if self.paused_until and time.monotonic() < self.paused_until:
            return False
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
        if self.opened_at is not None:
            self.opened_at = None  # a probe, or a panic request, found it well
            self._slices.clear()
        self.probing = False
        self._count(1, 0)

    def failed(self) -> None:
        if self.opened_at is not None:
            if self.probing:
                self.opened_total += 1
            self.opened_at = time.monotonic()  # a failed probe (or panic request): another cooldown
        else:
            successes, failures = self._count(0, 1)
            if failures >= self.failures and failures >= self.ratio * (successes + failures):
                self.opened_at = time.monotonic()
                self.opened_total += 1
                self._slices.clear()
        self.probing = False

    def rate_limited(self, seconds: float) -> None:
        """The upstream answered 429: no request goes there for `seconds` while another upstream can take it."""
        self.rate_limits += 1
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)
        self.probing = False

    def abandoned(self) -> None:
        self.probing = False

    def _count(self, successes: int, failures: int) -> tuple[int, int]:
        """Add an outcome to the window; the window's totals (successes, failures) after it."""
        now = time.monotonic()
        slices = self._slices
        while slices and slices[0][0] <= now - self.window:
            slices.popleft()
        if not slices or now - slices[-1][0] >= self.window / _SLICES:
            slices.append([now, 0, 0])
        last = slices[-1]
        last[1] += successes
        last[2] += failures
        return int(sum(s[1] for s in slices)), int(sum(s[2] for s in slices))
