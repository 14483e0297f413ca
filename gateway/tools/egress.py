"""Which MCP server URLs the gateway may call on a client's behalf (`tools.mcp.allowed_servers`).

A URL must match an allow-list pattern. A host that is, or resolves to, a loopback, private, link-local
or otherwise non-public address is refused unless a pattern names that host exactly (no wildcard in
its host part): `https://*` lets clients reach the internet, never the gateway's own network.
"""
from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

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


async def check_addresses(url: str, patterns: tuple[str, ...], param: str, resolver: Resolver = resolve) -> None:
    """Refuse a host that is or resolves to a non-public address, unless an allowed pattern names it."""
    host = check_url(url, patterns, param)
    if host.lower() in {(_pattern_host(p) or "").lower() for p in matching_patterns(url, patterns)}:
        return  # named by the operator: its addresses are the operator's choice
    try:
        addresses = [host] if _is_ip(host) else await resolver(host)
    except OSError:
        raise refused(url, "its host does not resolve", param) from None
    if not addresses or not all(is_public(address) for address in addresses):
        raise refused(url, "it is a loopback, private or link-local address that no pattern names", param)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True
