"""aiohttp server: serve on a configured listener; accepted connections inherit it (Linux)."""
from aiohttp import web

import fastka


async def start(app: web.Application, cfg: fastka.KeepaliveConfig, host: str = "0.0.0.0", port: int = 8080) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.SockSite(runner, fastka.create_server((host, port), cfg)).start()
    return runner  # await runner.cleanup() to stop
