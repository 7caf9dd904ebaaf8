"""The README's asyncio example, run as written (on asyncio's loop and uvloop): an asyncio
echo server whose reads stay with asyncio while a KeepaliveManager (watch_readable=False)
reaps idle connections."""
from __future__ import annotations

import asyncio

import aio_helpers
from aio_helpers import loop_kind  # noqa: F401  (a fixture)

EXAMPLE = '''
import asyncio

import fastka


async def serve(host="127.0.0.1", port=0, idle_timeout=5.0):
    """An echo server whose idle connections are closed by a KeepaliveManager."""
    loop = asyncio.get_running_loop()
    mgr = fastka.KeepaliveManager(idle_timeout, watch_readable=False, close=False)
    transports = {}  # the manager's object (the transport's socket) -> transport

    def reap():
        for sock, event in mgr.poll(0):
            transport = transports.pop(sock, None)
            if transport is None:
                continue
            if event == fastka.Event.IDLE:
                transport.close()  # graceful: the peer reads EOF
            else:
                transport.abort()  # reset, timed out, peer gone

    async def timers():
        while True:
            # nothing tracked: a connection added meanwhile is due idle_timeout after its add
            delay = mgr.next_deadline()
            await asyncio.sleep(idle_timeout if delay is None else delay)
            reap()

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.sock = transport.get_extra_info("socket")
            transports[self.sock] = transport
            mgr.add(self.sock)

        def data_received(self, data):
            mgr.touch(self.sock)  # one request: restart the idle clock
            self.transport.write(data)

        def connection_lost(self, exc):
            transports.pop(self.sock, None)
            if self.sock in mgr:
                mgr.remove(self.sock)

    loop.add_reader(mgr.fileno(), reap)  # peer closes, resets and timeouts
    reaper = asyncio.ensure_future(timers())
    server = await loop.create_server(Echo, host, port)
    return server, mgr, reaper
'''


async def _scenario(ns):
    server, mgr, reaper = await ns["serve"](idle_timeout=0.3)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    try:
        busy_r, busy_w = await asyncio.open_connection("127.0.0.1", port)
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
        start = loop.time()
        # the busy client keeps talking past the idle timeout; the idle one says nothing
        while loop.time() - start < 0.6:
            busy_w.write(b"ping")
            assert await asyncio.wait_for(busy_r.readexactly(4), 2) == b"ping"
            await asyncio.sleep(0.05)
        assert await asyncio.wait_for(idle_r.read(10), 2) == b""  # reaped: EOF
        assert not busy_r.at_eof()
        assert len(mgr) == 1
        busy_w.close()
        idle_w.close()
        await asyncio.wait_for(busy_r.read(10), 2)
        for _ in range(50):
            if len(mgr) == 0:
                break
            await asyncio.sleep(0.02)
        assert len(mgr) == 0
    finally:
        reaper.cancel()
        loop.remove_reader(mgr.fileno())
        server.close()
        await server.wait_closed()
        mgr.close()


def test_readme_asyncio_example(monkeypatch, backend, loop_kind):
    import fastka

    monkeypatch.setattr(fastka, "KeepaliveManager", backend.KeepaliveManager)
    ns: dict = {}
    exec(compile(EXAMPLE, "README-asyncio-example", "exec"), ns)
    aio_helpers.run(loop_kind, lambda: _scenario(ns))
