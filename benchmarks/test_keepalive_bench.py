"""Scenarios 1 and 2 of issue 4: set_keepalive / get_keepalive / tcp_info on one socket,
and set_keepalive_many over N sockets (both batch paths of the compiled backend), each
next to the bare C loop of the same system calls."""
from __future__ import annotations

import pytest
from conftest import BACKENDS, keepalive_module

from fastka import _bench

CONFIG = _bench.CONFIG
CALLS = 200  # calls per round of the one-socket scenarios (the floor does as many)


@pytest.mark.parametrize("impl", BACKENDS)
@pytest.mark.parametrize("name", ["set_keepalive", "get_keepalive", "tcp_info"])
def test_single(benchmark, one, impl, name):
    fn = getattr(keepalive_module(impl), name)
    args = (one, CONFIG) if name == "set_keepalive" else (one,)
    benchmark.group = f"{name} x{CALLS}"

    def calls():
        for _ in range(CALLS):
            fn(*args)

    benchmark(calls)


@pytest.mark.parametrize("name", ["set_keepalive", "get_keepalive", "tcp_info"])
def test_single_floor(benchmark, one, floor, name):
    fds = floor.fds([one] * CALLS)
    call = {
        "set_keepalive": lambda: floor.lib.floor_set_keepalive(fds, CALLS, CONFIG.idle, CONFIG.interval, CONFIG.count),
        "get_keepalive": lambda: floor.lib.floor_get_keepalive(fds, CALLS),
        "tcp_info": lambda: floor.lib.floor_tcp_info(fds, CALLS),
    }[name]
    benchmark.group = f"{name} x{CALLS}"
    assert benchmark(call) == 0


@pytest.mark.parametrize("path", ["auto", "loop", "uring", "fallback"])
def test_set_keepalive_many(benchmark, pool, path):
    impl = "fallback" if path == "fallback" else "compiled"
    mod = keepalive_module(impl)
    benchmark.group = f"set_keepalive_many N={pool.n}"
    if impl == "compiled":
        if path == "uring" and mod.uring_status() != "available":
            pytest.skip(f"io_uring batch path {mod.uring_status()}")
        before = mod.batch_path()
        mod.set_batch_path(path)
    try:
        assert benchmark(mod.set_keepalive_many, pool.socks, CONFIG) == {}
    finally:
        if impl == "compiled":
            mod.set_batch_path(before)


def test_set_keepalive_many_floor(benchmark, pool, floor):
    fds = floor.fds(pool.socks)
    benchmark.group = f"set_keepalive_many N={pool.n}"
    assert benchmark(floor.lib.floor_set_keepalive, fds, pool.n, CONFIG.idle, CONFIG.interval, CONFIG.count) == 0
