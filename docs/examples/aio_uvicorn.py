"""uvicorn: connections limited by fastka.aio.KeepaliveReaper, with uvicorn's public hooks.

Two small pieces, no uvicorn subclass:

* ``reaped_protocol(reaper)``: a protocol class for ``uvicorn.Config(http=...)``, which
  takes one. It wraps uvicorn's own protocol, adds each connection to the reaper and
  makes its transport visible (a context variable) to the request tasks uvicorn starts;
* ``touch_per_request(app, reaper)``: ASGI middleware that touches the connection once the
  last body message of a response has been sent.

uvicorn's own ``timeout_keep_alive`` is set above ``idle_timeout``: the reaper decides.

``python aio_uvicorn.py PORT`` serves on 127.0.0.1:PORT (0: any free port).
"""
from __future__ import annotations

import asyncio
import contextvars
import sys
from typing import Any, Awaitable, Callable, MutableMapping, Optional, Type, cast

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

import fastka
from fastka.aio import KeepaliveReaper, OnEvent

KEEPALIVE = fastka.KeepaliveConfig()  # fastka's defaults; pass idle=, interval=, count= to change them

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_transport: contextvars.ContextVar[Optional[asyncio.Transport]] = contextvars.ContextVar("fastka_transport", default=None)


def reaped_protocol(reaper: KeepaliveReaper, inner: Type[asyncio.Protocol] = AutoHTTPProtocol) -> Type[asyncio.Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` around uvicorn's ``inner`` one."""

    class Reaped(asyncio.Protocol):
        def __init__(self, **kwargs: Any) -> None:
            self.inner: Any = inner(**kwargs)  # uvicorn's keyword arguments, passed on

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
            reaper.add(self.transport)
            self.inner.connection_made(transport)

        def data_received(self, data: bytes) -> None:
            token = _transport.set(self.transport)  # request tasks started here inherit it
            try:
                self.inner.data_received(data)
            finally:
                _transport.reset(token)

        def eof_received(self) -> Optional[bool]:
            result: Optional[bool] = self.inner.eof_received()
            return result

        def connection_lost(self, exc: Optional[Exception]) -> None:
            reaper.discard(self.transport)
            self.inner.connection_lost(exc)

        def pause_writing(self) -> None:
            self.inner.pause_writing()

        def resume_writing(self) -> None:
            self.inner.resume_writing()

    return Reaped


def touch_per_request(app: ASGIApp, reaper: KeepaliveReaper) -> ASGIApp:
    """ASGI middleware: one touch per HTTP response, after its last byte was handed over."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        transport = _transport.get()
        if scope["type"] != "http" or transport is None:
            await app(scope, receive, send)
            return

        async def send_then_touch(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                reaper.touch(transport)

        await app(scope, receive, send_then_touch)

    return wrapped


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
    log_level: str = "warning",
) -> uvicorn.Server:
    """A uvicorn.Server for ``app`` with the reaper in place; run it with ``await
    server.serve()`` inside the reaper's ``async with``."""
    config = uvicorn.Config(
        touch_per_request(app, reaper),
        host=host,
        port=port,
        http=reaped_protocol(reaper),
        lifespan="off",
        timeout_keep_alive=3600,
        log_level=log_level,
    )
    return uvicorn.Server(config)


def make_reaper(idle_timeout: float = 5.0, max_requests: int = 100, on_event: Optional[OnEvent] = None) -> KeepaliveReaper:
    return KeepaliveReaper(idle_timeout, max_requests=max_requests, keepalive=KEEPALIVE, on_event=on_event)


async def main(port: int) -> None:
    async with make_reaper() as reaper:
        await server(hello, reaper, port=port).serve()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
