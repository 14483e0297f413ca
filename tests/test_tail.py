"""`gateway tail` over real log output: a gateway process at debug level serves a few requests, its
stdout goes through `gateway tail` exactly as `journalctl -o cat | gateway tail` would."""
from __future__ import annotations

import re

import pytest

from .conftest import gateway_process, run_cli
from .scripted_upstream import Reply, chunk, error_reply, sse, text_reply, usage


@pytest.fixture
async def gateway_log(upstream, http) -> bytes:
    """The JSON log of a real run: a success, an upstream 500, a stream cut mid-way, a bad request."""
    upstream.enqueue(text_reply("Hel", "lo", use=usage(13, 17)),
                     error_reply(500, "engine exploded", code="internal"),
                     Reply([sse(chunk({"content": "cut"}), done=False)], end="abort"))
    async with gateway_process("--upstream-url", upstream.url, "--log-level", "debug") as gw:
        url = gw.url + "/v1/responses"
        for request_id, model in (("req-ok", "scripted"), ("req-500", "other-model"), ("req-cut", "scripted")):
            async with http.post(url, json={"model": model, "input": "hi", "stream": True},
                                 headers={"X-Request-ID": request_id}) as response:
                await response.read()
        async with http.post(url, data=b"{not json", headers={"X-Request-ID": "req-bad",
                                                               "Content-Type": "application/json"}) as response:
            assert response.status == 400
    return bytes(gw.stdout)


async def test_one_readable_line_per_request(gateway_log):
    code, out = await run_cli("tail", stdin=gateway_log)
    assert code == 0
    lines = out.splitlines()
    assert [re.search(r"req-\w+", line).group() for line in lines] == ["req-ok", "req-500", "req-cut", "req-bad"]
    ok, upstream_500, cut, bad = lines
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}  req-ok  scripted  default  "
                        r"completed  ttft [\d.]+ms  13→17 tok  [\d.]+ms", ok), ok
    assert "FAILED" not in ok and "\033[" not in out  # not a terminal: no colour
    assert "other-model" in upstream_500 and upstream_500.endswith("FAILED internal: engine exploded")
    assert "failed" in cut and re.search(r"FAILED upstream_(disconnected|truncated): ", cut), cut
    assert "  http 400  " in bad and "FAILED invalid_json: We could not parse the JSON body" in bad


async def test_dash_reads_stdin(gateway_log):
    """`gateway tail -` is stdin, as `gateway tail` is; a torn, non-UTF-8 line on the way changes nothing."""
    _, plain = await run_cli("tail", stdin=gateway_log)
    code, dash = await run_cli("tail", "-", stdin=b"\xff\xfe not json\n" + gateway_log)
    assert code == 0 and "Traceback" not in dash
    assert dash == plain and len(dash.splitlines()) == 4


async def test_filters(gateway_log, tmp_path):
    log = tmp_path / "gateway.log"
    log.write_bytes(gateway_log)
    _, failed = await run_cli("tail", str(log), "--failed")
    assert [re.search(r"req-\w+", line).group() for line in failed.splitlines()] == ["req-500", "req-cut", "req-bad"]
    _, by_model = await run_cli("tail", str(log), "--model", "other-model")
    assert len(by_model.splitlines()) == 1 and "req-500" in by_model


async def test_request_id_shows_the_debug_event_lines(gateway_log):
    _, out = await run_cli("tail", "--request-id", "req-ok", stdin=gateway_log)
    lines = out.splitlines()
    chunks = [line for line in lines if "upstream.chunk" in line]
    events = [line for line in lines if "response.event" in line]
    assert len(chunks) == 5 and '"content":"Hel"' in chunks[1]
    assert [re.search(r"response\.event +\d+ (\S+)", line).group(1) for line in events][:5] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta"]
    assert '"delta":"Hel"' in events[4] and "response.completed" in events[-1]
    assert "req-ok" in lines[-1] and "completed" in lines[-1]
    assert not any("req-500" in line for line in lines)


async def test_colour_when_asked_for_a_terminal(gateway_log):
    """Colour follows the terminal; a pseudo-terminal makes `isatty()` true for the real command."""
    import os
    import pty
    import subprocess
    import sys

    from .conftest import ROOT
    leader, follower = pty.openpty()
    proc = subprocess.run([sys.executable, "-m", "gateway", "tail", "--failed"], input=gateway_log,
                          stdout=follower, stderr=subprocess.PIPE, cwd=ROOT, timeout=60, check=True)
    os.close(follower)
    out = b""
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        out += data
    os.close(leader)
    assert proc.returncode == 0
    assert b"\033[31m\033[1m" in out and b"FAILED internal: engine exploded" in out
