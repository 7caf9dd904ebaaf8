"""uvicorn: what uvicorn lacks, added inside its own protocol; what it does well, left to it.

uvicorn closes idle keep-alive connections itself (``timeout_keep_alive``: a loop timer per
connection, re-armed after every response; it has no switch to turn it off, so a reaper's
idle clock beside it would only add its cost on top). It has no per-connection request
limit (``--limit-max-requests`` restarts the whole worker), no connection lifetime, and
no TCP keepalive settings or dead-peer reports. ``reaped_protocol(reaper, max_requests)``
returns uvicorn's httptools protocol (``uvicorn.Config(http=...)`` takes a protocol class;
uvicorn offers no other hook; httptools comes with ``uvicorn[standard]``) with these
methods extended, and no other work per request:

* ``connection_made`` / ``connection_lost``: the connection is added to / discarded from
  the reaper, which applies ``KEEPALIVE`` to its socket, closes it at ``max_lifetime``
  (spread by ``jitter``) and aborts it when its peer is found dead;
* with ``max_requests``, ``on_headers_complete`` counts the connection's requests and
  marks the last allowed one not keep-alive: uvicorn answers it with ``Connection: close``
  and closes the connection after the response, as it does for a client that asked for
  that. The client is told before the FIN.

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

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def reaped_protocol(reaper: KeepaliveReaper, max_requests: Optional[int] = None) -> Type[asyncio.Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)``: uvicorn's httptools protocol,
    whose connections ``reaper`` tracks and which answers the ``max_requests``-th request
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
    idle_timeout: float = 5.0,
    max_requests: Optional[int] = 100,
    log_level: str = "warning",
) -> uvicorn.Server:
    """A uvicorn.Server for ``app`` with the reaper in place, closing connections idle for
    ``idle_timeout`` seconds (uvicorn's own timer); run it with ``await server.serve()``
    inside the reaper's ``async with``."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=reaped_protocol(reaper, max_requests),
        lifespan="off",
        timeout_keep_alive=idle_timeout,  # type: ignore[arg-type]  # uvicorn takes seconds as a float too
        log_level=log_level,
    )
    return uvicorn.Server(config)


def make_reaper(on_event: Optional[OnEvent] = None, *, max_lifetime: Optional[float] = 3600.0, jitter: float = 0.1) -> KeepaliveReaper:
    """No idle clock (uvicorn's is already there): lifetime, keepalive and dead peers."""
    return KeepaliveReaper(None, max_lifetime=max_lifetime, jitter=jitter, keepalive=KEEPALIVE, on_event=on_event)


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
