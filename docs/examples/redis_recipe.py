"""redis-py: keepalive options on every pooled connection, and dropping dead ones."""
from typing import List

import redis
from redis.connection import Connection

import fastka


def client(cfg: fastka.KeepaliveConfig, host: str = "localhost", port: int = 6379) -> redis.Redis:
    return redis.Redis(host=host, port=port, socket_keepalive=True, socket_keepalive_options=cfg.tcp_options())


def drop_dead(r: redis.Redis) -> List[Connection]:
    """Disconnect the idle pooled connections whose peer is gone; returns them."""
    idle: List[Connection] = r.connection_pool._get_free_connections()
    dead = fastka.find_dead(idle, key=lambda c: c._sock)
    for conn in dead:
        conn.disconnect()  # stays in the pool; reconnects on its next use
    return dead
