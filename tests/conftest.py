"""Fixtures: a scripted upstream and the gateway, both real servers on 127.0.0.1."""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import create_app
from gateway.config import Config, ServerConfig, StoreConfig, UpstreamConfig

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


def gateway_config(upstream_url: str, **server: Any) -> Config:
    """A gateway's Config over `upstream_url`, quiet and quick to give up; keywords override server/upstream keys."""
    upstream_opts = server.pop("upstream", {})
    store_opts = server.pop("store", {})
    return Config(server=ServerConfig(**{"log_level": "warning", "keepalive_interval": 15.0,
                                                "shutdown_grace": 0.5, **server}),
                  upstream=UpstreamConfig(**{"base_url": upstream_url, "retries": 0, "retry_backoff": 0.01,
                                             "first_byte_timeout": 5.0, "idle_timeout": 5.0, **upstream_opts}),
                  store=StoreConfig(**store_opts))


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
        config = gateway_config(upstream.url, **server)  # type: ignore[attr-defined]
        return await aiohttp_server(create_app(config), host="127.0.0.1")
    return start


@pytest.fixture
async def gateway(make_gateway: Any) -> Any:
    return await make_gateway()


REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


@pytest.fixture
def redis_url() -> Any:
    """The real Redis on 127.0.0.1:6379 under a key prefix of this test's own (removed afterwards).

    Without a Redis the test skips, visibly; with CI=true that is a failure. (Synchronous, so async
    fixtures can ask for it with `request.getfixturevalue`.)
    """
    import redis
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=2)
    try:
        client.ping()
    except (OSError, redis.RedisError) as exc:
        client.close()
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {REDIS_HOST}:{REDIS_PORT} is required when CI=true: {exc}")
        pytest.skip(f"no Redis at {REDIS_HOST}:{REDIS_PORT} ({exc}); CI=true makes this a failure")
    prefix = f"gwtest:{os.urandom(6).hex()}:"
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/0?prefix={prefix}"
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: Any, tmp_path: Any) -> str:
    """Each store backend in turn: memory, SQLite on a real file, the real Redis (see `redis_url`)."""
    if request.param == "memory":
        return "memory:"
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'gateway.db'}"
    return request.getfixturevalue("redis_url")


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


def replace(config: Config, **sections: dict[str, Any]) -> Config:
    return dataclasses.replace(config, **{name: dataclasses.replace(getattr(config, name), **values)
                                          for name, values in sections.items()})


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GatewayProcess:
    """`python -m gateway serve` in a subprocess; `output` holds its stdout+stderr once stopped."""

    def __init__(self, proc: Any, url: str) -> None:
        self.proc = proc
        self.url = url
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.returncode: int | None = None

    @property
    def output(self) -> str:
        return (bytes(self.stdout) + bytes(self.stderr)).decode(errors="replace")


@contextlib.asynccontextmanager
async def gateway_process(*args: str, env: dict[str, str] | None = None, port: int | None = None,
                          startup_timeout: float = 15.0) -> Any:
    """Start the gateway CLI on a free port (unless `--port` is in args), wait until /healthz answers."""
    import asyncio
    import subprocess
    if "--port" not in args:
        port = port or free_port()
        args = (*args, "--port", str(port))
    else:
        port = int(args[list(args).index("--port") + 1])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", *args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    gw = GatewayProcess(proc, f"http://127.0.0.1:{port}")

    async def pump(stream: Any, into: bytearray) -> None:
        while data := await stream.read(65536):
            into.extend(data)

    pumps = [asyncio.ensure_future(pump(proc.stdout, gw.stdout)), asyncio.ensure_future(pump(proc.stderr, gw.stderr))]
    try:
        async with aiohttp.ClientSession() as session:
            deadline = asyncio.get_running_loop().time() + startup_timeout
            while True:
                if proc.returncode is not None:
                    raise AssertionError(f"gateway exited with {proc.returncode}: {gw.output}")
                try:
                    async with session.get(f"{gw.url}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"gateway did not start: {gw.output}")
                await asyncio.sleep(0.05)
        yield gw
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            gw.returncode = await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            gw.returncode = await proc.wait()
        await asyncio.gather(*pumps)
