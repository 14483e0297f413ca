"""`gateway tail`: the gateway's JSON log lines as one readable line per request.

    journalctl -u gateway -o cat -f | gateway tail --failed
    gateway tail gateway.log --request-id req_… # that request, with its debug-level event lines

Each `response.finished` line becomes: time, request id, model, upstream, status, time to first
token, tokens in→out, duration (and the capture file, when there is one). Failures stand out
with their error code and message. Colour only when the output is a terminal (and NO_COLOR unset).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

import orjson

from .cli_io import open_text

RED, YELLOW, DIM, BOLD, RESET = "\033[31m", "\033[33m", "\033[2m", "\033[1m", "\033[0m"
# Lines of one request that --request-id shows besides its summary.
DETAIL_EVENTS = frozenset({"upstream.chunk", "response.event", "response.warning", "pipeline.crashed",
                           "request.crashed"})


def records(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects among the lines; anything else (console output, tracebacks) is skipped."""
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            yield record


def failed(record: dict[str, Any]) -> bool:
    status = record.get("http_status")
    return bool(record.get("error_code")) or record.get("status") == "failed" or \
        (isinstance(status, int) and status >= 400)


def _clock(record: dict[str, Any]) -> str:
    stamp = str(record.get("timestamp") or "")
    return stamp[:23].replace("T", " ") if stamp else "-"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}ms" if value >= 10 else f"{value:.1f}ms"


class Printer:
    def __init__(self, out: TextIO, colour: bool) -> None:
        self.out = out
        self.colour = colour

    def paint(self, text: str, *styles: str) -> str:
        return "".join(styles) + text + RESET if self.colour and styles else text

    def summary(self, record: dict[str, Any]) -> str:
        status = record.get("status") or f"http {record.get('http_status')}"
        tokens = f"{record.get('input_tokens') if record.get('input_tokens') is not None else '-'}→" \
                 f"{record.get('output_tokens') if record.get('output_tokens') is not None else '-'} tok"
        fields = [self.paint(_clock(record), DIM), self.paint(str(record.get("request_id")), BOLD),
                  str(record.get("model") or "-"), str(record.get("upstream") or "-"), status,
                  f"ttft {_ms(record.get('ttft_ms'))}", tokens, _ms(record.get("duration_ms"))]
        if record.get("client_disconnected"):
            fields.append("client gone")
        if record.get("capture"):
            fields.append(f"capture {record['capture']}")
        line = "  ".join(fields)
        if failed(record):
            problem = f"FAILED {record.get('error_code') or record.get('http_status')}: " \
                      f"{record.get('error_message') or ''}".rstrip(": ")
            return self.paint(f"{line}  {problem}", RED, BOLD)
        if record.get("status") == "incomplete":
            return self.paint(line, YELLOW)
        return line

    def detail(self, record: dict[str, Any]) -> str:
        event = record.get("event")
        if event == "response.event":
            data = record.get("data") or {}
            shown = {k: v for k, v in data.items() if k in ("delta", "text", "arguments", "output_index", "item")}
            body = f"{data.get('sequence_number')} {data.get('type')} {_compact(shown)}"
        elif event == "upstream.chunk":
            body = _compact(record.get("chunk"))
        elif event == "response.warning":
            body = self.paint(str(record.get("warning")), YELLOW)
        else:
            body = self.paint(_compact({k: v for k, v in record.items() if k not in ("timestamp", "request_id")}),
                              RED)
        return f"  {self.paint(_clock(record), DIM)}  {event:<16} {body}"


def _compact(value: Any, limit: int = 200) -> str:
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= limit else text[:limit] + "…"


def tail(lines: Iterable[str], out: TextIO, *, only_failed: bool = False, model: str | None = None,
         request_id: str | None = None, colour: bool = False) -> int:
    """Print the selected requests; returns how many summary lines were printed."""
    printer = Printer(out, colour)
    shown = 0
    for record in records(lines):
        event = record.get("event")
        if request_id is not None and record.get("request_id") != request_id:
            continue
        if event == "response.finished":
            if (only_failed and not failed(record)) or (model is not None and record.get("model") != model):
                continue
            out.write(printer.summary(record) + "\n")
            shown += 1
        elif request_id is not None and event in DETAIL_EVENTS:
            out.write(printer.detail(record) + "\n")
        else:
            continue
        out.flush()
    return shown


def register(commands: Any) -> None:
    parser = commands.add_parser("tail", help="print the gateway's JSON log as one readable line per request",
                                 description="Read JSON log lines from FILE or stdin (e.g. `journalctl -u gateway "
                                 "-o cat -f | gateway tail`) and print one line per request.")
    parser.add_argument("file", nargs="?", help="a log file (default, or -: stdin)")
    parser.add_argument("--failed", action="store_true", help="only failed requests")
    parser.add_argument("--model", help="only requests for this model")
    parser.add_argument("--request-id", help="only this request, with its debug-level event lines")
    parser.set_defaults(run=run_tail)


def run_tail(args: argparse.Namespace) -> int:
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    source = open_text(args.file)
    try:
        tail(iter(source.readline, ""), sys.stdout, only_failed=args.failed, model=args.model,
             request_id=args.request_id, colour=colour)
    except KeyboardInterrupt:
        pass
    finally:
        if source is not sys.stdin:
            source.close()
    return 0
