"""The live inspector's model (`/debug`): streams open now and requests that just ended.

Off by default (`debug.inspector`); when off nothing here exists and requests pay nothing.
When on, each request gets a `Watch`: an observer of the events its client was sent
(one more sink after the client's in the pipeline's Tee), whose `send` costs one list append per batch while nobody
watches. A page that follows a request gets a `Feed` of the batches as they arrive. When the
request ends its `Watch` keeps a summary and its (bounded) events in a ring of recent requests.
HTTP lives in gateway/inspector_routes.py.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from .pipeline import Run, SyncObserver
from .sse import encode_events

Batch = Sequence[Any]  # a list, or a FastBatch or Joined (see pipeline.py)
# Batches kept per request (one batch is usually one upstream read); later ones are counted only.
MAX_BATCHES = 2000
# Bytes (as SSE) of its batches a request keeps once it ended: without it, a stream of 1 MB events
# would keep up to MAX_BATCHES of them for each of the `debug.inspector_recent` requests.
MAX_KEPT_BYTES = 1024 * 1024
# Batches a slow page may fall behind before its feed is ended.
FEED_BACKLOG = 1000
_DELTAS = frozenset({"response.output_text.delta", "response.refusal.delta", "response.reasoning_text.delta",
                     "response.reasoning_summary_text.delta", "response.function_call_arguments.delta",
                     "response.custom_tool_call_input.delta"})


class Feed:
    """One page following one request: batches wait here until its SSE handler writes them."""

    __slots__ = ("pending", "wake", "lagged", "ended")

    def __init__(self) -> None:
        self.pending: deque[Batch] = deque()
        self.wake = asyncio.Event()
        self.lagged = False
        self.ended = False

    def push(self, batch: Batch) -> None:
        if len(self.pending) >= FEED_BACKLOG:
            self.lagged = True
        else:
            self.pending.append(batch)
        self.wake.set()

    def end(self) -> None:
        self.ended = True
        self.wake.set()

    async def next(self, timeout: float) -> Batch | None:
        """The next batch; None once the request ended (or the page lagged), or after `timeout` idle seconds."""
        if not self.pending and not (self.ended or self.lagged):
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except TimeoutError:
                return None
        return self.pending.popleft() if self.pending and not self.lagged else None

    @property
    def done(self) -> bool:
        return (self.ended and not self.pending) or self.lagged


class Watch(SyncObserver):
    """One request as the inspector sees it: a sink after the client's (pipeline.py's contract), then a summary."""

    __slots__ = ("key", "run", "upstream", "started_wall", "batches", "dropped", "feeds", "summary")

    def __init__(self, run: Run, upstream: str) -> None:
        self.key = run.stream.response_id  # unique, unlike a client's X-Request-ID
        self.run: Run | None = run
        self.upstream = upstream
        self.started_wall = time.time()
        self.batches: list[Batch] = []
        self.dropped = 0
        self.feeds: list[Feed] = []
        self.summary: dict[str, Any] | None = None  # set when the request ended

    def take(self, events: Batch) -> None:
        if len(self.batches) < MAX_BATCHES:
            self.batches.append(events)
        else:
            self.dropped += 1
        if self.feeds:
            for feed in self.feeds:
                feed.push(events)

    def follow(self) -> tuple[list[Batch], Feed | None]:
        """The batches so far and, while the request runs, a feed of the next ones (no gap between)."""
        if self.summary is not None:
            return list(self.batches), None
        feed = Feed()
        self.feeds.append(feed)
        return list(self.batches), feed

    def unfollow(self, feed: Feed | None) -> None:
        if feed in self.feeds:
            self.feeds.remove(feed)

    def describe(self) -> dict[str, Any]:
        """A row of the page's lists: the summary once ended, else the live figures."""
        if self.summary is not None:
            return self.summary
        assert self.run is not None
        return {**self._identity(self.run), "state": "open", "tokens": self._deltas(),
                "age_s": round(time.monotonic() - self.run.started_at, 1)}

    def end(self, outcome: dict[str, Any], capture: str | None) -> None:
        """The request ended: keep its summary, let go of the run, end the feeds."""
        run = self.run
        assert run is not None
        self.upstream = outcome.get("upstream") or self.upstream  # the one that answered, after a failover
        self._keep_within(MAX_KEPT_BYTES)
        terminal = run.stream.terminal
        usage = (terminal["response"].get("usage") if terminal else None) or {}
        failed = bool(outcome.get("error_code")) or outcome.get("status") == "failed"
        self.summary = {**self._identity(run), "state": "failed" if failed else "finished",
                        "status": outcome.get("status"), "http_status": outcome.get("http_status"),
                        "error_code": outcome.get("error_code"), "error_message": outcome.get("error_message"),
                        "client_disconnected": outcome.get("client_disconnected"),
                        "tokens": usage.get("output_tokens") or self._deltas(), "input_tokens": usage.get("input_tokens"),
                        "duration_ms": round((time.monotonic() - run.started_at) * 1000, 1), "capture": capture}
        self.run = None
        for feed in self.feeds:
            feed.end()
        self.feeds = []

    def _keep_within(self, budget: int) -> None:
        """Keep the first batches that fit in `budget` bytes, and the last (the terminal) if it fits too;
        the rest are counted as dropped. Measured once, when the request ended (inspector only)."""
        kept: list[Batch] = []
        batches = self.batches
        for index, batch in enumerate(batches):
            size = len(encode_events(batch))
            if size > budget:
                last = batches[-1]
                if index < len(batches) - 1 and len(encode_events(last)) <= budget:
                    kept.append(last)
                self.dropped += len(batches) - len(kept)
                self.batches = kept
                return
            budget -= size
            kept.append(batch)

    def _identity(self, run: Run) -> dict[str, Any]:
        return {"id": self.key, "request_id": run.request_id, "model": run.model, "upstream": self.upstream,
                "stream": run.streaming, "started_at": self.started_wall, "ttft_ms": run.ttft_ms,
                "events": sum(map(len, self.batches)), "events_dropped": self.dropped}

    def _deltas(self) -> int:
        """Tokens so far, as the model's deltas counted (computed when asked, never per batch)."""
        return sum(1 for batch in self.batches for event in batch if event.get("type") in _DELTAS)


class Inspector:
    """The open requests and a bounded ring of recent ones (`debug.inspector_recent`)."""

    def __init__(self, recent: int) -> None:
        self.open: dict[str, Watch] = {}
        self.recent: deque[Watch] = deque(maxlen=recent)

    def watch(self, run: Run, upstream: str) -> Watch:
        watch = Watch(run, upstream)
        self.open[watch.key] = watch
        return watch

    def end(self, watch: Watch, outcome: dict[str, Any], capture: str | None) -> None:
        self.open.pop(watch.key, None)
        watch.end(outcome, capture)
        self.recent.appendleft(watch)

    def find(self, key: str) -> Watch | None:
        return self.open.get(key) or next((w for w in self.recent if w.key == key), None)

    def snapshot(self) -> dict[str, Any]:
        """What the page lists: open streams (oldest first) and recent requests (newest first)."""
        return {"open": [w.describe() for w in self.open.values()],
                "recent": [w.describe() for w in self.recent]}
