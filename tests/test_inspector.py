"""The live inspector (`/debug`, debug.inspector) over the real gateway and scripted upstream.

The HTTP tests read the page's own endpoints (the lists, the SSE feed, capture files); the
browser tests drive the page in a real headless chromium (the `chromium` fixture installs it).
"""
from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.app import create_app
from gateway.config import UpstreamConfig
from gateway.inspector import FEED_BACKLOG, MAX_BATCHES, MAX_KEPT_BYTES, Feed, Watch
from gateway.pipeline import Run
from gateway.sse import DONE_FRAME, SSEDecoder, encode_events
from gateway.translate import translate_request

from . import conftest
from .conftest import ROOT, assert_valid_stream, replace
from .helpers import post, post_stream
from .scripted_upstream import error_reply, paced_reply, text_reply

WORDS = ["Once ", "upon ", "a ", "time ", "there ", "was ", "a ", "stream."]


@pytest.fixture
def start_gateway(aiohttp_server, upstream, tmp_path):
    """A gateway with the inspector on; keywords are debug.* keys."""
    async def start(**debug: Any) -> Any:
        config = replace(conftest.gateway_config(upstream.url),
                         debug={"inspector": True, "capture_dir": str(tmp_path / "captures"), **debug})
        return await aiohttp_server(create_app(config), host="127.0.0.1")
    return start


async def listing(http, gateway) -> dict[str, Any]:
    async with http.get(gateway.make_url("/debug/requests")) as response:
        assert response.status == 200
        return await response.json()


async def until(probe, what: str, timeout: float = 10.0) -> Any:
    """Poll `probe()` (async) until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if found := await probe():
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def row(rows: list[dict[str, Any]], request_id: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["request_id"] == request_id), None)


async def feed(http, gateway, key: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Follow a request's SSE feed to its end: the events (in batches, flattened) and the `end` summary."""
    decoder, events = SSEDecoder(), []
    async with http.get(gateway.make_url(f"/debug/requests/{key}/events")) as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
        async for data in response.content.iter_any():
            for name, payload in decoder.feed(data):
                if name == "end":
                    return events, orjson.loads(payload)
                assert name in ("", "message"), (name, payload)
                events += orjson.loads(payload)
    raise AssertionError(f"the feed closed without `end` after {len(events)} events")


async def test_off_by_default(gateway, http):
    response, body = await post(http, gateway, {"model": "scripted", "input": "hi"})
    assert response.status == 200
    for path in ("/debug", "/debug/", "/debug/requests"):
        async with http.get(gateway.make_url(path)) as answer:
            assert answer.status == 404, path


async def test_an_open_stream_is_listed_and_followed_live(start_gateway, upstream, http):
    gateway = await start_gateway()
    upstream.enqueue(paced_reply(*WORDS, gap=0.15))
    client = asyncio.ensure_future(post_stream(http, gateway, {}, headers={"X-Request-ID": "req-paced"}))

    async def streaming() -> Any:
        found = row((await listing(http, gateway))["open"], "req-paced")
        return found if found and found["tokens"] >= 1 else None
    live = await until(streaming, "the paced stream in the open list with a token")
    assert live["state"] == "open" and live["model"] == "scripted" and live["upstream"] == "default"
    assert live["ttft_ms"] is not None and live["age_s"] >= 0 and live["tokens"] < len(WORDS)

    events, end = await feed(http, gateway, live["id"])  # joined mid-stream: backlog, then live batches
    response, raw = await client
    assert response.status == 200
    # The feed carried exactly what the client was sent, as one valid stream.
    assert encode_events(events) + DONE_FRAME == raw  # the end marker follows the events (server.sse_done)
    assert_valid_stream(raw)
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "".join(WORDS)
    assert end["state"] == "finished" and end["status"] == "completed" and end["tokens"] == len(WORDS)

    listed = await listing(http, gateway)
    assert row(listed["open"], "req-paced") is None
    recent = row(listed["recent"], "req-paced")
    assert recent == end and recent["duration_ms"] >= 0.15 * len(WORDS) * 1000


async def test_failed_requests_show_their_error(start_gateway, upstream, http):
    gateway = await start_gateway()
    upstream.enqueue(paced_reply("Half ", "a ", gap=0.01, error="the model fell over"),
                     error_reply(503, "no capacity", code="overloaded"))
    response, raw = await post_stream(http, gateway, {}, headers={"X-Request-ID": "req-midway"})
    assert response.status == 200 and b"response.failed" in raw
    response, _ = await post(http, gateway, {"model": "scripted", "input": "hi"}, headers={"X-Request-ID": "req-early"})
    assert response.status == 503

    recent = (await listing(http, gateway))["recent"]
    assert [r["request_id"] for r in recent] == ["req-early", "req-midway"]  # newest first
    midway, early = row(recent, "req-midway"), row(recent, "req-early")
    assert midway["state"] == "failed" and midway["status"] == "failed"
    assert "the model fell over" in midway["error_message"] and midway["error_code"]
    assert early["state"] == "failed" and early["http_status"] == 503 and "no capacity" in early["error_message"]
    assert early["events"] == 0

    events, end = await feed(http, gateway, midway["id"])  # a finished request replays what it kept
    assert events[-1]["type"] == "response.failed" and end == midway
    assert encode_events(events) + DONE_FRAME == raw  # the end marker follows the events (server.sse_done)


async def test_capture_file_and_its_download_link(start_gateway, upstream, http, tmp_path):
    gateway = await start_gateway(capture="all")
    upstream.enqueue(text_reply("Hi"))
    response, _ = await post_stream(http, gateway, {}, headers={"X-Request-ID": "req-captured"})
    assert response.status == 200
    name = row((await listing(http, gateway))["recent"], "req-captured")["capture"]
    assert name and (tmp_path / "captures" / name).is_file()
    async with http.get(gateway.make_url(f"/debug/captures/{name}"), params={"download": "1"}) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Disposition"] == f'attachment; filename="{name}"'
        document = orjson.loads(await answer.read())
    assert document["request_id"] == "req-captured" and document["upstream_reads"]
    for bad in ("nope.json", "..%2Fconfig.yaml", "%2Fetc%2Fpasswd"):
        async with http.get(gateway.make_url(f"/debug/captures/{bad}")) as answer:
            assert answer.status == 404, bad


async def test_page_and_script_are_served_and_the_ring_is_bounded(start_gateway, upstream, http):
    gateway = await start_gateway(inspector_recent=2)
    async with http.get(gateway.make_url("/debug"), allow_redirects=False) as answer:
        assert answer.status == 302 and answer.headers["Location"] == "debug/"
    async with http.get(gateway.make_url("/debug")) as answer:
        page = await answer.text()
        assert answer.status == 200 and answer.content_type == "text/html" and 'src="inspector.js"' in page
        assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere
    async with http.get(gateway.make_url("/debug/inspector.js")) as answer:
        assert answer.status == 200 and "EventSource" in await answer.text()
    for n in range(3):
        await post(http, gateway, {"model": "scripted", "input": "hi"}, headers={"X-Request-ID": f"req-{n}"})
    assert [r["request_id"] for r in (await listing(http, gateway))["recent"]] == ["req-2", "req-1"]
    async with http.get(gateway.make_url("/debug/requests/resp_unknown/events")) as answer:
        assert answer.status == 404 and (await answer.json())["error"]["code"] == "not_found"


def test_config_keys(tmp_path):
    from gateway.config import load_config
    from gateway.errors import ConfigError
    shipped = load_config(ROOT / "config.yaml").debug
    assert (shipped.inspector, shipped.inspector_recent) == (False, 50)
    path = tmp_path / "c.yaml"
    path.write_text("debug:\n  inspector: yes\n  inspector_recent: 0\n")
    with pytest.raises(ConfigError, match="debug.inspector_recent: must be at least 1"):
        load_config(path)


def new_watch() -> Watch:
    chat = translate_request({"model": "m", "input": "hi", "stream": True}, UpstreamConfig())
    return Watch(Run("req-unit", chat), "http://upstream/v1")


async def test_an_unwatched_watch_keeps_a_bounded_list_of_batches():
    watch = new_watch()
    batch = [{"type": "response.output_text.delta", "delta": "x"}]
    for _ in range(MAX_BATCHES + 5):
        await watch.send(batch)
    assert len(watch.batches) == MAX_BATCHES and watch.dropped == 5 and not watch.feeds
    assert watch.describe()["tokens"] == MAX_BATCHES


async def test_an_ended_request_keeps_its_batches_within_a_byte_budget():
    """Recent requests are kept with their events: 1 MB deltas must not stay for each of them."""
    watch = new_watch()
    head = [{"type": "response.created", "sequence_number": 0}]
    big = [{"type": "response.output_text.delta", "delta": "x" * (1024 * 1024)}]
    terminal = [{"type": "response.completed", "sequence_number": 9}]
    for batch in (head, big, big, big, terminal):
        await watch.send(batch)
    watch.end({"status": "completed"}, None)
    assert watch.batches == [head, terminal]
    assert sum(len(encode_events(batch)) for batch in watch.batches) <= MAX_KEPT_BYTES
    assert watch.describe()["events_dropped"] == 3


async def test_a_feed_that_falls_behind_is_ended_not_grown():
    watch = new_watch()
    backlog, follower = watch.follow()
    assert backlog == [] and isinstance(follower, Feed)
    for _ in range(FEED_BACKLOG + 1):
        await watch.send([{"type": "response.output_text.delta", "delta": "x"}])
    assert follower.lagged and follower.done and len(follower.pending) == FEED_BACKLOG
    assert await follower.next(0.01) is None
    watch.unfollow(follower)
    assert not watch.feeds


# ------------------------------------------------------------------------------ in a real browser
SCREENSHOT = ROOT / "docs" / "inspector.png"


@pytest.fixture
async def page(chromium: str) -> Any:
    from playwright.async_api import async_playwright
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            tab = await browser.new_page(viewport={"width": 1360, "height": 760})
            yield tab
        finally:
            await browser.close()


async def test_browser_shows_a_paced_stream_live_and_a_failure(start_gateway, upstream, http, page, tmp_path):
    from playwright.async_api import expect
    gateway = await start_gateway(capture="failed")
    await page.goto(str(gateway.make_url("/debug")))
    await expect(page.locator("#open tbody")).to_contain_text("no open streams")

    upstream.enqueue(paced_reply(*WORDS, gap=0.4))
    client = asyncio.ensure_future(post_stream(http, gateway, {}, headers={"X-Request-ID": "req-browser-paced"}))
    open_row = page.locator("#open tbody tr", has_text="req-browser-paced")
    await expect(open_row).to_be_visible(timeout=5000)
    await open_row.click()
    # Deltas show up while the stream is still running, then the rest of it.
    await expect(page.locator("#detail-text")).to_contain_text("Once upon", timeout=5000)
    assert not client.done(), "the stream ended before the page showed its first deltas"
    assert "stream." not in await page.locator("#detail-text").text_content()
    await expect(page.locator("#detail-events")).to_contain_text("response.output_text.delta")
    await expect(page.locator("#detail-text")).to_have_text("".join(WORDS), timeout=10000)
    await expect(page.locator("#feed-state")).to_contain_text("ended")
    assert (await client)[0].status == 200
    await expect(page.locator("#recent tbody tr", has_text="req-browser-paced")).to_contain_text("completed")

    upstream.enqueue(paced_reply("Half ", "way ", gap=0.05, error="the model fell over"))
    assert (await post_stream(http, gateway, {}, headers={"X-Request-ID": "req-browser-failed"}))[0].status == 200
    failed_row = page.locator("#recent tbody tr.failed", has_text="req-browser-failed")
    await expect(failed_row).to_contain_text("the model fell over", timeout=5000)
    await failed_row.click()
    await expect(page.locator("#detail-error")).to_contain_text("the model fell over")
    await expect(page.locator("#detail-events li.failed")).to_contain_text("response.failed")
    link = page.locator("#capture-link")
    await expect(link).to_be_visible()
    assert (await link.get_attribute("href")).endswith("?download=1")
    await expect(page.locator("#capture-raw")).to_contain_text("the model fell over")
    await page.screenshot(path=str(tmp_path / "inspector.png"))
    if os.environ.get("UPDATE_SCREENSHOT"):
        # The README's picture: a stream open, one finished, one failed and selected.
        upstream.enqueue(paced_reply(*WORDS * 20, gap=0.5))
        running = asyncio.ensure_future(post_stream(http, gateway, {}, headers={"X-Request-ID": "req-7f3a91c2"}))
        await expect(page.locator("#open tbody tr", has_text="req-7f3a")).to_be_visible(timeout=5000)
        await asyncio.sleep(2.5)  # a few tokens and a second of age
        SCREENSHOT.parent.mkdir(exist_ok=True)
        await page.screenshot(path=str(SCREENSHOT))
        running.cancel()
    assert Path(tmp_path / "inspector.png").stat().st_size > 10_000


async def test_with_keys_only_admin_keys_may_inspect(aiohttp_server, upstream, http):
    """The page is open (it holds no data); lists and feeds need an admin key, by header or the page's cookie."""
    admin, user = "sk-gw-admin-0123456789", "sk-gw-user-0123456789"
    keys = [{"name": "ops", "sha256": hashlib.sha256(admin.encode()).hexdigest(), "admin": True},
            {"name": "dev", "sha256": hashlib.sha256(user.encode()).hexdigest()}]
    config = conftest.routed_config([conftest.upstream_entry("local", upstream.url)], routing={"default": "local"},
                                    auth={"keys": keys}, debug={"inspector": True})
    gateway = await aiohttp_server(create_app(config), host="127.0.0.1")
    async with http.get(gateway.make_url("/debug/")) as response:
        assert response.status == 200
    statuses = []
    for headers in ({}, {"Authorization": f"Bearer {user}"}, {"Authorization": f"Bearer {admin}"},
                    {"Cookie": f"gateway_key={admin}"}, {"Cookie": f"gateway_key={user}"}):
        async with http.get(gateway.make_url("/debug/requests"), headers=headers) as response:
            statuses.append(response.status)
    assert statuses == [401, 403, 200, 200, 403]
    # The cookie is only read for the inspector: elsewhere it is no key.
    async with http.post(gateway.make_url("/v1/responses"), json={"model": "m", "input": "hi"},
                         headers={"Cookie": f"gateway_key={admin}"}) as response:
        assert response.status == 401
