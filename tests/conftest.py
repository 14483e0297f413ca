"""Fixtures: a scripted upstream and the gateway, both real servers on 127.0.0.1."""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from gateway.app import create_app
from gateway.config import Config, ServerConfig, UpstreamConfig
from gateway.log import configure_logging

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
    return Config(server=ServerConfig(**{"log_level": "warning", "keepalive_interval": 15.0,
                                                "shutdown_grace": 0.5, **server}),
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


@pytest.fixture
def log_capture():
    """Configure the gateway's logging in-process into a buffer; yields a function returning parsed lines."""
    buffer = io.BytesIO()

    def configure(level: str = "info", secrets: tuple[str, ...] = ()) -> Any:
        configure_logging("json", level, secrets=secrets)
        # Same processors and renderer; only the sink (sys.stdout.buffer) is swapped for ours.
        structlog.configure(logger_factory=structlog.BytesLoggerFactory(buffer))

        def lines() -> list[dict[str, Any]]:
            return [json.loads(line) for line in buffer.getvalue().decode().splitlines() if line.strip()]
        lines.raw = buffer  # type: ignore[attr-defined]
        return lines
    yield configure
    structlog.reset_defaults()


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
