"""Capture (debug.capture) and replay (`gateway replay`), over the real gateway and scripted upstream.

Every file under tests/captures/ is replayed by today's code and must match what its client
received then: a capture is a regression test. `UPDATE_CAPTURES=1` rewrites those files from the
runs below (made by the gateway over the scripted upstream).
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.replay import load, raw_reads, replay

from . import conftest
from .conftest import ROOT, assert_valid_stream, replace, run_cli
from .scripted_upstream import Reply, chunk, sse, text_reply, tool_reply, usage

CAPTURES = ROOT / "tests" / "captures"
SECRET = "sk-client-secret-0123456789"


@pytest.fixture
def start_gateway(aiohttp_server, upstream, tmp_path):
    async def start(**debug: Any) -> Any:
        config = replace(conftest.gateway_config(upstream.url, upstream={"api_key": "sk-upstream-key-9876"}),
                         debug={"capture_dir": str(tmp_path / "captures"), **debug})
        return await aiohttp_server(create_app(config), host="127.0.0.1")
    return start


async def post(http, gateway, body: dict[str, Any], request_id: str) -> tuple[int, bytes]:
    async with http.post(gateway.make_url("/v1/responses"), json={"model": "scripted", **body},
                         headers={"X-Request-ID": request_id, "Authorization": f"Bearer {SECRET}"}) as response:
        return response.status, await response.read()


def captures(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "captures").glob("*.json")) if (tmp_path / "captures").exists() else []


async def written(tmp_path: Path, count: int) -> list[Path]:
    """The capture files once `count` exist: a file is written after the client's stream has ended."""
    for _ in range(200):
        if len(captures(tmp_path)) >= count:
            break
        await asyncio.sleep(0.01)
    return captures(tmp_path)


# The runs committed under tests/captures/: name -> (upstream reply, request body).
RUNS = {
    "text": (lambda: Reply([sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), done=False),
                            0.05, sse(chunk({"content": "lo wörld"}), chunk({}, finish="stop"),
                                      chunk(choices=False, usage=usage(9, 3)))]),
             {"input": "Say hello", "stream": True}),
    "tool_call": (lambda: tool_reply("get_weather", '{"city": "Paris"}', pieces=4),
                  {"input": "Weather in Paris?", "stream": True, "tools": [{
                      "type": "function", "name": "get_weather",
                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]}),
    "think_tags_nonstream": (lambda: text_reply("<think>Two and", " two.</think>", "4"), {"input": "2+2?"}),
    # A read that ends inside a UTF-8 character, then the connection is cut.
    "failed_cut": (lambda: Reply([sse(chunk({"role": "assistant", "content": "a "}), done=False)
                                  + 'data: {"choices":[{"index":0,"delta":{"content":"🎉'.encode()[:-2]], end="abort"),
                   {"input": "Go", "stream": True}),
}


async def test_capture_all_writes_a_replayable_file_per_request(start_gateway, upstream, http, tmp_path):
    gateway = await start_gateway(capture="all")
    for name, (reply, body) in RUNS.items():
        upstream.enqueue(reply())
        status, raw = await post(http, gateway, body, f"req-{name}")
        assert status == 200
        if body.get("stream"):
            assert_valid_stream(raw)
    files = await written(tmp_path, len(RUNS))
    assert [json.loads(f.read_bytes())["request_id"] for f in files] == [f"req-{name}" for name in RUNS]
    text = load(files[0])
    # The client's request with its key scrubbed, the upstream's request, raw reads with times, the events.
    assert text["client_request"]["body"] == {"model": "scripted", "input": "Say hello", "stream": True}
    headers = {k.lower(): v for k, v in text["client_request"]["headers"].items()}
    assert headers["x-request-id"] == "req-text" and "authorization" not in headers
    assert text["upstream_request"]["url"] == f"{upstream.url}/chat/completions"
    assert text["upstream_request"]["body"]["messages"] == [{"role": "user", "content": "Say hello"}]
    assert [r["t_ms"] >= 0 for r in text["upstream_reads"]] == [True, True]
    assert text["upstream_reads"][1]["t_ms"] - text["upstream_reads"][0]["t_ms"] >= 40  # the 50 ms pause
    assert b"".join(raw_reads(text)) == b"".join(s for s in RUNS["text"][0]().steps if isinstance(s, bytes))
    assert [e["type"] for e in text["client_events"]][:2] == ["response.created", "response.in_progress"]
    assert text["client_events"][-1]["type"] == "response.completed"
    assert text["outcome"]["status"] == "completed" and text["outcome"]["http_status"] == 200
    everything = b"".join(f.read_bytes() for f in files)
    assert SECRET.encode() not in everything and b"sk-upstream-key-9876" not in everything
    failed = load(files[-1])
    assert failed["outcome"]["error_code"] == "upstream_disconnected"
    assert "base64" in failed["upstream_reads"][0]  # the cut read ends inside the emoji: kept exact
    for path in files:
        out = io.StringIO()
        assert replay(path, check=True, out=out) == 0, out.getvalue()
        assert "identical, lifecycle valid" in out.getvalue()
    if os.environ.get("UPDATE_CAPTURES") == "1":
        shutil.rmtree(CAPTURES, ignore_errors=True)
        CAPTURES.mkdir()
        for name, path in zip(RUNS, files):
            shutil.copy(path, CAPTURES / f"{name}.json")


async def test_capture_failed_keeps_only_failures_and_the_log_line_names_the_file(
        start_gateway, upstream, http, tmp_path, log_capture):
    lines = log_capture("info")
    gateway = await start_gateway(capture="failed")
    upstream.enqueue(text_reply("fine"), Reply([sse({"error": {"message": "engine died"}}, done=False)]))
    await post(http, gateway, {"input": "a", "stream": True}, "req-fine")
    await post(http, gateway, {"input": "b", "stream": True}, "req-died")
    [path] = await written(tmp_path, 1)
    await asyncio.sleep(0.05)  # the log line follows the file
    finished = {line["request_id"]: line for line in lines() if line["event"] == "response.finished"}
    assert "capture" not in finished["req-fine"]
    assert finished["req-died"]["capture"] == path.name and "req-died" in path.name
    assert finished["req-died"]["error_message"] == "engine died"
    assert load(path)["outcome"]["error_code"] == "upstream_error"


async def test_sampling_and_caps(start_gateway, upstream, http, tmp_path):
    gateway = await start_gateway(capture="all", capture_sample=0.0)
    await post(http, gateway, {"input": "a", "stream": True}, "req-unsampled")
    assert captures(tmp_path) == []
    # Per-file cap: the record stops growing and says so; replay compares what it holds.
    gateway = await start_gateway(capture="all", capture_max_file_bytes=3000)
    upstream.enqueue(text_reply(*["token "] * 60))
    await post(http, gateway, {"input": "a", "stream": True}, "req-big")
    [path] = await written(tmp_path, 1)
    document = load(path)
    assert document["truncated"] is True and len(path.read_bytes()) < 20_000
    assert replay(path, check=False, out=io.StringIO()) == 0
    # Folder cap: the oldest files go first.
    path.unlink()
    gateway = await start_gateway(capture="all", capture_max_dir_bytes=25_000)
    for n in range(8):
        await post(http, gateway, {"input": "a", "stream": True}, f"req-{n}")
        await asyncio.sleep(0.05)  # one write at a time: the order of the files is the order of the requests
    kept = [load(p)["request_id"] for p in captures(tmp_path)]
    assert 1 <= len(kept) < 8 and kept == [f"req-{n}" for n in range(8 - len(kept), 8)]
    assert sum(p.stat().st_size for p in captures(tmp_path)) <= 25_000


async def test_capture_records_the_upstream_that_answered(three_upstreams, aiohttp_server, http, tmp_path):
    """With several upstreams a capture names the upstream the request went to (after a failover: the one
    that answered) with its URL, keeps the translating upstream's settings, and masks every upstream's key."""
    first, second, _ = three_upstreams
    config = conftest.routed_config([
        conftest.upstream_entry("first", first.url, api_key="sk-first-key-1111"),
        conftest.upstream_entry("second", second.url, models=["second-model"], think_tags="on",
                                api_key="sk-second-key-2222"),
        conftest.upstream_entry("refusing", f"http://127.0.0.1:{conftest.free_port()}/v1", models=["failover"],
                                fallbacks=["second"]),
    ], routing={"default": "first"}, debug={"capture": "all", "capture_dir": str(tmp_path / "captures")})
    gateway = await aiohttp_server(create_app(config), host="127.0.0.1")
    for request_id, model in (("req-1-second", "second-model"), ("req-2-failover", "failover"),
                              ("req-3-first", "anything")):
        status, raw = await post(http, gateway, {"model": model, "input": "keys sk-second-key-2222 sk-first-key-1111",
                                                 "stream": True}, request_id)
        assert status == 200 and assert_valid_stream(raw)["status"] == "completed"
    assert (len(first.requests), len(second.requests)) == (1, 2)
    routed, failed_over, default = (load(path) for path in await written(tmp_path, 3))
    assert routed["upstream_request"]["url"] == f"{second.url}/chat/completions"
    assert routed["upstream_request"]["upstream"] == "second"
    assert routed["upstream_settings"]["think_tags"] == "on"
    assert failed_over["upstream_request"]["upstream"] == "second"
    assert failed_over["upstream_request"]["url"] == f"{second.url}/chat/completions"
    assert failed_over["upstream_settings"]["think_tags"] == "on"  # a fallback of another kind translates for itself
    assert default["upstream_request"] == {"upstream": "first", "url": f"{first.url}/chat/completions",
                                           "body": default["upstream_request"]["body"]}
    everything = b"".join(path.read_bytes() for path in captures(tmp_path))
    assert b"sk-second-key-2222" not in everything and b"sk-first-key-1111" not in everything
    for path in captures(tmp_path):
        assert replay(path, check=True, out=io.StringIO()) == 0


@pytest.mark.parametrize("path", sorted(CAPTURES.glob("*.json")), ids=lambda p: p.stem)
def test_committed_captures_replay_identically(path: Path):
    out = io.StringIO()
    assert replay(path, check=True, out=out) == 0, out.getvalue()


def test_committed_captures_include_a_failure():
    outcomes = [load(p)["outcome"] for p in CAPTURES.glob("*.json")]
    assert len(outcomes) >= 3 and any(o["status"] == "failed" for o in outcomes)


async def test_replay_cli_reports_a_difference(tmp_path):
    """A capture whose client saw something else than today's code produces: exit 1 and a diff."""
    document = json.loads((CAPTURES / "text.json").read_bytes())
    delta = next(e for e in document["client_events"] if e["type"] == "response.output_text.delta")
    delta["delta"] = "Help"
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(document))
    code, out = await run_cli("replay", "--check", str(CAPTURES / "text.json"), str(changed))
    assert code == 1
    assert "captures/text.json: 10 events, identical, lifecycle valid" in out
    assert '-{"content_index":0,"delta":"Help"' in out and '+{"content_index":0,"delta":"Hel"' in out
    assert "changed.json: 10 events, DIFFERENT, lifecycle valid" in out
    assert "   4 response.output_text.delta" in out  # the events are printed


def test_debug_config_section(tmp_path):
    from gateway.config import load_config
    from gateway.errors import ConfigError
    path = tmp_path / "c.yaml"
    path.write_text("debug:\n  capture: off\n")  # a bare YAML `off` is a boolean
    assert load_config(path).debug.capture == "off"
    loaded = load_config(ROOT / "config.yaml")
    assert (loaded.debug.capture, loaded.debug.capture_max_dir_bytes) == ("off", 100 * 1024 * 1024)
    path.write_text("debug:\n  capture: failed\n  capture_sample: 1.5\n")
    with pytest.raises(ConfigError, match="debug.capture_sample: must be between 0 and 1"):
        load_config(path)
