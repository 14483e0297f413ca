"""Configuration: a YAML file with ${VAR} / ${VAR:-default} expansion, validated into dataclasses.

Every error names the offending key in one line, so `gateway serve` can print it and exit 2.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from .call_ids import CallIdStyle
from .errors import ConfigError
from .think_tags import ThinkTagsMode

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Seconds between SSE comment lines sent to the client while the stream is open.
    keepalive_interval: float = 15.0
    max_concurrent_streams: int = 1000
    max_body_bytes: int = 20 * 1024 * 1024
    max_json_depth: int = 64
    # Seconds running streams may take to finish after SIGTERM.
    shutdown_grace: float = 30.0
    uvloop: bool = False


@dataclass(frozen=True)
class UpstreamConfig:
    base_url: str = "http://127.0.0.1:11434/v1"
    api_key: str = field(default="", repr=False)
    connect_timeout: float = 10.0
    # Until the first byte of the answer: prompt processing on a slow machine takes minutes.
    first_byte_timeout: float = 600.0
    # Longest silence allowed once the answer has started.
    idle_timeout: float = 300.0
    # Retries (after the first attempt) for connection errors and 502/503/504 before any byte.
    retries: int = 2
    retry_backoff: float = 0.25
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    hosted_tools: Literal["drop", "reject"] = "drop"
    send_reasoning_effort: bool = True
    send_parallel_tool_calls: bool = True
    # Inline <think>…</think> in content: auto = only a leading block is reasoning; on = anywhere; off = never.
    think_tags: ThinkTagsMode = "auto"
    # The assistant-message field that carries earlier reasoning back upstream (none: not sent).
    reasoning_field: Literal["reasoning_content", "reasoning", "none"] = "reasoning_content"
    # Form of call ids the gateway invents or rewrites in history (mistral: exactly 9 letters/digits).
    tool_call_id_style: CallIdStyle = "openai"
    # Key sealing reasoning into encrypted_content for stateless clients; empty: random per process.
    reasoning_key: str = field(default="", repr=False)
    # The byte-level fast path for plain text and argument deltas (fast_path.py); the environment's
    # GATEWAY_FAST_PATH=0 makes the default false, to force the full path everywhere (tests, bench).
    fast_path: bool = field(default_factory=lambda: os.environ.get("GATEWAY_FAST_PATH", "1") != "0")


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)


def expand_env(value: str, env: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """Replace ${VAR} and ${VAR:-default}; an unset ${VAR} without default becomes ''."""
    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        # Like the shell, ":-" also applies when the variable is set but empty.
        return env.get(name) or default or ""

    return _VAR.sub(substitute, value)


def _coerce(key: str, hint: Any, value: Any) -> Any:
    if get_origin(hint) is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: must be true or false, got {value!r}")
    if hint in (int, float):
        try:
            number = hint(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or (hint is int and isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        if number < 0:
            raise ConfigError(f"{key}: must not be negative, got {value!r}")
        return number
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be a string, got {value!r}")
    return expand_env(value)


def _section(name: str, cls: type, raw: Any) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: must be a mapping, got {type(raw).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(sorted(known))})")
        if isinstance(value, str) and hints[key] is not str:
            value = expand_env(value)
        values[key] = _coerce(f"{name}.{key}", hints[key], value)
    return cls(**values)


def _check(config: Config) -> Config:
    url = config.upstream.base_url
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"upstream.base_url: must start with http:// or https://, got {url!r}")
    if not 0 < config.server.port < 65536 and config.server.port != 0:
        raise ConfigError(f"server.port: must be between 0 and 65535, got {config.server.port}")
    if config.server.keepalive_interval <= 0:
        raise ConfigError("server.keepalive_interval: must be positive")
    return config


def parse_config(raw: Any) -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("config: the top level must be a mapping with keys server and upstream")
    unknown = set(raw) - {"server", "upstream"}
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown key (known: server, upstream)")
    return _check(Config(server=_section("server", ServerConfig, raw.get("server")),
                         upstream=_section("upstream", UpstreamConfig, raw.get("upstream"))))


def load_config(path: str | Path | None, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Read the file (or defaults when path is None) and apply CLI overrides per section."""
    raw: Any = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config: {path} is not valid YAML{where}") from None
    if not isinstance(raw, dict):
        return parse_config(raw)
    for section, values in (overrides or {}).items():
        if raw.get(section) is not None and not isinstance(raw[section], dict):
            continue  # parse_config reports the malformed section by name
        merged = dict(raw.get(section) or {})
        merged.update({k: v for k, v in values.items() if v is not None})
        raw[section] = merged
    return parse_config(raw)
