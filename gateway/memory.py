"""Giving freed memory back to the system after large or bursty streams (glibc's `malloc_trim`).

A stream with large pieces (a 1 MB upstream event, the final Response of a long answer) makes
CPython allocate large buffers with malloc. glibc keeps what is freed inside its heaps for reuse,
and after a large mmap'ed block is freed it raises its mmap threshold (up to 32 MB), so the next
large buffers come from the heap too. After a burst of such streams the heap is mostly free but
stays resident: measured with bench/memory.py, RSS went from 56 MB idle to 125 MB after 2,400
hostile streams and stayed there over a second burst; mallinfo2 showed a heap of about 80 MB with
10.6 MB in use, as when idle. `malloc_trim(0)` hands those free pages back (madvise), in every arena.

It walks every heap, so it runs only off the hot path: once the gateway has been quiet for
`QUIET_DELAY` seconds (no run in flight), or after a run that held a large buffer ended, and at
most once per `MIN_INTERVAL` seconds. Where the C library is not glibc there is nothing to call
and `Trimmer` does nothing.
"""
from __future__ import annotations

import asyncio
import ctypes
import time
from collections.abc import Callable

from .log import get_logger

# No run in flight for this long: a burst's last streams end close together, so wait for all of them.
QUIET_DELAY = 1.0
# A trim walks every malloc heap and blocks the loop meanwhile (7-9 ms to hand back about 70 MB here):
# under load, at most one per this many seconds.
MIN_INTERVAL = 10.0
# A run whose upstream decoder held an event (or line) at least this large asks for a trim when it
# ends, even while other runs go on (a busy gateway is never quiet).
LARGE_BUFFER = 256 * 1024


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where the C library has none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the symbols already loaded into this process
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class Trimmer:
    """Schedules `malloc_trim(0)` when runs end: after quiet, or after a large buffer, rate-limited."""

    __slots__ = ("_trim", "_active", "_timer", "_last", "_large", "quiet_delay", "min_interval", "trims")

    def __init__(self, active: Callable[[], int], trim: Callable[[int], int] | None = None, *,
                 quiet_delay: float = QUIET_DELAY, min_interval: float = MIN_INTERVAL) -> None:
        self._trim = trim
        self._active = active  # runs in flight now
        self._timer: asyncio.TimerHandle | None = None
        self._last = float("-inf")
        self._large = False  # a run that held a large buffer ended since the last trim
        self.quiet_delay = quiet_delay
        self.min_interval = min_interval
        self.trims = 0

    def ended(self, held: int) -> None:
        """A run ended, having held at most `held` characters of one upstream event: arm a trim if it pays.

        Quiet (no run left): in `quiet_delay`, since a trim then delays no one. After a large buffer
        under load: also no sooner than `min_interval` after the last trim.
        """
        if self._trim is None:
            return
        large = held >= LARGE_BUFFER
        quiet = not self._active()
        if not (large or quiet):
            return
        self._large |= large
        loop = asyncio.get_running_loop()
        at = loop.time() + self.quiet_delay
        if not quiet:
            at = max(at, self._last + self.min_interval)
        if self._timer is not None:
            if self._timer.when() <= at:
                return
            self._timer.cancel()
        self._timer = loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        if self._active():  # armed for a quiet moment that did not last
            if not self._large:
                return  # the next quiet moment arms it again
            if loop.time() < self._last + self.min_interval:
                self._timer = loop.call_at(self._last + self.min_interval, self._fire)
                return
        assert self._trim is not None
        self._large = False
        self._last = loop.time()
        started = time.perf_counter()
        self._trim(0)
        self.trims += 1
        get_logger().debug("memory.trimmed", ms=round((time.perf_counter() - started) * 1000, 2))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
