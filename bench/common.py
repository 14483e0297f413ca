"""Small helpers shared by the benchmark harness: HTTP chunk decoding, /proc readers, stats."""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
LOOPBACK = "127.0.0.1"


class Dechunker:
    """Incremental decoder for HTTP/1.1 `Transfer-Encoding: chunked` bodies."""

    __slots__ = ("_buf", "_left", "finished")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._left = 0  # >0: payload bytes still due; -1: CRLF after payload due; 0: size line due
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        """Return the payload bytes contained in `data`; sets `finished` at the last chunk."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos, end = 0, len(buf)
        while pos < end and not self.finished:
            if self._left > 0:
                take = min(self._left, end - pos)
                out.append(bytes(buf[pos : pos + take]))
                pos += take
                self._left -= take
                if self._left == 0:
                    self._left = -1
            elif self._left == -1:
                if end - pos < 2:
                    break
                pos += 2
                self._left = 0
            else:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
                pos = eol + 2
                if size == 0:
                    self.finished = True  # trailers (normally none) are ignored
                self._left = size
        del buf[:pos]
        return b"".join(out)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of an unsorted list; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered), math.ceil(q / 100.0 * len(ordered))) - 1)
    return ordered[rank]


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (via /proc/PID/task/*/children)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return tree


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """utime+stime of `pid` (and its descendants if `tree`), in seconds, from /proc/PID/stat."""
    total = 0
    for member in process_tree(pid) if tree else [pid]:
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # fields[0] is field 3 (state)
        total += int(fields[11]) + int(fields[12])  # fields 14 (utime) and 15 (stime)
    return total / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` and its descendants, from /proc/PID/statm."""
    total = 0
    for member in process_tree(pid):
        try:
            total += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * PAGE_SIZE
        except OSError:
            continue
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


async def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    """Status code of `GET path` on 127.0.0.1:port, or None when nothing answers."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), timeout)
    except (TimeoutError, OSError):
        return None
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.split()
        return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    except (TimeoutError, OSError):
        return None
    finally:
        writer.close()


async def wait_ready(port: int, path: str, timeout: float, alive: Callable[[], bool]) -> bool:
    """Poll `GET path` until it answers 200, the deadline passes, or `alive()` turns false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        if await http_status(port, path) == 200:
            return True
        await asyncio.sleep(0.1)
    return False


def use_fast_loop() -> str:
    """Install uvloop's event loop policy when available; returns the loop's name."""
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (inherited by children); returns it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard
