"""asyncio streams: start_server on a configured listener."""
import asyncio
from typing import Awaitable, Callable

import fastka

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def start(handler: Handler, cfg: fastka.KeepaliveConfig, host: str = "0.0.0.0", port: int = 8080) -> asyncio.Server:
    return await asyncio.start_server(handler, sock=fastka.create_server((host, port), cfg))
