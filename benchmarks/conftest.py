"""Fixtures of the pytest-benchmark suites (`pytest benchmarks --benchmark-only`).

Every scenario is parametrized over the two backends and grouped per scenario and size
(`group="<scenario> N=<n>"`), so the compiled backend, the fallback and the floor stand
side by side in pytest-benchmark's table. The connections, the floor library and the
sizes come from fastka/_bench.py, which `fastka bench` runs without pytest.
"""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastka import _bench  # noqa: E402

# 1,000 / 5,000 / 10,000 (the goals of issue 4) / the most the open-file limit allows
# (the peers live in a child process).
SIZES = _bench.default_sizes()
BACKENDS = ("compiled", "fallback")


def keepalive_module(impl: str):
    try:
        return _bench.load(impl, 0)
    except ImportError as exc:
        pytest.skip(f"{impl} backend does not import: {exc}")


def manager_class(impl: str):
    try:
        return _bench.load(impl, 1).KeepaliveManager
    except (ImportError, AttributeError) as exc:
        pytest.skip(f"{impl} manager does not import: {exc}")


@pytest.fixture(scope="session")
def floor():
    """benchmarks/floor.c compiled now; the floor benchmarks skip with the reason where
    it cannot be (no compiler, not Linux)."""
    try:
        lib = _bench.Floor.build()
    except RuntimeError as exc:
        pytest.skip(f"no C floor: {exc}")
    yield lib
    lib.close()


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"N={n}")
def pool(request):
    """N connected loopback sockets (peers in a child process), one size at a time."""
    with _bench.Pool(request.param) as p:
        yield p


@pytest.fixture(scope="module")
def one():
    with _bench.Pool(1) as p:
        yield p.socks[0]
