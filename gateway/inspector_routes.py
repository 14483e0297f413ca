"""HTTP side of the live inspector: the page, its lists, a live event feed per request, capture files.

Added to the app only when `debug.inspector` is on (otherwise `/debug` is a plain 404). The
per-request feed is aiohttp-sse's `EventSourceResponse`: a handful of operators' pages, so its
ping task per feed is affordable (README, "The SSE sink and aiohttp-sse").
"""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import orjson
from aiohttp import web
from aiohttp_sse import EventSourceResponse

from .errors import GatewayError
from .fast_path import plain
from .inspector import Batch, Feed, Inspector, Watch
from .keys import request_key
from .state import STATE

inspector_routes = web.RouteTableDef()
_STATIC = resources.files("gateway") / "static"
_CAPTURE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.json$")
# Seconds between a feed's keep-alive comments; also how often it notices a page that went away.
FEED_PING = 10.0


def may_inspect(request: web.Request) -> bool:
    """Whether `request` may use the inspector's data (lists, feeds, capture files).

    Without gateway keys anyone who reaches the port may: keep the inspector off, or the gateway on
    loopback or behind an authenticating proxy. With `auth.keys`, only a key marked `admin: true`
    (from the Authorization header, or the page's `gateway_key` cookie: an EventSource cannot send
    headers).
    """
    if not STATE.get(request.app).keys.enabled:
        return True
    key = request_key(request)
    return key is not None and key.admin


def _inspector(request: web.Request) -> Inspector:
    if not may_inspect(request):
        raise GatewayError("The inspector is for admin keys only.", status=403, code="forbidden")
    inspector = STATE.get(request.app).inspector
    assert inspector is not None  # the routes exist only when it is on
    return inspector


def _static(name: str, content_type: str) -> web.Response:
    return web.Response(body=(_STATIC / name).read_bytes(), content_type=content_type,
                        headers={"Cache-Control": "no-cache"})


@inspector_routes.get("/debug")
async def to_page(request: web.Request) -> web.Response:
    """`/debug/` is the page, so its relative links (script, lists, feeds) resolve under `/debug/`.

    The page and its script hold no data and are served to anyone (the page asks for a key when its
    lists answer 401/403); everything else checks `may_inspect`."""
    raise web.HTTPFound("debug/")  # relative: also right behind a proxy's path prefix


@inspector_routes.get("/debug/")
async def page(request: web.Request) -> web.Response:
    return _static("inspector.html", "text/html")


@inspector_routes.get("/debug/inspector.js")
async def script(request: web.Request) -> web.Response:
    return _static("inspector.js", "text/javascript")


@inspector_routes.get("/debug/requests")
async def requests(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps(_inspector(request).snapshot()), content_type="application/json",
                        headers={"Cache-Control": "no-cache"})


@inspector_routes.get("/debug/requests/{key}/events")
async def events(request: web.Request) -> web.StreamResponse:
    """SSE: the request's events so far, then each batch as it arrives (`data:` a JSON list), then `end`."""
    watch = _inspector(request).find(request.match_info["key"])
    if watch is None:
        raise GatewayError("No such request (it may have left the recent list).", status=404, code="not_found")
    backlog, feed = watch.follow()
    sse = EventSourceResponse(ping_interval=FEED_PING)
    try:
        await sse.prepare(request)
        async with sse:
            await _relay(sse, watch, backlog, feed)
    except ConnectionResetError:
        pass  # the page went away
    finally:
        watch.unfollow(feed)
    return sse


async def _relay(sse: EventSourceResponse, watch: Watch, backlog: list[Batch], feed: Feed | None) -> None:
    for batch in backlog:
        await _send(sse, batch)
    del backlog[:]
    while feed is not None and not feed.done:
        batch = await feed.next(FEED_PING)
        if batch is not None:
            await _send(sse, batch)
        elif not sse.is_connected():
            return
    if feed is not None and feed.lagged:
        await sse.send('"the page fell behind; open the request again"', event="lagged")
    else:
        await sse.send(orjson.dumps(watch.describe()).decode(), event="end")


async def _send(sse: EventSourceResponse, batch: Batch) -> None:
    if batch:
        await sse.send(orjson.dumps(plain(batch)).decode())


@inspector_routes.get("/debug/captures/{name}")
async def capture(request: web.Request) -> web.FileResponse:
    """A capture file (`debug.capture`); `?download=1` asks the browser to save it."""
    _inspector(request)
    name = request.match_info["name"]
    path = Path(STATE.get(request.app).config.debug.capture_dir) / name
    if not _CAPTURE_NAME.match(name) or not path.is_file():
        raise GatewayError("No such capture file (captures are removed oldest first).", status=404,
                           code="not_found")
    headers = {"Content-Type": "application/json", "Cache-Control": "no-cache"}
    if request.query.get("download"):
        headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return web.FileResponse(path, headers=headers)
