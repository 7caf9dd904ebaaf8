"""SQLAlchemy: keepalive through ``connect_args``, and a checkout hook that replaces
``pool_pre_ping`` (a query per checkout) with ``fastka.is_alive`` (one poll(2)). Raising
DisconnectionError makes the pool discard the connection and try another."""
from typing import Any

import sqlalchemy
from sqlalchemy import event, exc

import fastka


def make_engine(url: str, cfg: fastka.KeepaliveConfig, **engine_kwargs: Any) -> sqlalchemy.Engine:
    engine = sqlalchemy.create_engine(url, connect_args=cfg.libpq_params(), **engine_kwargs)

    @event.listens_for(engine, "checkout")
    def check_alive(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if not fastka.is_alive(dbapi_connection.fileno()):
            raise exc.DisconnectionError("the server closed the connection (fastka.is_alive)")

    return engine
