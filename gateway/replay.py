"""`gateway replay FILE…`: run a capture's upstream bytes through today's decoder and stream processor.

The events are printed and compared with what the client received when the capture was made
(ids, timestamps and sealed reasoning are normalised: they are fresh on every run). `--check`
also validates the replayed lifecycle. Exit status 1 on a difference or a violation, so a
capture file is a regression test (the suite replays every file under tests/captures/).
"""
from __future__ import annotations

import argparse
import base64
import binascii
import difflib
import sys
from pathlib import Path
from typing import Any

import orjson

from .capture import FORMAT, replay_config
from .check import check_events
from .cli_io import CliError, read_bytes, report_error
from .errors import ConfigError, GatewayError
from .pipeline import response_stream
from .sse import ChunkDecoder
from .stream_processor import ResponseStream
from .translate import translate_request

_ID_KEYS = ("id", "item_id", "call_id")
_CLOCK_KEYS = ("created_at", "completed_at")
# Failure codes the stream processor gives itself; any other failure came from the pipeline's edge
# (timeouts, disconnects, shutdown, crashes) and is re-applied as it happened.
_PROCESSOR_FAILURES = frozenset({"upstream_truncated"})


def load(path: str | Path) -> dict[str, Any]:
    """A capture file, checked enough that replaying it cannot trip over its shape (`CliError` otherwise)."""
    try:
        document = orjson.loads(read_bytes(str(path)))
    except orjson.JSONDecodeError as exc:
        raise CliError(f"{path}: not JSON: {exc}") from None
    problem = _shape_problem(document)
    if problem is not None:
        raise CliError(f"{path}: {problem}")
    return document


def _shape_problem(document: Any) -> str | None:
    """What keeps `document` from being replayed, or None (the fields replay reads, as replay reads them)."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        return f"not a gateway capture ({FORMAT})"
    request, events, reads = (document.get(key) for key in ("client_request", "client_events", "upstream_reads"))
    if not isinstance(request, dict) or "body" not in request:
        return "client_request.body is missing"
    if not isinstance(events, list) or not all(isinstance(e, dict) and isinstance(e.get("response", {}), dict)
                                               for e in events):
        return "client_events is not a list of events"
    if not isinstance(reads, list) or not all(isinstance(r, dict) and isinstance(r.get("text", r.get("base64")), str)
                                              for r in reads):
        return "upstream_reads is not a list of {text} or {base64} reads"
    for key in ("outcome", "upstream_settings"):
        if not isinstance(document.get(key) or {}, dict):
            return f"{key} is not a mapping"
    return None


def raw_reads(document: dict[str, Any]) -> list[bytes]:
    try:
        return [read["text"].encode() if "text" in read else base64.b64decode(read["base64"], validate=True)
                for read in document["upstream_reads"]]
    except binascii.Error as exc:
        raise CliError(f"an upstream read is not base64: {exc}") from None


def _stream_for(document: dict[str, Any]) -> ResponseStream:
    """The processor the captured run used: today's translation of the captured client request."""
    received = document["client_events"]
    response = received[0].get("response", {}) if received else {}
    chat = translate_request(document["client_request"]["body"], replay_config(document).upstream)
    return response_stream(chat, response.get("id") or "resp_replay", created_at=response.get("created_at"))


def replay_events(document: dict[str, Any]) -> list[dict[str, Any]]:
    """What today's code sends the client for the captured upstream answer."""
    stream = _stream_for(document)
    events = stream.start()
    reads = raw_reads(document)
    whole = _whole_json(reads)
    if whole is not None:  # the upstream ignored stream:true and answered one JSON body
        return events + stream.feed(whole) + stream.finish(True)
    decoder = ChunkDecoder()
    for data in reads:
        for chunk in decoder.feed(data):
            events += stream.feed(chunk)
        if stream.terminal is not None or decoder.done:
            break
    if stream.terminal is None and not decoder.done:
        for chunk in decoder.close():
            events += stream.feed(chunk)
    if stream.terminal is None:
        failure = _edge_failure(document)
        events += stream.fail(*failure) if failure else stream.finish(decoder.done)
    return events


def _whole_json(reads: list[bytes]) -> Any:
    body = b"".join(reads).strip()
    if not body.startswith(b"{"):
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _edge_failure(document: dict[str, Any]) -> tuple[str, str] | None:
    received = document["client_events"]
    if not received or received[-1].get("type") != "response.failed":
        return None
    error = received[-1].get("response", {}).get("error")
    if not isinstance(error, dict):
        error = {}
    if error.get("code") in _PROCESSOR_FAILURES:
        return None
    return error.get("code") or "upstream_error", error.get("message") or ""


def normalised(events: list[dict[str, Any]]) -> list[str]:
    """Events as sorted JSON lines with run-specific values replaced by stable placeholders."""
    ids: dict[str, str] = {}

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key in _ID_KEYS and isinstance(value, str):
                    out[key] = ids.setdefault(value, f"<id{len(ids) + 1}>")
                elif key in _CLOCK_KEYS and isinstance(value, int):
                    out[key] = "<time>"
                elif key == "encrypted_content" and value:
                    out[key] = "<sealed>"
                else:
                    out[key] = walk(value)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node
    return [orjson.dumps(walk(e), option=orjson.OPT_SORT_KEYS).decode() for e in events]


def replay(path: str | Path, *, check: bool, out: Any, quiet: bool = False) -> int:
    """Replay one capture; print events, the diff and violations; 0 when identical (and valid)."""
    document = load(path)
    outcome = document.get("outcome") or {}
    if not document["client_events"]:
        out.write(f"{path}: the request ended before its stream started (HTTP {outcome.get('http_status')} "
                  f"{outcome.get('error_code')}: {outcome.get('error_message')}); nothing to replay\n")
        return 0
    try:
        events = replay_events(document)
    except GatewayError as exc:
        out.write(f"{path}: today's gateway rejects the captured request: {exc.message}\n")
        return 1
    except ConfigError as exc:
        raise CliError(f"{path}: bad upstream_settings: {exc}") from None
    except CliError as exc:
        raise CliError(f"{path}: {exc}") from None
    if not quiet:
        for event in events:
            out.write(f"{event['sequence_number']:>4} {event['type']} "
                      f"{_short({k: v for k, v in event.items() if k not in ('type', 'sequence_number')})}\n")
    then, now = normalised(document["client_events"]), normalised(events)
    if document.get("truncated"):
        out.write(f"{path}: the capture was truncated at debug.capture_max_file_bytes; comparing what it holds\n")
        now = now[:len(then)]
    different = then != now
    if different:
        out.write(f"{path}: the replay differs from what the client received:\n")
        out.writelines(line + "\n" for line in difflib.unified_diff(then, now, "received", "replayed", lineterm="",
                                                                   n=1))
    violations = check_events(events)[0] if check else []
    out.writelines(f"FAIL {v}\n" for v in violations)
    verdict = ", lifecycle " + ("INVALID" if violations else "valid") if check else ""
    out.write(f"{path}: {len(events)} events, {'DIFFERENT' if different else 'identical'}{verdict}\n")
    return 1 if different or violations else 0


def _short(value: Any, limit: int = 160) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= limit else text[:limit] + "…"


def register(commands: Any) -> None:
    parser = commands.add_parser("replay", help="replay captured upstream bytes through today's code and diff",
                                 description="Feed a capture's raw upstream bytes through today's decoder and "
                                 "stream processor, print the events and diff them against what the client "
                                 "received. Exit 1 on a difference (or, with --check, a lifecycle violation).")
    parser.add_argument("files", nargs="+", metavar="FILE", help="capture files (debug.capture_dir)")
    parser.add_argument("--check", action="store_true", help="also validate the replayed event lifecycle")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print the events")
    parser.set_defaults(run=run_replay)


def run_replay(args: argparse.Namespace) -> int:
    """Every file is replayed; status 2 when one could not be (it is named on stderr), else 1 on a difference."""
    status = 0
    for path in args.files:
        try:
            status = max(status, replay(path, check=args.check, out=sys.stdout, quiet=args.quiet))
        except CliError as exc:
            sys.stdout.flush()  # this file's line after what the previous files printed
            report_error("replay", exc)
            status = 2
    return status
