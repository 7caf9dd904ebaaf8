"""set_keepalive / get_keepalive / tcp_info on one socket, and set_keepalive_many over N
sockets, each next to the bare C loop of the same system calls (floor.c)."""
from __future__ import annotations

import pytest
from conftest import BACKENDS, load_backend
from harness import CONFIG

CALLS = 200  # calls per round of the one-socket scenarios (the floor does as many)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("call", ["set_keepalive", "get_keepalive", "tcp_info"])
def test_single(benchmark, one, name, call):
    fn = getattr(load_backend(name), call)
    args = (one, CONFIG) if call == "set_keepalive" else (one,)
    benchmark.group = f"{call} x{CALLS}"

    def calls():
        for _ in range(CALLS):
            fn(*args)

    benchmark(calls)


@pytest.mark.parametrize("call", ["set_keepalive", "get_keepalive", "tcp_info"])
def test_single_floor(benchmark, one, floor, call):
    fds = floor.fds([one] * CALLS)
    run = {
        "set_keepalive": lambda: floor.lib.floor_set_keepalive(fds, CALLS, CONFIG.idle, CONFIG.interval, CONFIG.count),
        "get_keepalive": lambda: floor.lib.floor_get_keepalive(fds, CALLS),
        "tcp_info": lambda: floor.lib.floor_tcp_info(fds, CALLS),
    }[call]
    benchmark.group = f"{call} x{CALLS}"
    assert benchmark(run) == 0


@pytest.mark.parametrize("name", BACKENDS)
def test_set_keepalive_many(benchmark, pool, name):
    fn = load_backend(name).set_keepalive_many
    benchmark.group = f"set_keepalive_many N={pool.n}"
    assert benchmark(fn, pool.socks, CONFIG) == {}


def test_set_keepalive_many_floor(benchmark, pool, floor):
    fds = floor.fds(pool.socks)
    benchmark.group = f"set_keepalive_many N={pool.n}"
    assert benchmark(floor.lib.floor_set_keepalive, fds, pool.n, CONFIG.idle, CONFIG.interval, CONFIG.count) == 0
