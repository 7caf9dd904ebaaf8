"""aiohttp: a web.AppRunner whose connections fastka.aio.KeepaliveReaper limits.

A middleware adds each connection to the reaper at its first request and touches it once
the response has been sent in full, so the request that reaches ``max_requests`` still
gets its answer before the FIN. A request pipelined behind that one finds its connection
closed: it is not added again, and its response is dropped as aiohttp drops one for a
client that went away. aiohttp's own ``keepalive_timeout`` is set above
``idle_timeout``: the reaper decides. A connection that never sends a request is left to
aiohttp.

``python aio_aiohttp.py PORT`` serves on 127.0.0.1:PORT (0: any free port).
"""
from __future__ import annotations

import asyncio
import sys
from typing import Optional, Tuple

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

import fastka
from fastka.aio import KeepaliveReaper, OnEvent

KEEPALIVE = fastka.KeepaliveConfig()  # fastka's defaults; pass idle=, interval=, count= to change them


def reaping(reaper: KeepaliveReaper) -> Middleware:
    """The middleware: one touch per request, after the response is on its way."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        if transport is None:  # the client is already gone
            return await handler(request)
        if transport not in reaper and not transport.is_closing():  # closing: reaped already
            reaper.add(transport)
        response = await handler(request)
        try:
            await response.prepare(request)
            await response.write_eof()  # sent in full (aiohttp will not send it again)
        except ConnectionError:  # closed meanwhile (a pipelined request behind the limit)
            return response  # aiohttp finds it closed too and ends quietly
        reaper.touch(transport)
        return response

    return middleware


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello\n")


async def start(
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    idle_timeout: float = 5.0,
    max_requests: int = 100,
    on_event: Optional[OnEvent] = None,
) -> Tuple[web.AppRunner, KeepaliveReaper, int]:
    """Serve ``hello``; returns the runner (``await runner.cleanup()`` stops it), the
    reaper (``reaper.close()`` after the runner) and the port."""
    reaper = KeepaliveReaper(idle_timeout, max_requests=max_requests, keepalive=KEEPALIVE, on_event=on_event)
    app = web.Application(middlewares=[reaping(reaper)])
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, keepalive_timeout=idle_timeout + 60)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound: int = runner.addresses[0][1]
    return runner, reaper, bound


async def main(port: int) -> None:
    runner, reaper, bound = await start(port=port)
    print("serving on port", bound, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        reaper.close()


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit(f"usage: python {sys.argv[0]} PORT  (0: any free port)")
    asyncio.run(main(int(sys.argv[1])))
