"""uvicorn: serve on a configured listener (``sockets=``); accepted connections inherit it (Linux).

``python uvicorn_recipe.py PORT`` serves a one-line ASGI app on 127.0.0.1:PORT (0: any free port).
"""
import sys
from typing import Any, Awaitable, Callable, Dict

import uvicorn

import fastka

CONFIG = fastka.KeepaliveConfig(idle=60, interval=10, count=5, user_timeout=110)


def serve(app: Callable[..., Any], host: str = "0.0.0.0", port: int = 8000, cfg: fastka.KeepaliveConfig = CONFIG) -> None:
    sock = fastka.create_server((host, port), cfg)
    print("listening on %s:%d" % sock.getsockname()[:2], flush=True)  # uvicorn logs no address for sockets=
    uvicorn.Server(uvicorn.Config(app)).run(sockets=[sock])


async def hello(scope: Dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Dict[str, Any]], Awaitable[None]]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello\n"})


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit(f"usage: python {sys.argv[0]} PORT  (0: any free port)")
    serve(hello, "127.0.0.1", int(sys.argv[1]))
