"""How the `gateway` subcommands read their FILE arguments and report mistakes.

A `CliError` is a mistake on the command line or in what it names (a missing file, a directory,
bad JSON, a busy port): `gateway` prints it as one line on stderr and exits with status 2, never
with a traceback. `-` as a FILE means stdin.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO


class CliError(Exception):
    """One line for stderr; the command exits with status 2."""


def cannot_read(path: str | Path, exc: OSError) -> CliError:
    return CliError(f"cannot read {path}: {exc.strerror or exc}")


def _stdin() -> TextIO:
    if sys.stdin is None:  # started with stdin closed (`<&-`)
        raise CliError("cannot read -: stdin is closed")
    return sys.stdin


def read_bytes(path: str) -> bytes:
    """The whole of FILE (`-`: stdin)."""
    try:
        return _stdin().buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise cannot_read(path, exc) from None


def open_text(path: str | None) -> TextIO:
    """FILE (`-` or None: stdin) as UTF-8 text; bytes that are not UTF-8 read as U+FFFD, so one torn
    line of a log does not stop the reader."""
    if path is None or path == "-":
        stdin = _stdin()
        stdin.reconfigure(encoding="utf-8", errors="replace")  # type: ignore[attr-defined]
        return stdin
    try:
        return open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 (the caller closes it)
    except OSError as exc:
        raise cannot_read(path, exc) from None


def report_error(command: str | None, exc: CliError) -> None:
    """The one stderr line of a CLI error: `gateway COMMAND: message`."""
    print(f"gateway {command}: {exc}" if command else f"gateway: {exc}", file=sys.stderr)
