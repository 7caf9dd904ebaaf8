"""uvicorn: connections limited by fastka.aio.KeepaliveReaper, inside uvicorn's own protocol.

uvicorn offers no hook around a connection's keep-alive, but ``uvicorn.Config(http=...)``
takes a protocol class. ``reaped_protocol(reaper)`` returns uvicorn's httptools protocol
with three methods extended, and nothing else per request:

* ``connection_made`` / ``connection_lost``: the connection is added to / discarded from
  the reaper;
* ``on_response_complete`` (uvicorn calls it once a response has been written in full):
  one ``reaper.touch``;
* with ``max_requests``, ``on_headers_complete`` counts the connection's requests and
  marks the last one not keep-alive: uvicorn then answers it with ``Connection: close``
  and closes the connection after the response, as it does for a client that asked for
  that. The request limit is the protocol's, so a client is told before the FIN.

The reaper closes idle connections (``idle_timeout``), old ones (``max_lifetime``, spread
by ``jitter``) and dead peers found by TCP keepalive. uvicorn keeps arming its own
keep-alive timer after every response (it has no switch to turn it off); it is set to
``BACKSTOP`` seconds, far above ``idle_timeout``, so that the reaper's close comes first.

``python aio_uvicorn.py PORT`` serves on 127.0.0.1:PORT (0: any free port), on uvloop
when it is installed (uvicorn's own choice of loop).
"""
from __future__ import annotations

import asyncio
import sys
from typing import Any, Awaitable, Callable, MutableMapping, Optional, Type

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

import fastka
from fastka.aio import KeepaliveReaper, OnEvent

KEEPALIVE = fastka.KeepaliveConfig()  # fastka's defaults; pass idle=, interval=, count= to change them
BACKSTOP = 3600  # seconds: uvicorn's own keep-alive timer, a backstop behind the reaper

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def reaped_protocol(reaper: KeepaliveReaper, max_requests: Optional[int] = None) -> Type[asyncio.Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)``: uvicorn's httptools protocol,
    whose connections ``reaper`` limits and which answers the ``max_requests``-th request
    of a connection with ``Connection: close`` (``None``: no limit)."""
    if max_requests is not None and (isinstance(max_requests, bool) or not isinstance(max_requests, int) or max_requests < 1):
        raise ValueError(f"max_requests={max_requests!r} must be an int >= 1 or None")

    class Reaped(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            reaper.add(transport)

        def connection_lost(self, exc: Optional[Exception]) -> None:
            reaper.discard(self.transport)
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            reaper.touch(self.transport)

    if max_requests is None:
        return Reaped
    limit: int = max_requests

    class Limited(Reaped):
        requests = 0

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self.requests += 1
            if self.requests >= limit and self.cycle is not None:
                self.cycle.keep_alive = False  # uvicorn sends Connection: close, then closes

    return Limited


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain"), (b"content-length", b"6")]})
    await send({"type": "http.response.body", "body": b"hello\n"})


def server(
    app: ASGIApp,
    reaper: KeepaliveReaper,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_requests: Optional[int] = 100,
    log_level: str = "warning",
) -> uvicorn.Server:
    """A uvicorn.Server for ``app`` with the reaper in place; run it with ``await
    server.serve()`` inside the reaper's ``async with``."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=reaped_protocol(reaper, max_requests),
        lifespan="off",
        timeout_keep_alive=BACKSTOP,
        log_level=log_level,
    )
    return uvicorn.Server(config)


def make_reaper(idle_timeout: float = 5.0, on_event: Optional[OnEvent] = None, *, max_lifetime: Optional[float] = None, jitter: float = 0.0) -> KeepaliveReaper:
    return KeepaliveReaper(idle_timeout, max_lifetime=max_lifetime, jitter=jitter, keepalive=KEEPALIVE, on_event=on_event)


async def main(port: int) -> None:
    async with make_reaper() as reaper:
        await server(hello, reaper, port=port).serve()


def run(port: int) -> None:
    """Serve ``hello`` on the loop uvicorn would pick itself (uvloop when installed)."""
    factory = uvicorn.Config(hello).get_loop_factory()
    loop = factory() if factory is not None else asyncio.new_event_loop()
    try:
        loop.run_until_complete(main(port))
    finally:
        loop.close()


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit(f"usage: python {sys.argv[0]} PORT  (0: any free port)")
    run(int(sys.argv[1]))
