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
    # Background responses waiting for a stream slot (past max_concurrent_streams); more get 429.
    max_queued_background: int = 1000
    max_body_bytes: int = 20 * 1024 * 1024
    max_json_depth: int = 64
    # Seconds running streams may take to finish after SIGTERM.
    shutdown_grace: float = 30.0
    uvloop: bool = False
    # GET /metrics and the per-request recording behind it.
    metrics: bool = True
    # Seconds a WebSocket connection (GET /v1/responses upgraded) may stay open; then the client gets
    # `websocket_connection_limit_reached` and reconnects (the Responses API's 60 minutes).
    websocket_max_age: float = 3600.0
    # End every SSE stream with `data: [DONE]` after its terminal event (the Open Responses
    # specification's end marker; OpenAI's own endpoint sends none). README: "The end of a stream".
    sse_done: bool = True


@dataclass(frozen=True)
class UpstreamConfig:
    # How logs, metrics, `name/model` routing and client-facing messages call this upstream.
    name: str = "default"
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
    # POST /v1/responses/input_tokens where the upstream has no tokenizer endpoint (gateway/input_tokens.py):
    # an estimate from the request's size, or a one-token completion whose usage tells.
    input_tokens: Literal["estimate", "completion"] = "estimate"
    # The models' context window in tokens (0: unknown, the upstream's refusal tells): a request whose size
    # (estimated at 4 characters a token) with its max_output_tokens passes it is truncated or refused before
    # it is sent (gateway/truncation.py).
    context_window: int = 0
    # Key sealing reasoning into encrypted_content for stateless clients; empty: random per process.
    reasoning_key: str = field(default="", repr=False)
    # The byte-level fast path for plain text and argument deltas (fast_path.py); the environment's
    # GATEWAY_FAST_PATH=0 makes the default false, to force the full path everywhere (tests, bench).
    fast_path: bool = field(default_factory=lambda: os.environ.get("GATEWAY_FAST_PATH", "1") != "0")
    # Routing (gateway/routing.py): exact names or globs served here, public aliases, failover order.
    models: tuple[str, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)
    fallbacks: tuple[str, ...] = ()

    @property
    def translation(self) -> tuple[Any, ...]:
        """The options a request's translation depends on: a fallback that differs here gets its own."""
        return (*self.translation_but_key, self.reasoning_key)

    @property
    def translation_but_key(self) -> tuple[Any, ...]:
        """`translation` without the reasoning key, which only items carrying sealed state depend on."""
        return (self.max_tokens_param, self.hosted_tools, self.send_reasoning_effort, self.send_parallel_tool_calls,
                self.think_tags, self.reasoning_field, self.tool_call_id_style)


@dataclass(frozen=True)
class RoutingConfig:
    # The upstream for models no entry claims (the single `upstream:` block is always the default).
    default: str = ""
    # Circuit breaker (gateway/breaker.py): at least `breaker_failures` failures that are at least
    # `breaker_failure_ratio` of an upstream's outcomes within `breaker_window` seconds skip it for
    # `breaker_cooldown` seconds, while another upstream of the route can take the request.
    breaker_failures: int = 5
    breaker_failure_ratio: float = 0.5
    breaker_window: float = 30.0
    breaker_cooldown: float = 30.0
    # A 429 pauses an upstream for its Retry-After (this long when it names none), at most the max.
    rate_limit_pause: float = 1.0
    rate_limit_max_pause: float = 60.0
    # All failover attempts of one request together wait at most this long for an answer (each one
    # at most its upstream's first_byte_timeout); 0: the longest first_byte_timeout of the route.
    first_byte_deadline: float = 0.0
    models_cache_ttl: float = 10.0


@dataclass(frozen=True)
class KeyConfig:
    name: str = ""
    sha256: str = field(default="", repr=False)
    models: tuple[str, ...] = ()       # empty: every model
    max_concurrent_streams: int = 0    # 0: only the server-wide limit
    admin: bool = False                # may use the live inspector (/debug)
    mcp: bool = False                  # may have the gateway call remote MCP servers (`mcp` tools)


@dataclass(frozen=True)
class AuthConfig:
    keys: tuple[KeyConfig, ...] = ()
    keys_file: str = ""


@dataclass(frozen=True)
class StoreConfig:
    """Stored responses and conversations (gateway/store). Without a config file: in memory."""

    url: str = "memory:"            # memory: | sqlite:PATH | redis://HOST:PORT/DB[?prefix=P] | postgresql://…[?schema=S]
    events_url: str = ""            # redis://…: background event logs and cancel signals there (PostgreSQL url)
    ttl: float = 30 * 86400.0       # seconds a response (or an unused conversation) is kept
    max_chain_length: int = 1000    # responses in one previous_response_id chain
    max_stored_bytes: int = 16 * 1024 * 1024  # encoded input items of one stored response or one turn
    max_event_log_bytes: int = 32 * 1024 * 1024  # one background response's event log; past it no resume (410)
    background_lease: float = 10.0  # seconds a dead instance's background run stays in_progress before it fails


@dataclass(frozen=True)
class DebugConfig:
    """Operator debugging aids (README "Debugging a stream"); all off by default."""

    # Write one file per request: off | failed (only requests that failed) | all.
    capture: Literal["off", "failed", "all"] = "off"
    # Share of requests considered for capture (0..1), decided when the request starts.
    capture_sample: float = 1.0
    capture_dir: str = "captures"
    # Bytes of upstream reads plus client events kept per file; past it the file says `truncated`.
    capture_max_file_bytes: int = 1024 * 1024
    # Past this total, the oldest capture files are removed first.
    capture_max_dir_bytes: int = 100 * 1024 * 1024
    # The live inspector page at /debug (gateway/inspector.py), and how many ended requests it lists.
    inspector: bool = False
    inspector_recent: int = 50


@dataclass(frozen=True)
class McpConfig:
    """Remote MCP servers the gateway calls on a client's behalf (gateway/tools, README "MCP tools")."""

    # URL patterns (shell-style, e.g. https://mcp.example.com/*) a request's server_url must match; empty:
    # no MCP server at all. A loopback, private or link-local address must be named by a pattern's host.
    allowed_servers: tuple[str, ...] = ()
    connect_timeout: float = 10.0      # seconds to connect and list a server's tools
    call_timeout: float = 60.0         # seconds one tool call may take
    max_result_bytes: int = 1024 * 1024  # a larger result is an error told to the model
    idle_timeout: float = 60.0         # seconds a pooled MCP session stays open without a call
    max_sessions: int = 64             # MCP sessions kept open at once (per server and headers)


@dataclass(frozen=True)
class McpServerConfig:
    """An MCP server the operator offers: clients name it by `server_label` alone (no `server_url`)."""

    label: str = ""
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # ${VAR} from the environment
    description: str = ""


@dataclass(frozen=True)
class ToolsConfig:
    """The agentic loop: tools the gateway runs itself inside one response."""

    max_rounds: int = 8                # samples after tool calls in one response; past it: incomplete
    mcp: McpConfig = field(default_factory=McpConfig)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    # Several upstreams; empty means the single `upstream` above.
    upstreams: tuple[UpstreamConfig, ...] = ()
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    mcp_servers: tuple[McpServerConfig, ...] = ()

    @property
    def upstream_list(self) -> tuple[UpstreamConfig, ...]:
        return self.upstreams or (self.upstream,)

    @property
    def secrets(self) -> list[str]:
        """Values the log scrubber masks wherever they appear."""
        return [value for u in self.upstream_list for value in (u.api_key, u.reasoning_key) if value]


def expand_env(value: str, env: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """Replace ${VAR} and ${VAR:-default}; an unset ${VAR} without default becomes ''."""
    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        # Like the shell, ":-" also applies when the variable is set but empty.
        return env.get(name) or default or ""

    return _VAR.sub(substitute, value)


def _coerce(key: str, hint: Any, value: Any) -> Any:
    if get_origin(hint) is tuple:
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise ConfigError(f"{key}: must be a list of names, got {value!r}")
        return tuple(expand_env(item) for item in value)
    if get_origin(hint) is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) and k and v
                                                  for k, v in value.items()):
            raise ConfigError(f"{key}: must be a mapping of names to names, got {value!r}")
        return {k: expand_env(v) for k, v in value.items()}
    if get_origin(hint) is Literal:
        choices = get_args(hint)
        if isinstance(value, bool) and ("on" if value else "off") in choices:
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
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
    for where, upstream in _upstream_keys(config):
        url = upstream.base_url
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.base_url: must start with http:// or https://, got {url!r}")
    _check_upstreams(config)
    _check_keys(config.auth)
    if not 0 < config.server.port < 65536 and config.server.port != 0:
        raise ConfigError(f"server.port: must be between 0 and 65535, got {config.server.port}")
    if config.server.keepalive_interval <= 0:
        raise ConfigError("server.keepalive_interval: must be positive")
    if config.server.websocket_max_age <= 0:
        raise ConfigError("server.websocket_max_age: must be positive")
    _check_store(config.store)
    if config.debug.capture_sample > 1:
        raise ConfigError(f"debug.capture_sample: must be between 0 and 1, got {config.debug.capture_sample}")
    if config.debug.inspector_recent < 1:
        raise ConfigError("debug.inspector_recent: must be at least 1")
    return for_debugging(config)


def for_debugging(config: Config) -> Config:
    """At debug level every chunk and event is logged as parsed JSON: the fast path, which leaves
    them as bytes, is turned off on every upstream."""
    if config.server.log_level != "debug":
        return config
    off = {"fast_path": False}
    return dataclasses.replace(config, upstream=dataclasses.replace(config.upstream, **off),
                               upstreams=tuple(dataclasses.replace(u, **off) for u in config.upstreams))


def _check_store(store: StoreConfig) -> None:
    from .store import check_events_url, check_store_url
    problem = check_store_url(store.url)
    if problem:
        raise ConfigError(f"store.url: {problem}")
    problem = check_events_url(store.url, store.events_url)
    if problem:
        raise ConfigError(f"store.events_url: {problem}")
    for key in ("ttl", "max_chain_length", "max_stored_bytes", "max_event_log_bytes", "background_lease"):
        if getattr(store, key) <= 0:
            raise ConfigError(f"store.{key}: must be positive")


def _upstream_keys(config: Config) -> list[tuple[str, UpstreamConfig]]:
    if config.upstreams:
        return [(f"upstreams[{i}]", upstream) for i, upstream in enumerate(config.upstreams)]
    return [("upstream", config.upstream)]


def _list(name: str, cls: type, raw: Any) -> tuple[Any, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{name}: must be a non-empty list of mappings")
    return tuple(_section(f"{name}[{i}]", cls, entry) for i, entry in enumerate(raw))


def _auth(raw: Any) -> AuthConfig:
    if raw is None:
        return AuthConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"auth: must be a mapping, got {type(raw).__name__}")
    unknown = set(raw) - {"keys", "keys_file"}
    if unknown:
        raise ConfigError(f"auth.{sorted(unknown)[0]}: unknown key (known: keys, keys_file)")
    keys = _list("auth.keys", KeyConfig, raw.get("keys"))
    keys_file = _coerce("auth.keys_file", str, raw.get("keys_file") or "")
    if keys_file:
        keys += _list("auth.keys_file", KeyConfig, _read_yaml(keys_file, "auth.keys_file"))
    return AuthConfig(keys=keys, keys_file=keys_file)


_SECTIONS = ("server", "upstream", "upstreams", "routing", "auth", "store", "debug", "tools", "mcp_servers")


def _mcp_servers(raw: Any) -> tuple[McpServerConfig, ...]:
    servers = _list("mcp_servers", McpServerConfig, raw)
    for i, server in enumerate(servers):
        if not server.label or not server.url.startswith(("http://", "https://")):
            raise ConfigError(f"mcp_servers[{i}]: needs a label and an http:// or https:// url")
    labels = [server.label for server in servers]
    if len(set(labels)) != len(labels):
        raise ConfigError("mcp_servers: labels must be unique")
    return servers


def _tools(raw: Any) -> ToolsConfig:
    if raw is None:
        return ToolsConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"tools: must be a mapping, got {type(raw).__name__}")
    tools = _section("tools", ToolsConfig, {key: value for key, value in raw.items() if key != "mcp"})
    tools = dataclasses.replace(tools, mcp=_section("tools.mcp", McpConfig, raw.get("mcp")))
    if tools.max_rounds < 1:
        raise ConfigError("tools.max_rounds: must be at least 1")
    for key in ("connect_timeout", "call_timeout", "max_result_bytes", "idle_timeout", "max_sessions"):
        if getattr(tools.mcp, key) <= 0:
            raise ConfigError(f"tools.mcp.{key}: must be positive")
    return tools


def parse_config(raw: Any) -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: the top level must be a mapping with keys {', '.join(_SECTIONS)}")
    unknown = set(raw) - set(_SECTIONS)
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown key (known: {', '.join(_SECTIONS)})")
    if raw.get("upstream") is not None and raw.get("upstreams") is not None:
        raise ConfigError("upstreams: use either the single upstream block or the upstreams list, not both")
    upstreams = _list("upstreams", UpstreamConfig, raw.get("upstreams"))
    for i, entry in enumerate(raw.get("upstreams") or ()):
        for required in ("name", "base_url"):
            if required not in entry:
                raise ConfigError(f"upstreams[{i}].{required}: required")
    return _check(Config(server=_section("server", ServerConfig, raw.get("server")),
                         upstream=_section("upstream", UpstreamConfig, raw.get("upstream")),
                         upstreams=upstreams, routing=_section("routing", RoutingConfig, raw.get("routing")),
                         auth=_auth(raw.get("auth")), store=_section("store", StoreConfig, raw.get("store")),
                         debug=_section("debug", DebugConfig, raw.get("debug")), tools=_tools(raw.get("tools")),
                         mcp_servers=_mcp_servers(raw.get("mcp_servers"))))


def _read_yaml(path: str | Path, key: str) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{key}: {path} is not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{key}: {path} is not valid YAML{where}") from None


def load_config(path: str | Path | None, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Read the file (or defaults when path is None) and apply CLI overrides per section."""
    raw: Any = {}
    if path is not None:
        raw = _read_yaml(path, "config") or {}
    if not isinstance(raw, dict):
        return parse_config(raw)
    for section, values in (overrides or {}).items():
        given = {k: v for k, v in values.items() if v is not None}
        if not given:
            continue
        if section == "upstream" and raw.get("upstreams") is not None:
            raise ConfigError("--upstream-url: not with an upstreams list; set upstreams[].base_url instead")
        if raw.get(section) is not None and not isinstance(raw[section], dict):
            continue  # parse_config reports the malformed section by name
        raw[section] = {**(raw.get(section) or {}), **given}
    return parse_config(raw)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")  # no "/": `name/model` selects an upstream
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _check_upstreams(config: Config) -> None:
    """Names unique and usable as a `name/` prefix; fallbacks and the default exist; no public name twice."""
    entries = _upstream_keys(config)
    names: set[str] = set()
    public: dict[str, str] = {}
    for where, upstream in entries:
        if not _NAME.match(upstream.name):
            raise ConfigError(f"{where}.name: must be letters, digits, '.', '_', ':' or '-', got {upstream.name!r}")
        if upstream.name in names:
            raise ConfigError(f"{where}.name: {upstream.name!r} is used twice")
        names.add(upstream.name)
        claimed = [m for m in upstream.models if not _is_glob(m)] + list(upstream.aliases)
        for model in claimed:
            if model in public and public[model] != upstream.name:
                raise ConfigError(f"{where}.models: {model!r} is already routed to {public[model]!r}")
            public[model] = upstream.name
    for where, upstream in entries:
        for fallback in upstream.fallbacks:
            if fallback not in names or fallback == upstream.name:
                raise ConfigError(f"{where}.fallbacks: {fallback!r} is not another upstream's name "
                                  f"(names: {', '.join(sorted(names))})")
    default = config.routing.default
    if default and default not in names:
        raise ConfigError(f"routing.default: {default!r} is not an upstream's name (names: {', '.join(sorted(names))})")
    routing = config.routing
    if routing.breaker_failures < 1:
        raise ConfigError("routing.breaker_failures: must be at least 1")
    if not 0 < routing.breaker_failure_ratio <= 1:
        raise ConfigError(f"routing.breaker_failure_ratio: must be above 0 and at most 1, got "
                          f"{routing.breaker_failure_ratio}")
    if routing.breaker_window <= 0:
        raise ConfigError("routing.breaker_window: must be positive")


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _check_keys(auth: AuthConfig) -> None:
    names: set[str] = set()
    for i, key in enumerate(auth.keys):
        where = f"auth.keys[{i}]"
        if not key.name:
            raise ConfigError(f"{where}.name: required")
        if key.name in names:
            raise ConfigError(f"{where}.name: {key.name!r} is used twice")
        names.add(key.name)
        if not _HEX64.match(key.sha256):
            raise ConfigError(f"{where}.sha256: must be 64 lowercase hex digits (`gateway hash-key` prints one)")
