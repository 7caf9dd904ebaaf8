"""The database recipes (docs/examples/) against a real PostgreSQL server started for these
tests (tests/postgres_server.py), on both backends:

- psycopg and psycopg2 ``connect(**cfg.libpq_params())``: the values read back from the
  client's socket with get_keepalive;
- psycopg_pool ``check=`` with is_alive: a connection the server terminated is replaced on
  checkout (without the check the pool hands it out and the query fails);
- SQLAlchemy's checkout hook with is_alive instead of pool_pre_ping: the same;
- asyncpg: keepalive on the transport's socket and on the server's end (SHOW).
"""
from __future__ import annotations

import asyncio
import os
import time

import pytest
from integrations import EXAMPLES, load_recipe
from postgres_server import postgres_server

import fastka

pytestmark = pytest.mark.skipif(not os.path.isdir(EXAMPLES), reason="docs/examples/ is not beside the tests")

CFG = fastka.KeepaliveConfig(idle=17, interval=4, count=3, user_timeout=6.5)


@pytest.fixture(scope="module")
def pg():
    with postgres_server() as server:
        yield server


def assert_keepalive(fd, cfg=CFG) -> None:
    state = fastka.get_keepalive(fd)
    assert (state.enabled, state.idle, state.interval, state.count, state.user_timeout) == (
        True, cfg.idle, cfg.interval, cfg.count, cfg.user_timeout,
    )


def terminate(pg, pid: int, fd: int) -> None:
    """End backend ``pid`` from another session and wait until the client's socket ``fd``
    has the server's FIN."""
    import psycopg

    with psycopg.connect(pg.conninfo, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
    deadline = time.monotonic() + 10
    while fastka.is_alive(fd):
        assert time.monotonic() < deadline, "the terminated backend's FIN never arrived"
        time.sleep(0.01)


def test_libpq_params_reach_the_socket(on_backend, pg):
    pytest.importorskip("psycopg")
    pytest.importorskip("psycopg2")
    recipe = load_recipe("libpq_recipe")
    with recipe.connect(pg.conninfo, CFG) as conn:
        assert_keepalive(conn.fileno())
    conn2 = recipe.connect2(pg.conninfo, CFG)
    try:
        assert_keepalive(conn2.fileno())
    finally:
        conn2.close()


@pytest.mark.parametrize("checked", [True, False], ids=["is_alive", "unchecked"])
def test_psycopg_pool_check(on_backend, pg, checked):
    psycopg = pytest.importorskip("psycopg")
    pytest.importorskip("psycopg_pool")
    recipe = load_recipe("psycopg_pool_recipe")
    pool = recipe.make_pool(pg.conninfo, CFG, min_size=1, max_size=1)
    if not checked:
        pool._check = None  # the same pool without the recipe's check
    try:
        with pool.connection() as conn:
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            fd = conn.fileno()
            assert_keepalive(fd)
        terminate(pg, pid, fd)
        if checked:
            with pool.connection() as conn:
                assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] != pid
        else:
            with pytest.raises(psycopg.OperationalError):
                with pool.connection() as conn:
                    conn.execute("SELECT 1")
    finally:
        pool.close()


@pytest.mark.parametrize("checked", [True, False], ids=["is_alive", "unchecked"])
def test_sqlalchemy_checkout_hook(on_backend, pg, checked):
    sqlalchemy = pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg")
    recipe = load_recipe("sqlalchemy_recipe")
    url = pg.url.replace("postgresql://", "postgresql+psycopg://")
    if checked:
        engine = recipe.make_engine(url, CFG, pool_size=1, max_overflow=0)
    else:
        engine = sqlalchemy.create_engine(url, connect_args=CFG.libpq_params(), pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            pid = conn.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar()
            fd = conn.connection.dbapi_connection.fileno()
            assert_keepalive(fd)
        terminate(pg, pid, fd)
        if checked:
            with engine.connect() as conn:
                assert conn.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar() != pid
        else:
            with pytest.raises(sqlalchemy.exc.OperationalError):
                with engine.connect() as conn:
                    conn.execute(sqlalchemy.text("SELECT 1"))
    finally:
        engine.dispose()


def test_asyncpg_keepalive_on_both_ends(on_backend, pg):
    pytest.importorskip("asyncpg")
    recipe = load_recipe("asyncpg_recipe")

    async def main():
        conn = await recipe.connect(pg.url, CFG)
        try:
            assert_keepalive(conn._transport.get_extra_info("socket"))
            assert await conn.fetchval("SHOW tcp_keepalives_idle") == str(CFG.idle)
        finally:
            await conn.close()
        pool = await recipe.create_pool(pg.url, CFG, min_size=2, max_size=2)
        try:
            async with pool.acquire() as a, pool.acquire() as b:
                for conn in (a, b):
                    raw = conn._con  # the pool's proxy around the connection
                    assert_keepalive(raw._transport.get_extra_info("socket"))
                    assert await conn.fetchval("SHOW tcp_keepalives_count") == str(CFG.count)
        finally:
            await pool.close()

    asyncio.run(main())
