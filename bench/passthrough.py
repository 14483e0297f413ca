"""The floor: a raw aiohttp byte passthrough in front of a Chat Completions upstream.

Any POST to /v1/chat/completions or /v1/responses is forwarded unchanged to
{upstream}/chat/completions and the upstream's bytes are streamed back as they arrive, without
parsing, so the same driver can aim at it and at a gateway. GET /healthz answers 200.
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

from bench.common import LOOPBACK, raise_fd_limit

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    session = request.app[SESSION]
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    async with session.post(request.app[UPSTREAM], data=body, headers=headers) as upstream:
        response = web.StreamResponse(status=upstream.status)
        response.content_type = upstream.content_type
        await response.prepare(request)
        async for data in upstream.content.iter_any():
            await response.write(data)
        await response.write_eof()
    return response


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app(upstream_url: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream_url.rstrip("/") + "/chat/completions"

    async def session_context(app: web.Application):  # type: ignore[no-untyped-def]
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(session_context)
    app.router.add_post("/v1/chat/completions", forward)
    app.router.add_post("/v1/responses", forward)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--upstream-url", default="http://127.0.0.1:8090/v1")
    args = parser.parse_args()
    raise_fd_limit()
    web.run_app(make_app(args.upstream_url), host=args.host, port=args.port, backlog=4096, access_log=None, print=None)


if __name__ == "__main__":
    main()
