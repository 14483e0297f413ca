"""Debug capture: one JSON file per request, to replay offline (`gateway replay FILE`).

A file holds the client's request (secrets scrubbed), the upstream request, every raw read of
the upstream's answer with its arrival time, the events the client received, and the outcome.
`debug.capture: failed` keeps the record in memory while the request runs and writes it only
when the request failed; `all` writes every one. Both are bounded: `capture_max_file_bytes` per
file (then the record stops growing and says `truncated`) and `capture_max_dir_bytes` for the
folder (oldest files removed first). Files are written off the event loop.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import random
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .config import Config, UpstreamConfig, parse_config
from .fast_path import plain
from .log import SECRET_KEYS, get_logger
from .pipeline import SyncObserver
from .sse import encode_events

if TYPE_CHECKING:
    from .routing import RoutedRequest

FORMAT = "gateway-capture/1"
# Client headers never written (credentials); everything else is kept for reproduction.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key"})
# Upstream settings that change how a stream is translated (no secrets), kept for replay.
_REPLAY_SETTINGS = ("think_tags", "reasoning_field", "tool_call_id_style", "max_tokens_param", "hosted_tools",
                    "send_reasoning_effort", "send_parallel_tool_calls")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def scrub(value: Any, secrets: Iterable[str]) -> Any:
    """A copy with secret-named keys redacted and known secret strings masked, at any depth."""
    secrets = [s for s in secrets if s and len(s) >= 4]

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            mcp = node.get("type") == "mcp"  # an mcp tool's headers carry the client's credentials
            return {k: "[redacted]" if str(k).lower() in SECRET_KEYS or (mcp and k == "headers") else walk(v)
                    for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str):
            for secret in secrets:
                node = node.replace(secret, "[redacted]")
        return node
    return walk(value)


class CaptureStore:
    """The capture folder and its policy; makes a `Recorder` for each request it keeps."""

    def __init__(self, config: Config) -> None:
        self.config = config.debug
        self.upstream = config.upstream  # for a capture saved without its routing (`save`, routed=None)
        self.secrets = config.secrets    # every upstream's keys
        self.directory = Path(config.debug.capture_dir)

    def recorder(self, request_id: str, headers: Mapping[str, str], body: Any,
                 upstream_body: dict[str, Any]) -> Recorder | None:
        """A recorder for this request, or None when capture is off or the sample skips it."""
        if self.config.capture == "off" or random.random() >= self.config.capture_sample:
            return None
        return Recorder(self, request_id, headers, body, upstream_body)

    def write(self, name: str, document: bytes) -> None:
        """Write one file, then remove the oldest until the folder is within its cap (runs in a thread)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / name
        partial = path.with_suffix(".partial")
        partial.write_bytes(document)
        partial.replace(path)
        files = []
        for entry in self.directory.glob("*.json"):
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue
            files.append((stat.st_mtime_ns, entry.name, stat.st_size, entry))
        total = sum(size for _, _, size, _ in files)
        for _, _, size, entry in sorted(files):
            if total <= self.config.capture_max_dir_bytes or entry == path:
                continue
            entry.unlink(missing_ok=True)
            total -= size


class Recorder(SyncObserver):
    """A sink after the client's: sees the events the client was sent, and the upstream's raw reads (`tap`).

    `save(outcome)` writes the file once the request's outcome is known (after the pipeline's
    `finish`), when the capture policy keeps it.
    """

    def __init__(self, store: CaptureStore, request_id: str, headers: Mapping[str, str], body: Any,
                 upstream_body: dict[str, Any]) -> None:
        self.store = store
        self.request_id = request_id
        self.t0 = time.monotonic()
        self.wall = datetime.datetime.now(datetime.timezone.utc)
        client_token = headers.get("Authorization", "").removeprefix("Bearer ").strip()
        self.secrets = [*store.secrets, client_token]
        self.client = {"headers": {str(k): v for k, v in headers.items() if k.lower() not in _SECRET_HEADERS},
                       "body": body}
        self.upstream_body = upstream_body
        self.reads: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.size = 0
        self.truncated = False

    def _room(self, size: int) -> bool:
        if self.truncated or self.size + size > self.store.config.capture_max_file_bytes:
            self.truncated = True
            return False
        self.size += size
        return True

    def tap(self, data: bytes) -> None:
        if not self._room(len(data)):
            return
        at = round((time.monotonic() - self.t0) * 1000, 3)
        try:
            self.reads.append({"t_ms": at, "text": data.decode("utf-8")})
        except UnicodeDecodeError:  # a read may end inside a character: keep it exact
            self.reads.append({"t_ms": at, "base64": base64.b64encode(data).decode()})

    def take(self, events: Sequence[Any]) -> None:
        # Once truncated, nothing more is kept: skip encoding what would only be measured (1 MB events).
        if events and not self.truncated and self._room(len(encode_events(events))):
            self.events.extend(plain(events))

    async def save(self, outcome: dict[str, Any], routed: RoutedRequest | None = None) -> str | None:
        """Write the file if the policy keeps this request; its name, for the log line.

        `routed` says where the request went: the upstream that answered (after a failover, the
        fallback; when none did, the last one tried) and the one whose options translated it.
        """
        failed = bool(outcome.get("error_code")) or outcome.get("status") == "failed" or \
            (outcome.get("http_status") or 200) >= 400
        if self.store.config.capture == "failed" and not failed:
            return None
        answered, translated = _upstreams(routed, self.store.upstream)
        stamp = self.wall.strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
        name = f"{stamp}_{_UNSAFE_NAME.sub('_', self.request_id)[:80]}.json"
        document = {
            "format": FORMAT, "request_id": self.request_id, "captured_at": self.wall.isoformat(),
            "outcome": outcome, "truncated": self.truncated,
            "client_request": self.client,
            "upstream_request": {"upstream": answered.name, "url": f"{answered.base_url.rstrip('/')}/chat/completions",
                                 "body": self.upstream_body},
            "upstream_settings": {k: getattr(translated, k) for k in _REPLAY_SETTINGS},
            "upstream_reads": self.reads,
            "client_events": self.events,
        }
        data = orjson.dumps(scrub(document, self.secrets), option=orjson.OPT_INDENT_2, default=str)
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.store.write, name, data)
        except OSError as exc:
            get_logger().warning("capture.failed", request_id=self.request_id, error=str(exc))
            return None
        return name


def _upstreams(routed: RoutedRequest | None, default: UpstreamConfig) -> tuple[UpstreamConfig, UpstreamConfig]:
    """(the upstream that answered or was tried last, the one that translated the request)."""
    if routed is None:
        return default, default
    answered = next((t.upstream.config for t in routed.targets if t.upstream.name == routed.upstream_name),
                    routed.config)
    return answered, answered if routed.options is not None else routed.config  # a fallback of another kind


def replay_config(document: dict[str, Any], base: Config | None = None) -> Config:
    """The config a capture's run used, as far as translation goes (for `gateway replay`).

    The settings are checked like a config file's (`ConfigError`): a capture may have been edited.
    """
    base = base or Config()
    given = {k: v for k, v in (document.get("upstream_settings") or {}).items() if k in _REPLAY_SETTINGS}
    checked = parse_config({"upstream": given}).upstream
    settings = {k: getattr(checked, k) for k in given}
    return dataclasses.replace(base, upstream=dataclasses.replace(base.upstream, **settings))
