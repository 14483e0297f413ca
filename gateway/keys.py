"""Gateway keys: who may call the gateway, which models they may use, how many streams they may hold.

Keys are stored as SHA-256 hex digests (`gateway hash-key` prints one), never in clear. With keys
configured every API request must carry `Authorization: Bearer <key>`; the key's name is the
caller's identity in logs, metrics and for the ownership of stored responses (`owner_of`). The
client's key is never forwarded upstream. Without keys the gateway is open, as before.
"""
from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote
from typing import Any

from aiohttp import web

from .config import AuthConfig
from .errors import GatewayError
from .state import STATE
from .store.service import token_owner

# Paths anyone may call, keys or not: probes, metrics scraping, the API description.
# The inspector's page and script hold no data; its lists and feeds need an admin key.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/debug", "/debug/",
                        "/debug/inspector.js"})
# A browser's EventSource sends no Authorization header: the inspector page keeps the key in this cookie.
INSPECTOR_COOKIE = "gateway_key"


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    models: tuple[str, ...] = ()        # exact names or globs; empty: all
    max_concurrent_streams: int = 0     # 0: no per-key limit
    admin: bool = False                 # may use the live inspector (/debug)
    mcp: bool = False                   # may have the gateway call remote MCP servers (`mcp` tools)

    def allows(self, model: str) -> bool:
        return not self.models or any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


# Where the middleware leaves the caller's Key on the request (typed keys exist from aiohttp 3.14).
_KEY: Any = web.RequestKey("gateway_key", Key) if hasattr(web, "RequestKey") else "gateway_key"


class KeyRing:
    def __init__(self, auth: AuthConfig) -> None:
        self._by_hash = {k.sha256: Key(k.name, k.models, k.max_concurrent_streams, k.admin, k.mcp) for k in auth.keys}

    @property
    def enabled(self) -> bool:
        return bool(self._by_hash)

    def identify(self, authorization: str | None) -> Key:
        """The key presented as `Bearer <key>`, or 401 `invalid_api_key`."""
        scheme, _, secret = (authorization or "").partition(" ")
        key = self._by_hash.get(hash_key(secret.strip())) if scheme.lower() == "bearer" and secret else None
        if key is None:
            message = ("Incorrect API key provided." if authorization else
                       "You didn't provide an API key: send it as 'Authorization: Bearer <key>'.")
            raise InvalidKey(message)
        return key


class InvalidKey(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class ModelNotAllowed(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class StreamLimits:
    """Requests in flight per key name; outlives reloads so running streams keep counting."""

    def __init__(self) -> None:
        self.open: dict[str, int] = {}

    def acquire(self, key: Key) -> Callable[[], None]:
        count = self.open.get(key.name, 0)
        if key.max_concurrent_streams and count >= key.max_concurrent_streams:
            raise GatewayError(f"Too many concurrent streams for key {key.name!r} "
                               f"(limit {key.max_concurrent_streams}); retry shortly.", status=429,
                               code="rate_limit_exceeded", headers={"Retry-After": "1"})
        self.open[key.name] = count + 1

        def release() -> None:
            self.open[key.name] -= 1
        return release


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """With keys configured, every path but the open ones needs a valid key (401 in the envelope)."""
    state = STATE.get(request.app)
    if state.keys.enabled and request.path not in OPEN_PATHS:
        try:
            request[_KEY] = state.keys.identify(_credential(request))
        except InvalidKey as exc:
            resource = request.match_info.route.resource
            state.metrics.rejected(resource.canonical if resource else "other", exc.status, None)
            raise
    return await handler(request)


def _credential(request: web.Request) -> str | None:
    given = request.headers.get("Authorization")
    if given is None and request.path.startswith("/debug/") and INSPECTOR_COOKIE in request.cookies:
        return f"Bearer {unquote(request.cookies[INSPECTOR_COOKIE])}"
    return given


def request_key(request: web.Request) -> Key | None:
    return request.get(_KEY)


def owner_of(request: web.Request) -> str:
    """Who owns what this request stores: its gateway key's name, or without keys a hash of its bearer token."""
    key = request_key(request)
    return f"key:{key.name}" if key is not None else token_owner(request.headers.get("Authorization"))


def forwarded_authorization(request: web.Request) -> str | None:
    """The client's Authorization header for upstreams without an api_key; never a gateway key."""
    return None if STATE.get(request.app).keys.enabled else request.headers.get("Authorization")


def check_model(key: Key | None, model: str) -> None:
    if key is not None and not key.allows(model):
        raise ModelNotAllowed(f"The key {key.name!r} may not use the model {model!r}; it may use: "
                              f"{', '.join(key.models)}.", param="model")
