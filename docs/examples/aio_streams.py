"""asyncio streams: a line-echo server whose connections fastka.aio.KeepaliveReaper limits.

Each line is one request. A connection is closed with a FIN after ``max_requests`` lines,
or ``idle_timeout`` seconds after its last one; a dead peer is aborted; every accepted
socket gets the keepalive probes of ``KEEPALIVE``.

``python aio_streams.py PORT`` serves on 127.0.0.1:PORT (0: any free port).
"""
from __future__ import annotations

import asyncio
import sys
from typing import Optional, Tuple

import fastka
from fastka.aio import KeepaliveReaper, OnEvent

KEEPALIVE = fastka.KeepaliveConfig()  # fastka's defaults; pass idle=, interval=, count= to change them


async def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    idle_timeout: float = 5.0,
    max_requests: int = 100,
    on_event: Optional[OnEvent] = None,
) -> Tuple[asyncio.Server, KeepaliveReaper]:
    """Start the server; stop it with ``server.close()`` and ``reaper.close()``."""
    reaper = KeepaliveReaper(idle_timeout, max_requests=max_requests, keepalive=KEEPALIVE, on_event=on_event)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        transport = writer.transport
        try:
            reaper.add(transport)
            while line := await reader.readline():  # b"" once the reaper closed it
                writer.write(line)
                reaper.touch(transport)  # one request served
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            reaper.discard(transport)
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    return server, reaper


async def main(port: int) -> None:
    server, reaper = await serve(port=port)
    print("serving on", server.sockets[0].getsockname(), flush=True)
    async with reaper, server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit(f"usage: python {sys.argv[0]} PORT  (0: any free port)")
    asyncio.run(main(int(sys.argv[1])))
