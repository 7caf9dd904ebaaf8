"""uvicorn: the reaper takes over uvicorn's keep-alive timer and adds what uvicorn lacks.

uvicorn closes idle keep-alive connections with a loop timer per connection, cancelled
when data arrives and made again after every response. ``reaped_protocol(reaper,
max_requests)`` returns uvicorn's httptools protocol (``uvicorn.Config(http=...)`` takes a
protocol class; uvicorn offers no other hook; httptools comes with ``uvicorn[standard]``)
where the reaper keeps that clock instead:

* uvicorn arms its timer through ``self.loop.call_later`` once a response is complete and
  no pipelined request waits; the protocol's ``loop`` is a stand-in whose ``call_later``
  is one ``reaper.touch`` (restart the idle clock) and whose ``create_task`` is the loop's
  own. No timer is made or cancelled per request; the reaper closes connections idle for
  its ``idle_timeout`` from its one timer, with a FIN;
* the reaper tracks a ``Connection`` (the transport, as the reaper sees it) whose
  ``close()`` spares a request in flight: on ``IDLE`` the connection is tracked again with
  fresh clocks (uvicorn never times out a request either), on ``MAX_LIFETIME`` it closes
  after that response (``Connection: close`` when the headers are still unsent);
* ``connection_made`` / ``connection_lost`` add to / discard from the reaper, which applies
  ``KEEPALIVE`` to the socket, closes the connection at ``max_lifetime`` (spread by
  ``jitter``) and aborts it when its peer is found dead; a WebSocket upgrade leaves the
  reaper (uvicorn hands the connection to its WebSocket protocol);
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
from fastka import Event
from fastka.aio import KeepaliveReaper, OnEvent

KEEPALIVE = fastka.KeepaliveConfig()  # fastka's defaults; pass idle=, interval=, count= to change them

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Connection(asyncio.WriteTransport):
    """One uvicorn connection as the reaper sees it: its transport, except that ``close()``
    leaves a request in flight alone (``spared``; ``make_reaper``'s ``on_event`` decides)."""

    def __init__(self, protocol: HttpToolsProtocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.transport = protocol.transport
        self.spared = False

    def busy(self) -> bool:
        cycle = self.protocol.cycle
        return cycle is not None and not cycle.response_complete

    def close(self) -> None:
        if self.busy():
            self.spared = True
        else:
            self.transport.close()

    def abort(self) -> None:
        self.transport.abort()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return 0 if self.spared else self.transport.get_write_buffer_size()


class LoopView:
    """What uvicorn's protocol uses of its loop: ``create_task`` (the loop's own) and
    ``call_later``, which it calls only to arm its keep-alive timer: here one touch of
    ``connection`` instead."""

    def __init__(self, loop: asyncio.AbstractEventLoop, reaper: KeepaliveReaper, connection: Connection) -> None:
        self.create_task: Callable[..., "asyncio.Task[Any]"] = loop.create_task
        self._touch = reaper.touch
        self._connection = connection

    def call_later(self, delay: float, callback: Callable[[], object]) -> None:
        self._touch(self._connection)


def reaped_protocol(reaper: KeepaliveReaper, max_requests: Optional[int] = None) -> Type[HttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)``: uvicorn's httptools protocol,
    whose connections ``reaper`` tracks and closes when idle (the reaper's
    ``idle_timeout``; uvicorn's ``timeout_keep_alive`` is not used) and which answers the
    ``max_requests``-th request of a connection with ``Connection: close`` (``None``: no
    limit). Use a reaper from ``make_reaper``: its ``on_event`` handles spared requests."""
    if max_requests is not None and (isinstance(max_requests, bool) or not isinstance(max_requests, int) or max_requests < 1):
        raise ValueError(f"max_requests={max_requests!r} must be an int >= 1 or None")

    class Reaped(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.reaped = Connection(self)
            self.loop = LoopView(self.loop, reaper, self.reaped)  # type: ignore[assignment]
            reaper.add(self.reaped)

        def connection_lost(self, exc: Optional[Exception]) -> None:
            reaper.discard(self.reaped)
            super().connection_lost(exc)

        def handle_websocket_upgrade(self) -> None:
            reaper.discard(self.reaped)
            super().handle_websocket_upgrade()

    return Reaped if max_requests is None else limited(Reaped, max_requests)


def limited(base: Type[HttpToolsProtocol], max_requests: int) -> Type[HttpToolsProtocol]:
    """``base`` (uvicorn's httptools protocol or a subclass) answering the
    ``max_requests``-th request of a connection with ``Connection: close``."""

    class Limited(base):  # type: ignore[valid-type,misc]  # a class given at run time
        requests = 0

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self.requests += 1
            if self.requests >= max_requests and self.cycle is not None:
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
    config = uvicorn.Config(app, host=host, port=port, http=reaped_protocol(reaper, max_requests), lifespan="off", log_level=log_level)
    return uvicorn.Server(config)


def make_reaper(
    on_event: Optional[OnEvent] = None,
    *,
    idle_timeout: float = 5.0,
    max_lifetime: Optional[float] = 3600.0,
    jitter: float = 0.1,
) -> KeepaliveReaper:
    """The reaper for ``reaped_protocol``: idle closes after ``idle_timeout`` seconds
    (uvicorn's default keep-alive timeout is 5), ``max_lifetime`` seconds spread by
    ``jitter``, ``KEEPALIVE`` and dead peers. ``on_event(transport, event)`` gets uvicorn's
    transport for each close, not for a request that was spared."""

    def reaped(connection: asyncio.WriteTransport, event: Event) -> None:
        assert isinstance(connection, Connection)
        if connection.spared:
            connection.spared = False
            if event is Event.IDLE:  # idle time ran out during a request: not idle
                reaper.add(connection)
                return
            connection.protocol.cycle.keep_alive = False  # closes after this response
        if on_event is not None:
            on_event(connection.transport, event)

    reaper = KeepaliveReaper(idle_timeout, max_lifetime=max_lifetime, jitter=jitter, keepalive=KEEPALIVE, on_event=reaped)
    return reaper


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
