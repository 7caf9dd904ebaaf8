"""find_dead over N pooled connections, 1% of them dead (their peers closed), next to a
loop of the fallback's is_alive, the select.poll() loop a user would write in Python, and
one bare poll(2) in C. Paired ratios against the Python loop: find_dead_vs_poll.py."""
from __future__ import annotations

import pytest
from conftest import BACKENDS, load_backend
from find_dead_vs_poll import poll_loop


@pytest.fixture(scope="module")
def dead(pool):
    """pool with the peers of every 100th connection closed; the dead sockets."""
    idx = list(range(0, pool.n, 100))
    pool.close_peers(idx)
    return [pool.socks[i] for i in idx]


@pytest.mark.parametrize("name", BACKENDS)
def test_find_dead(benchmark, pool, dead, name):
    find_dead = load_backend(name).find_dead
    benchmark.group = f"find_dead N={pool.n}"
    assert benchmark(find_dead, pool.socks) == dead


def test_is_alive_loop(benchmark, pool, dead):
    is_alive = load_backend("python").is_alive
    benchmark.group = f"find_dead N={pool.n}"
    assert benchmark(lambda: [s for s in pool.socks if not is_alive(s)]) == dead


def test_python_poll_loop(benchmark, pool, dead):
    benchmark.group = f"find_dead N={pool.n}"
    assert benchmark(poll_loop, pool.socks) == dead


def test_find_dead_floor(benchmark, pool, dead, floor):
    fds = floor.fds(pool.socks)
    benchmark.group = f"find_dead N={pool.n}"
    assert benchmark(floor.lib.floor_find_dead, fds, pool.n) == len(dead)
