"""redis-py's asyncio client: the same two keyword arguments."""
import redis.asyncio

import fastka


def client(cfg: fastka.KeepaliveConfig, host: str = "localhost", port: int = 6379) -> redis.asyncio.Redis:
    return redis.asyncio.Redis(host=host, port=port, socket_keepalive=True, socket_keepalive_options=cfg.tcp_options())
