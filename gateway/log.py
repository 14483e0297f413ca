"""structlog, configured once at the edge: JSON lines (default) or console, secrets scrubbed."""
from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

import orjson
import structlog

SECRET_KEYS = frozenset({"authorization", "api_key", "apikey", "x-api-key", "password", "secret"})
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _Scrubber:
    """Drops secret-named fields and masks known secret values wherever they appear."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        for key in list(event):
            if key.lower() in SECRET_KEYS:
                event[key] = "[redacted]"
            elif self.secrets:
                event[key] = self._mask(event[key])
        return event

    def _mask(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, "[redacted]")
            return value
        if isinstance(value, (dict, list)):
            text = orjson.dumps(value, default=str).decode()
            masked = self._mask(text)
            return orjson.loads(masked) if masked != text else value
        return value


def _render_json(_: Any, __: str, event: dict[str, Any]) -> bytes:
    return orjson.dumps(event, default=str)


def configure_logging(fmt: str = "json", level: str = "info", secrets: Iterable[str] = ()) -> None:
    from .request_context import add_request_id  # that module logs through this one: imported when used
    processors: list[Any] = [
        add_request_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _Scrubber(secrets),
    ]
    if fmt == "console":
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty()))
        factory: Any = structlog.PrintLoggerFactory(sys.stdout)
    else:
        processors.append(_render_json)
        factory = structlog.BytesLoggerFactory(sys.stdout.buffer)
    structlog.configure(processors=processors,
                        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
                        logger_factory=factory, cache_logger_on_first_use=False)


def get_logger() -> Any:
    return structlog.get_logger("gateway")
