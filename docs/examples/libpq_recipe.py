"""psycopg 3 and psycopg2: libpq applies fastka's keepalive values to every connection it
opens, given as connection parameters."""
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
import psycopg2  # type: ignore[import-untyped]

import fastka


def connect(conninfo: str, cfg: fastka.KeepaliveConfig) -> psycopg.Connection[Any]:
    return psycopg.connect(make_conninfo(conninfo, **cfg.libpq_params()))


def connect2(dsn: str, cfg: fastka.KeepaliveConfig) -> Any:
    return psycopg2.connect(dsn, **cfg.libpq_params())
