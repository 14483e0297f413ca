"""Fixtures: a scripted upstream and the gateway, both real servers on 127.0.0.1."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import create_app
from gateway.config import Config, ServerConfig, UpstreamConfig

from .scripted_upstream import ScriptedUpstream

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GATEWAY_SHARED_DIR", ROOT.parent / "shared"))


def _load_check_stream() -> Any:
    path = SHARED / "tools" / "check_stream.py"
    spec = importlib.util.spec_from_file_location("check_stream", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}: set GATEWAY_SHARED_DIR to the shared/ folder")
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_stream"] = module
    spec.loader.exec_module(module)
    return module


check_stream = _load_check_stream()


def assert_valid_stream(raw: bytes) -> dict[str, Any]:
    """Validate captured SSE bytes with shared/tools/check_stream.py; return its folded result."""
    violations, warnings, result = check_stream.check_bytes(raw)
    assert not violations, "stream violations:\n" + "\n".join(violations) + "\n" + raw.decode(errors="replace")
    return result


def test_config(upstream_url: str, **server: Any) -> Config:
    upstream_opts = server.pop("upstream", {})
    return Config(server=ServerConfig(**{"log_level": "warning", "keepalive_interval": 15.0, **server}),
                  upstream=UpstreamConfig(**{"base_url": upstream_url, "retries": 0, "retry_backoff": 0.01,
                                             "first_byte_timeout": 5.0, "idle_timeout": 5.0, **upstream_opts}))


@pytest.fixture
async def upstream(aiohttp_server: Any) -> ScriptedUpstream:
    scripted = ScriptedUpstream()
    server = await aiohttp_server(scripted.app, host="127.0.0.1")
    scripted.url = str(server.make_url("/v1"))  # type: ignore[attr-defined]
    return scripted


@pytest.fixture
def make_gateway(aiohttp_server: Any, upstream: ScriptedUpstream) -> Any:
    """Start a gateway over the scripted upstream; keyword arguments tune server/upstream config."""
    async def start(**server: Any) -> Any:
        config = test_config(upstream.url, **server)  # type: ignore[attr-defined]
        return await aiohttp_server(create_app(config), host="127.0.0.1")
    return start


@pytest.fixture
async def gateway(make_gateway: Any) -> Any:
    return await make_gateway()


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


async def post_stream(http: aiohttp.ClientSession, gateway: Any, body: dict[str, Any],
                      headers: dict[str, str] | None = None) -> tuple[aiohttp.ClientResponse, bytes]:
    body = {"model": "scripted", "input": "hi", "stream": True, **body}
    async with http.post(gateway.make_url("/v1/responses"), json=body, headers=headers) as response:
        return response, await response.read()


def replace(config: Config, **sections: dict[str, Any]) -> Config:
    return dataclasses.replace(config, **{name: dataclasses.replace(getattr(config, name), **values)
                                          for name, values in sections.items()})
