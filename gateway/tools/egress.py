"""Which MCP server URLs the gateway may call on a client's behalf (`tools.mcp.allowed_servers`).

A URL must match an allow-list pattern. A host that is, or resolves to, a loopback, private, link-local
or otherwise non-public address is refused unless a pattern names that host exactly (no wildcard in
its host part): `https://*` lets clients reach the internet, never the gateway's own network.

The addresses checked are the ones connected to (`pinned_client`): the HTTP client never resolves the
name again, so a DNS answer that changes after the check (rebinding) cannot reach another address.
"""
from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpcore2
import httpx2

from ..errors import InvalidRequest

Resolver = Callable[[str], Awaitable[list[str]]]
SETTING = "tools.mcp.allowed_servers"


async def resolve(host: str) -> list[str]:
    """The addresses `host` resolves to (the event loop's resolver: never blocks the loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def refused(url: str, why: str, param: str) -> InvalidRequest:
    return InvalidRequest(f"MCP server {url!r} is not allowed: {why} (operators allow servers with {SETTING}).",
                          param=param, code="mcp_server_not_allowed")


def _pattern_host(pattern: str) -> str | None:
    host = urlsplit(pattern).hostname
    return host if host and not any(ch in host for ch in "*?[") else None


def matching_patterns(url: str, patterns: tuple[str, ...]) -> list[str]:
    """The patterns `url` matches: scheme, host[:port] and path each matched on their own, so that a `*`
    in a pattern's host never reaches into the path (`https://*.example.com/*` is no `https://evil.org/.example.com/`)."""
    parts = urlsplit(url)
    path = parts.path or "/"
    return [pattern for pattern in patterns if _matches(parts.scheme, parts.netloc.lower(), path, urlsplit(pattern))]


def _matches(scheme: str, netloc: str, path: str, pattern: Any) -> bool:
    return (scheme == pattern.scheme and fnmatch.fnmatchcase(netloc, pattern.netloc.lower())
            and fnmatch.fnmatchcase(path, pattern.path or "/*"))


def is_public(address: str) -> bool:
    """A global unicast address (IPv4-mapped IPv6 read as the IPv4 address it carries)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_url(url: str, patterns: tuple[str, ...], param: str) -> str:
    """The URL's host, or the 400 for a URL no pattern allows (no I/O: before anything is sent)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"Invalid '{param}': expected an http:// or https:// URL.", param=param,
                             code="invalid_value")
    if parts.username or parts.password:
        raise InvalidRequest(f"Invalid '{param}': credentials in the URL are not accepted; use 'authorization'.",
                             param=param, code="invalid_value")
    if not patterns:
        raise refused(url, "this gateway allows no MCP server", param)
    if not matching_patterns(url, patterns):
        raise refused(url, "it matches no allowed pattern", param)
    return parts.hostname


async def check_addresses(url: str, patterns: tuple[str, ...], param: str,
                          resolver: Resolver = resolve) -> tuple[str, ...]:
    """The addresses the URL's host resolves to, which its connections must go to (`pinned_client`).
    Refuses a host that is or resolves to a non-public address, unless an allowed pattern names it."""
    host = check_url(url, patterns, param)
    try:
        addresses = [host] if _is_ip(host) else await resolver(host)
    except OSError:
        raise refused(url, "its host does not resolve", param) from None
    if not addresses:
        raise refused(url, "its host does not resolve", param)
    named = host.lower() in {(_pattern_host(p) or "").lower() for p in matching_patterns(url, patterns)}
    if not named and not all(is_public(address) for address in addresses):  # named: the operator's choice
        raise refused(url, "it is a loopback, private or link-local address that no pattern names", param)
    return tuple(dict.fromkeys(addresses))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


class PinnedBackend(httpcore2.AsyncNetworkBackend):
    """Connects a host to its checked addresses only, never resolving it again; any other host is refused
    (a redirect elsewhere cannot reach an unchecked address). TLS still verifies, and SNI names, the host."""

    def __init__(self, pins: Mapping[str, tuple[str, ...]]) -> None:
        self.pins = {host.lower(): addresses for host, addresses in pins.items()}
        self.backend = httpcore2.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore2.AsyncNetworkStream:
        addresses = self.pins.get(host.lower().strip("[]"))
        if not addresses:
            raise httpcore2.ConnectError("refused: a host whose addresses were not checked")
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self.backend.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                      socket_options=socket_options)
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore2.AsyncNetworkStream:
        raise httpcore2.ConnectError("refused: not a TCP connection")

    async def sleep(self, seconds: float) -> None:
        await self.backend.sleep(seconds)


def pinned_client(url: str, pins: tuple[str, ...] | None, *, headers: dict[str, str] | None,
                  timeout: httpx2.Timeout) -> httpx2.AsyncClient:
    """An HTTP client whose connections go to `pins`, the checked addresses of `url`'s host (None: the
    operator's server, resolved as usual). No proxy from the environment: it would resolve the name itself."""
    if pins is None:
        return httpx2.AsyncClient(headers=headers, timeout=timeout)
    transport = httpx2.AsyncHTTPTransport(trust_env=False)
    # httpx2 takes no network backend itself: its pool is rebuilt around ours, with the same TLS context.
    transport._pool = httpcore2.AsyncConnectionPool(  # noqa: SLF001
        ssl_context=transport._pool._ssl_context,  # noqa: SLF001
        network_backend=PinnedBackend({urlsplit(url).hostname or "": pins}))
    return httpx2.AsyncClient(headers=headers, timeout=timeout, transport=transport, trust_env=False)
