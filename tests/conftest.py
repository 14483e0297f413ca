"""Fixtures: a scripted upstream and the gateway, both real servers on 127.0.0.1."""
from __future__ import annotations

import contextlib
import dataclasses
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
from gateway.check import check_bytes
from gateway.config import Config, DebugConfig, ServerConfig, StoreConfig, UpstreamConfig, parse_config
from gateway.log import configure_logging

from .scripted_upstream import ScriptedUpstream

ROOT = Path(__file__).resolve().parents[1]


def assert_valid_stream(raw: bytes) -> dict[str, Any]:
    """Validate captured SSE bytes with the project's validator (gateway.check); return its folded result."""
    violations, warnings, result = check_bytes(raw)
    assert not violations, "stream violations:\n" + "\n".join(violations) + "\n" + raw.decode(errors="replace")
    return result


def gateway_config(upstream_url: str, **server: Any) -> Config:
    """A gateway's Config over `upstream_url`, quiet and quick to give up; keywords override server keys, and
    `upstream`, `store` and `debug` (dicts) those sections' keys."""
    upstream_opts = server.pop("upstream", {})
    store_opts = server.pop("store", {})
    debug_opts = server.pop("debug", {})
    return Config(server=ServerConfig(**{"log_level": "warning", "keepalive_interval": 15.0,
                                                "shutdown_grace": 0.5, **server}),
                  upstream=UpstreamConfig(**{"base_url": upstream_url, "retries": 0, "retry_backoff": 0.01,
                                             "first_byte_timeout": 5.0, "idle_timeout": 5.0, **upstream_opts}),
                  store=StoreConfig(**store_opts), debug=DebugConfig(**debug_opts))


@pytest.fixture
async def upstream(aiohttp_server: Any) -> ScriptedUpstream:
    scripted = ScriptedUpstream()
    server = await aiohttp_server(scripted.app, host="127.0.0.1")
    scripted.url = str(server.make_url("/v1"))  # type: ignore[attr-defined]
    return scripted


@pytest.fixture
async def three_upstreams(aiohttp_server: Any) -> list[ScriptedUpstream]:
    """Three scripted upstreams on loopback, each answering to its own model list."""
    scripted = []
    for name in ("alpha", "beta", "gamma"):
        one = ScriptedUpstream()
        one.model_list = {"object": "list", "data": [{"id": f"{name}-model", "object": "model", "created": 0,
                                                       "owned_by": name}]}
        server = await aiohttp_server(one.app, host="127.0.0.1")
        one.url = str(server.make_url("/v1"))  # type: ignore[attr-defined]
        scripted.append(one)
    return scripted


def upstream_entry(name: str, url: str, **options: Any) -> dict[str, Any]:
    """One `upstreams:` entry as a config file would have it, with test timeouts."""
    return {"name": name, "base_url": url, "retries": 0, "first_byte_timeout": 5, "idle_timeout": 5, **options}


def routed_config(upstreams: list[dict[str, Any]], **sections: Any) -> Config:
    """A several-upstream configuration through the real parser (as from YAML)."""
    return parse_config({"server": {"log_level": "warning", "shutdown_grace": 0.5}, "upstreams": upstreams,
                         **sections})


@pytest.fixture
def start_gateway(aiohttp_server: Any) -> Any:
    async def start(config: Config) -> Any:
        return await aiohttp_server(create_app(config), host="127.0.0.1")
    return start


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


PG_HOST, PG_PORT, PG_DATABASE = "127.0.0.1", 5432, "test"


def _pg_user() -> str:
    """The role to connect as (trust auth): PGUSER, else `postgres`, else the login name (`root` on CI)."""
    return os.environ.get("PGUSER") or "postgres"


@pytest.fixture(scope="session")
def postgres_base() -> str:
    """A URL of the real PostgreSQL on 127.0.0.1:5432 (database `test`), or a visible skip; with CI=true
    its absence is a failure."""
    import asyncpg

    async def probe(user: str) -> None:
        conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=user, database=PG_DATABASE, timeout=3)
        await conn.close()

    problem: Exception | None = None
    for user in dict.fromkeys((_pg_user(), "root", os.environ.get("USER") or "root")):
        try:
            _run_apart(lambda: probe(user))
            return f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{PG_DATABASE}"
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            problem = exc
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL at {PG_HOST}:{PG_PORT}/{PG_DATABASE} is required when CI=true: {problem}")
    pytest.skip(f"no PostgreSQL at {PG_HOST}:{PG_PORT}/{PG_DATABASE} ({problem}); CI=true makes this a failure")


@pytest.fixture
def postgres_url(postgres_base: str) -> Any:
    """The real PostgreSQL under a schema of this test's own, dropped afterwards (nothing else is touched).

    Synchronous, so async fixtures can ask for it with `request.getfixturevalue`.
    """
    import asyncpg
    schema = f"gwtest_{os.urandom(6).hex()}"
    try:
        yield f"{postgres_base}?schema={schema}"
    finally:
        async def drop() -> None:
            conn = await asyncpg.connect(postgres_base, timeout=3)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()
        _run_apart(drop)


def _run_apart(coroutine: Any) -> Any:
    """Run `coroutine()` to its end on a loop of its own in another thread (fixtures here are synchronous and
    may be set up from inside a running loop)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(lambda: asyncio.run(coroutine())).result(60)


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium for page tests, installed with apt-get when missing (root, as on CI).

    Where it cannot be installed (no root, no Debian) the test skips with the reason; with CI=true
    that is a failure.
    """
    import shutil
    import subprocess
    if not os.path.exists(CHROMIUM) and shutil.which("apt-get"):
        quiet = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        lock = ["-o", "DPkg::Lock::Timeout=600"]
        for command in (["apt-get", *lock, "update", "-q"], ["apt-get", *lock, "install", "-y", "-q", "chromium"]):
            done = subprocess.run(command, env=quiet, capture_output=True, text=True, timeout=1200)
            if done.returncode != 0:
                problem = f"`{' '.join(command)}` failed: {done.stderr.strip()[-400:]}"
                break
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    problem = locals().get("problem") or "no apt-get to install it with"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is required when CI=true: {problem}")
    pytest.skip(f"no {CHROMIUM} ({problem}); CI=true makes this a failure")


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
def store_url(request: Any, tmp_path: Any) -> str:
    """Each store backend in turn: memory, SQLite on a real file, the real Redis (see `redis_url`), the real
    PostgreSQL (see `postgres_url`)."""
    if request.param == "memory":
        return "memory:"
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'gateway.db'}"
    return request.getfixturevalue(f"{request.param}_url")


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


async def run_cli(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`python -m gateway ARGS` as a subprocess (stdout and stderr together): exit status and output."""
    import asyncio
    import subprocess
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, cwd=ROOT, stdin=subprocess.PIPE if stdin is not None else None,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    out, _ = await asyncio.wait_for(proc.communicate(stdin), 120)
    return proc.returncode or 0, out.decode()


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
