"""fastka.pools.TCPConnector's checkout check on its own: the epoll set of all its
connections (Linux), the fastka.is_alive fallback where there is none, a dead connection
of another host that does not cost a live one its reuse, and the set closed with the
connector. Against the small keep-alive server of tests/pool_servers.py (each response's
body is the client's port: which connection served it)."""
from __future__ import annotations

import asyncio
import select
import time

import pytest
from pool_servers import pool_test_server

import fastka

aiohttp = pytest.importorskip("aiohttp", reason="aiohttp is not installed (pip install -e '.[test]')")
from fastka.pools import TCPConnector  # noqa: E402

EPOLL = hasattr(select, "epoll")


async def port_of(session, url: str) -> int:
    async with session.get(url) as response:
        return int(await response.text())


def wait_until_dead(socks) -> None:
    """The loop does not run meanwhile: the FINs are in the kernel, not seen by aiohttp."""
    deadline = time.monotonic() + 10
    while len(fastka.find_dead(socks)) < len(socks):
        assert time.monotonic() < deadline, "the server's FIN never arrived"
        time.sleep(0.01)


def idle_socks(connector, port: int):
    return [proto.transport.get_extra_info("socket") for key, conns in connector._conns.items() if key.port == port
            for proto, _ in conns]


def test_fallback_without_epoll_checks_the_one_handed_out(monkeypatch):
    """Where there is no epoll: one is_alive on the connection handed out, then one
    find_dead over the idle set."""
    calls = []  # "is_alive", or the number of sockets find_dead was given
    is_alive, find_dead = fastka.is_alive, fastka.find_dead

    async def main(server):
        connector = TCPConnector(keepalive_timeout=60)
        if connector._fastka_epoll is not None:
            connector._fastka_epoll.close()
            connector._fastka_epoll = None
        async with aiohttp.ClientSession(connector=connector) as session:
            first = await port_of(session, server.url)
            assert await port_of(session, server.url) == first  # alive: reused
            await asyncio.gather(*(port_of(session, server.url) for _ in range(2)))
            server.drop_all()
            wait_until_dead(idle_socks(connector, server.server_address[1]))
            monkeypatch.setattr(fastka, "is_alive", lambda sock: calls.append("is_alive") or is_alive(sock))
            monkeypatch.setattr(fastka, "find_dead", lambda socks, **kw: calls.append(len(socks)) or find_dead(socks, **kw))
            await port_of(session, server.url)
        assert calls == ["is_alive", 2]

    with pool_test_server() as server:
        asyncio.run(main(server))
        assert server.accepted == 3


@pytest.mark.skipif(not EPOLL, reason="no epoll here: the fallback above is the check")
def test_a_dead_connection_of_another_host_leaves_a_live_one_reused():
    """The epoll set reports a dead connection of server B; a checkout for server A
    still hands out A's live pooled connection (and B's is replaced on its own checkout)."""

    async def main(a, b):
        connector = TCPConnector(keepalive_timeout=60)
        async with aiohttp.ClientSession(connector=connector) as session:
            first_a = await port_of(session, a.url)
            first_b = await port_of(session, b.url)
            b.drop_all()
            wait_until_dead(idle_socks(connector, b.server_address[1]))
            assert connector._fastka_epoll.poll(0, 1)  # the set sees B's FIN
            assert await port_of(session, a.url) == first_a
            assert await port_of(session, b.url) != first_b

    with pool_test_server() as a, pool_test_server() as b:
        asyncio.run(main(a, b))
        assert (a.accepted, b.accepted) == (1, 2)


@pytest.mark.skipif(not EPOLL, reason="no epoll here")
def test_the_epoll_set_is_closed_with_the_connector():
    async def main():
        connector = TCPConnector()
        epoll = connector._fastka_epoll
        assert not epoll.closed
        await connector.close()
        assert epoll.closed

    asyncio.run(main())
