"""asyncpg: it has no keepalive settings of its own. Configure both ends: the client's
socket through the connection's transport (asyncpg keeps it in the private attribute
``_transport``), the server's through PostgreSQL's own settings for the session."""
from typing import Any, Dict

import asyncpg  # type: ignore[import-untyped]

import fastka


def server_settings(cfg: fastka.KeepaliveConfig) -> Dict[str, str]:
    """PostgreSQL's tcp_keepalives_* / tcp_user_timeout for the server's end of the socket."""
    params = cfg.libpq_params()
    settings = {
        "tcp_keepalives_idle": params["keepalives_idle"],
        "tcp_keepalives_interval": params["keepalives_interval"],
        "tcp_keepalives_count": params["keepalives_count"],
    }
    if "tcp_user_timeout" in params:
        settings["tcp_user_timeout"] = params["tcp_user_timeout"]
    return settings


def apply_keepalive(conn: Any, cfg: fastka.KeepaliveConfig) -> None:
    transport = getattr(conn, "_transport", None)
    if transport is None:
        raise RuntimeError("this asyncpg version keeps no _transport on its connections")
    fastka.set_keepalive(transport.get_extra_info("socket"), cfg)


async def connect(dsn: str, cfg: fastka.KeepaliveConfig) -> Any:
    conn = await asyncpg.connect(dsn, server_settings=server_settings(cfg))
    apply_keepalive(conn, cfg)
    return conn


async def create_pool(dsn: str, cfg: fastka.KeepaliveConfig, **pool_kwargs: Any) -> Any:
    async def init(conn: Any) -> None:  # asyncpg calls it for every new connection
        apply_keepalive(conn, cfg)

    return await asyncpg.create_pool(dsn, server_settings=server_settings(cfg), init=init, **pool_kwargs)
