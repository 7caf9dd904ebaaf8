"""psycopg_pool: keepalive on every pooled connection, and a check on checkout that costs
one poll(2) instead of a query (``fastka.is_alive``: the server closed or reset it, or a
keepalive probe or user timeout found it dead)."""
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

import fastka


def check_alive(conn: psycopg.Connection[Any]) -> None:
    """psycopg_pool's ``check``. The pool keeps a connection that failed its check
    unless the connection is closed: close it, then raise, and the pool replaces it."""
    if not fastka.is_alive(conn.fileno()):
        conn.close()
        raise psycopg.OperationalError("the server closed the connection (fastka.is_alive)")


def make_pool(conninfo: str, cfg: fastka.KeepaliveConfig, **pool_kwargs: Any) -> ConnectionPool:
    return ConnectionPool(conninfo, kwargs=cfg.libpq_params(), check=check_alive, open=True, **pool_kwargs)
