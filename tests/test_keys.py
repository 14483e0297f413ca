"""Gateway keys: 401 and 403 in the envelope, keys never forwarded, per-key stream limits, owner, hash-key."""
from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys

import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.keys import owner_of

from .conftest import ROOT, assert_valid_stream, routed_config, upstream_entry
from .helpers import post_stream
from .scripted_upstream import Reply, chunk, sse, text_reply
from .test_routes import assert_error, post

ALICE, BOB = "sk-gw-alice-0123456789", "sk-gw-bob-9876543210"


def keyed_config(upstream_url: str, api_key: str = "", **options):
    keys = [{"name": "alice", "sha256": hashlib.sha256(ALICE.encode()).hexdigest()},
            {"name": "bob", "sha256": hashlib.sha256(BOB.encode()).hexdigest(), "models": ["small-*"],
             "max_concurrent_streams": 1}]
    return routed_config([upstream_entry("local", upstream_url, api_key=api_key, **options)],
                         routing={"default": "local"}, auth={"keys": keys})


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def keyed_gateway(upstream, start_gateway):
    return await start_gateway(keyed_config(upstream.url))


@pytest.mark.parametrize("headers, message", [
    ({}, "You didn't provide an API key"),
    (bearer("sk-wrong"), "Incorrect API key provided."),
    ({"Authorization": ALICE}, "Incorrect API key provided."),   # no Bearer scheme
])
@pytest.mark.parametrize("path, body", [
    ("/v1/responses", {"model": "m", "input": "hi"}),
    ("/v1/chat/completions", {"model": "m", "messages": []}),
    ("/v1/models", None),
])
async def test_missing_or_wrong_key_is_401(upstream, keyed_gateway, http, headers, message, path, body):
    if body is None:
        async with http.get(keyed_gateway.make_url(path), headers=headers) as response:
            raw = await response.read()
    else:
        response, raw = await post(http, keyed_gateway, body, path=path, headers=headers)
    error = assert_error(response, raw, 401, "invalid_request_error", code="invalid_api_key")
    assert error["message"].startswith(message)
    assert not upstream.requests


async def test_probes_and_metrics_need_no_key(keyed_gateway, http):
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        async with http.get(keyed_gateway.make_url(path)) as response:
            assert response.status == 200, path


async def test_model_outside_the_keys_list_is_403(upstream, keyed_gateway, http):
    response, raw = await post(http, keyed_gateway, {"model": "big-model", "input": "hi"}, headers=bearer(BOB))
    error = assert_error(response, raw, 403, "invalid_request_error", param="model", code="model_not_allowed")
    assert "'bob'" in error["message"] and "small-*" in error["message"]
    response, raw = await post(http, keyed_gateway, {"model": "big-model", "messages": []},
                               path="/v1/chat/completions", headers=bearer(BOB))
    assert response.status == 403 and not upstream.requests
    response, _ = await post(http, keyed_gateway, {"model": "small-1", "input": "hi"}, headers=bearer(BOB))
    assert response.status == 200
    response, _ = await post(http, keyed_gateway, {"model": "big-model", "input": "hi"}, headers=bearer(ALICE))
    assert response.status == 200


async def test_models_list_shows_only_the_keys_models(upstream, keyed_gateway, http):
    upstream.model_list = {"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": "t"}
                                                      for i in ("small-1", "big-model")]}
    async with http.get(keyed_gateway.make_url("/v1/models"), headers=bearer(BOB)) as response:
        assert [m["id"] for m in (await response.json())["data"]] == ["small-1"]
    async with http.get(keyed_gateway.make_url("/v1/models"), headers=bearer(ALICE)) as response:
        assert [m["id"] for m in (await response.json())["data"]] == ["small-1", "big-model"]


@pytest.mark.parametrize("api_key", ["", "sk-upstream-configured"])
async def test_the_client_key_never_goes_upstream(upstream, start_gateway, http, api_key):
    gateway = await start_gateway(keyed_config(upstream.url, api_key=api_key))
    await post(http, gateway, {"model": "m", "input": "hi"}, headers=bearer(ALICE))
    await post(http, gateway, {"model": "m", "messages": []}, path="/v1/chat/completions", headers=bearer(ALICE))
    async with http.get(gateway.make_url("/v1/models"), headers=bearer(ALICE)) as response:
        assert response.status == 200
    assert len(upstream.requests) == 2
    for recorded in upstream.requests:
        assert recorded.headers.get("Authorization") == (f"Bearer {api_key}" if api_key else None)
        assert ALICE not in str(recorded.headers)


async def test_per_key_stream_limit(upstream, keyed_gateway, http):
    slow = Reply([sse(chunk({"role": "assistant", "content": "a"}), done=False), 0.3,
                  sse(chunk({}, finish="stop"))])
    upstream.enqueue(slow)
    first = asyncio.ensure_future(post_stream(http, keyed_gateway, {"model": "small-1"}, headers=bearer(BOB)))
    while not upstream.requests:
        await asyncio.sleep(0.01)
    response, raw = await post(http, keyed_gateway, {"model": "small-1", "input": "hi"}, headers=bearer(BOB))
    assert_error(response, raw, 429, "server_error", code="rate_limit_exceeded")
    assert response.headers["Retry-After"] == "1"
    response, _ = await post(http, keyed_gateway, {"model": "small-1", "input": "hi"}, headers=bearer(ALICE))
    assert response.status == 200  # another key is not affected
    response, raw = await first
    assert_valid_stream(raw)
    response, _ = await post(http, keyed_gateway, {"model": "small-1", "input": "hi"}, headers=bearer(BOB))
    assert response.status == 200


async def test_key_name_on_the_log_line(upstream, keyed_gateway, http, log_capture):
    lines = log_capture("info")
    await post(http, keyed_gateway, {"model": "m", "input": "hi"}, headers={**bearer(ALICE), "X-Request-ID": "k-1"})
    finished = [line for line in lines() if line["event"] == "response.finished" and line["request_id"] == "k-1"]
    assert finished[0]["key"] == "alice"
    assert ALICE not in lines.raw.getvalue().decode()


async def test_owner_of_is_the_key_name(upstream, aiohttp_server, http):
    """The identity stored responses belong to: the key's name with keys, a hash of the bearer token without."""
    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"owner": owner_of(request)})

    for config, headers, owner in ((keyed_config(upstream.url), bearer(ALICE), "key:alice"),
                                   (routed_config([upstream_entry("local", upstream.url)]), {}, "anonymous")):
        app = create_app(config)
        app.router.add_get("/v1/whoami", whoami)
        server = await aiohttp_server(app, host="127.0.0.1")
        async with http.get(server.make_url("/v1/whoami"), headers=headers) as response:
            assert (await response.json()) == {"owner": owner}


async def test_keys_from_a_file(upstream, start_gateway, http, tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"- name: carol\n  sha256: {hashlib.sha256(b'sk-carol').hexdigest()}\n")
    config = routed_config([upstream_entry("local", upstream.url)], routing={"default": "local"},
                           auth={"keys_file": str(keys)})
    gateway = await start_gateway(config)
    upstream.enqueue(text_reply("Hi"))
    response, _ = await post(http, gateway, {"model": "m", "input": "hi"}, headers=bearer("sk-carol"))
    assert response.status == 200
    response, _ = await post(http, gateway, {"model": "m", "input": "hi"}, headers=bearer(ALICE))
    assert response.status == 401


def test_hash_key_reads_stdin():
    result = subprocess.run([sys.executable, "-m", "gateway", "hash-key"], input=f"{ALICE}\n", cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout == hashlib.sha256(ALICE.encode()).hexdigest() + "\n"
    empty = subprocess.run([sys.executable, "-m", "gateway", "hash-key"], input="", cwd=ROOT,
                           capture_output=True, text=True, timeout=30)
    assert empty.returncode == 2 and "no key" in empty.stderr
