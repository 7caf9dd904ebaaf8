"""fastka.pools.TCPConnector against a small real keep-alive server on loopback
(tests/pool_servers.py), on both backends: the server's hint minus the margin, max_age with
a seeded jitter, dead by find_dead with one call for the whole idle set (before the event
loop has seen the FIN), keepalive on new sockets, bad arguments.

The time rules run on a fake clock (aiohttp's connector and fastka's read ``monotonic``
from their modules); aiohttp's own cleanup timer is kept out of the way with a long
keepalive_timeout.
"""
from __future__ import annotations

import asyncio
import random
import time

import pytest
from conftest import FakeClock
from pool_servers import pool_test_server

import fastka
from fastka import _jitter

aiohttp = pytest.importorskip("aiohttp", reason="aiohttp is not installed (pip install -e '.[test]')")
import aiohttp.connector  # noqa: E402

pools_aiohttp = pytest.importorskip("fastka.pools._aiohttp")
from fastka.pools import TCPConnector  # noqa: E402


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(pools_aiohttp, "monotonic", c)
    monkeypatch.setattr(aiohttp.connector, "monotonic", c)
    return c


@pytest.fixture
def server():
    with pool_test_server() as srv:
        yield srv


async def get(session, url: str) -> int:
    async with session.get(url) as response:
        return int(await response.text())


def idle_socks(connector):
    return [proto.transport.get_extra_info("socket") for conns in connector._conns.values() for proto, _ in conns]


def run(scenario, **connector_kwargs):
    async def main():
        connector = TCPConnector(keepalive_timeout=60, **connector_kwargs)
        async with aiohttp.ClientSession(connector=connector) as session:
            return await scenario(session, connector)

    return asyncio.run(main())


def test_server_hint_minus_margin(on_backend, server, clock):
    url = server.url + "?ka=5"

    async def scenario(session, connector):
        first = await get(session, url)
        clock.now += 3.99
        assert await get(session, url) == first
        clock.now += 4.0
        second = await get(session, url)
        assert second != first
        assert await get(session, server.url) == second  # no hint: keepalive_timeout (60 s) rules
        clock.now += 30
        assert await get(session, server.url) == second

    run(scenario, margin=1.0)
    assert server.accepted == 2


def test_max_age_spread_by_seeded_jitter(on_backend, server, clock):
    spread = 10 * _jitter.factor(0.3, random.Random(5).random)

    async def scenario(session, connector):
        connector.fastka_rule.source = random.Random(5).random
        start = clock.now
        first = await get(session, server.url)
        clock.now = start + spread - 0.01
        assert await get(session, server.url) == first
        clock.now = start + spread
        assert await get(session, server.url) != first

    run(scenario, max_age=10, jitter=0.3)
    assert server.accepted == 2


def test_dead_connections_one_find_dead_for_the_idle_set(on_backend, server, monkeypatch):
    calls = {"is_alive": 0, "find_dead": []}
    is_alive, find_dead = fastka.is_alive, fastka.find_dead

    def spy_alive(sock):
        calls["is_alive"] += 1
        return is_alive(sock)

    def spy_dead(socks, **kw):
        calls["find_dead"].append(len(socks))
        return find_dead(socks, **kw)

    async def scenario(session, connector):
        await asyncio.gather(*(get(session, server.url) for _ in range(3)))
        socks = idle_socks(connector)
        assert len(socks) == 3 and server.accepted == 3
        server.drop_all()
        # The loop does not run meanwhile: aiohttp's protocols have not seen the FINs.
        deadline = time.monotonic() + 10
        while len(find_dead(socks)) < 3:
            assert time.monotonic() < deadline, "the server's FIN never arrived"
            time.sleep(0.01)
        monkeypatch.setattr(fastka, "is_alive", spy_alive)
        monkeypatch.setattr(fastka, "find_dead", spy_dead)
        await get(session, server.url)  # no error: the dead ones are closed and replaced
        assert calls["find_dead"] == [3] and calls["is_alive"] <= 1  # the idle set, one call (the checkout's is epoll on Linux)
        assert server.accepted == 4 and len(idle_socks(connector)) == 1

    run(scenario)


def test_keepalive_on_every_new_socket(on_backend, server):
    cfg = fastka.KeepaliveConfig(idle=13, interval=2, count=6)

    async def scenario(session, connector):
        await asyncio.gather(*(get(session, server.url) for _ in range(2)))
        states = [fastka.get_keepalive(s) for s in idle_socks(connector)]
        assert [(s.enabled, s.idle, s.interval, s.count) for s in states] == [(True, 13, 2, 6)] * 2

    run(scenario, keepalive=cfg)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"max_age": 0}, ValueError, "max_age=0"),
        ({"jitter": -0.1}, ValueError, "jitter=-0.1"),
        ({"margin": "1"}, TypeError, "margin"),
        ({"keepalive": object()}, TypeError, "keepalive"),
    ],
)
def test_bad_arguments(kwargs, error, words):
    async def main():
        with pytest.raises(error, match=words):
            TCPConnector(**kwargs)

    asyncio.run(main())
