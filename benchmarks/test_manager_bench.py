"""Scenario 4 of issue 4: the manager. add N; touch all N; one poll tick with 10% of N
readable (next to a bare select.epoll().poll() over the same sockets); expiry of all N
through IDLE with close=False; bytes of memory per managed connection."""
from __future__ import annotations

import select
import time

import pytest
from conftest import BACKENDS, manager_class

import harness as _bench


@pytest.mark.parametrize("impl", BACKENDS)
def test_add(benchmark, pool, impl):
    Manager = manager_class(impl)
    benchmark.group = f"manager add N={pool.n}"
    managers = []

    def setup():
        managers.append(Manager(None, close=False))
        return (managers[-1],), {}

    def add_all(mgr):
        for s in pool.socks:
            mgr.add(s)

    try:
        benchmark.pedantic(add_all, setup=setup, rounds=5, warmup_rounds=1)
        assert len(managers[-1]) == pool.n
    finally:
        for mgr in managers:
            mgr.close()


@pytest.mark.parametrize("impl", BACKENDS)
def test_touch(benchmark, pool, impl):
    mgr = manager_class(impl)(None, close=False)
    benchmark.group = f"manager touch N={pool.n}"
    try:
        for s in pool.socks:
            mgr.add(s)
        touch = mgr.touch
        benchmark(lambda: [touch(s) for s in pool.socks])
        assert len(mgr) == pool.n
    finally:
        mgr.close()


IDLE = 0.05


@pytest.mark.parametrize("impl", BACKENDS)
def test_expiry(benchmark, pool, impl):
    """poll() until all N came out as IDLE, their idle timeout having passed."""
    Manager = manager_class(impl)
    benchmark.group = f"manager expiry N={pool.n}"
    managers, counts = [], []

    def setup():
        mgr = Manager(IDLE, close=False)
        managers.append(mgr)
        for s in pool.socks:
            mgr.add(s)
        time.sleep(IDLE * 1.5)
        return (mgr,), {}

    def expire(mgr):
        got = 0
        while got < pool.n:
            events = mgr.poll(0)
            if not events:
                break
            got += len(events)
        counts.append(got)

    try:
        benchmark.pedantic(expire, setup=setup, rounds=5, warmup_rounds=1)
        assert counts == [pool.n] * len(counts)
    finally:
        for mgr in managers:
            mgr.close()


@pytest.fixture(scope="module")
def readable(pool):
    """Every 10th connection of pool with one unread byte; drained afterwards."""
    idx = list(range(0, pool.n, 10))
    pool.send(idx)
    yield len(idx)
    for i in idx:
        pool.socks[i].recv(1)


@pytest.mark.parametrize("impl", BACKENDS)
def test_poll_tick(benchmark, pool, readable, impl):
    """One poll(0), which reports every readable connection."""
    mgr = manager_class(impl)(None, close=False)
    benchmark.group = f"manager poll tick N={pool.n}"
    try:
        for s in pool.socks:
            mgr.add(s)
        assert len(benchmark(mgr.poll, 0)) == readable
    finally:
        mgr.close()


def test_poll_tick_epoll_floor(benchmark, pool, readable):
    ep = select.epoll(pool.n)
    benchmark.group = f"manager poll tick N={pool.n}"
    try:
        for s in pool.socks:
            ep.register(s.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
        assert len(benchmark(ep.poll, 0, pool.n)) == readable
    finally:
        ep.close()


@pytest.mark.parametrize("impl", BACKENDS)
def test_memory_per_connection(benchmark, impl):
    """Bytes a manager adds per connection (RSS and malloc deltas, in a child process);
    the figures are in extra_info, the time is that of the measurement."""
    manager_class(impl)
    benchmark.group = "manager memory"
    n = max(_bench.SIZES)
    result = benchmark.pedantic(_bench.measure_memory, args=(impl, n), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    assert result["n"] == n and result["rss_per_conn"] >= 0
