"""Fixtures of the pytest-benchmark suites (`pytest benchmarks --benchmark-only`).

Every scenario is parametrized over the backends of ``fastka._backends`` and grouped per
scenario and size (`group="<scenario> N=<n>"`), so that the compiled backend, the
fallback and the floor stand side by side in pytest-benchmark's table.
FASTKA_NO_EXTENSIONS leaves only the "python" backend, as everywhere.
"""
from __future__ import annotations

import pytest
from harness import SIZES, Floor, Pool

from fastka import _backends

BACKENDS = _backends.NAMES


def load_backend(name: str) -> _backends.Backend:
    """Backend ``name``; skips with the reason where it cannot run."""
    chosen, reasons = _backends.available([name])
    if not chosen:
        pytest.skip(reasons[name])
    return chosen[0]


def manager_class(name: str):
    return load_backend(name).KeepaliveManager


@pytest.fixture(scope="session")
def floor():
    """floor.c compiled now; the floor benchmarks skip with the reason where it cannot
    be (no compiler, not Linux)."""
    try:
        lib = Floor.build()
    except RuntimeError as exc:
        pytest.skip(f"no C floor: {exc}")
    yield lib
    lib.close()


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"N={n}")
def pool(request):
    """N connected loopback sockets (loopback.Pool), one size at a time."""
    with Pool(request.param) as p:
        yield p


@pytest.fixture(scope="module")
def one():
    with Pool(1) as p:
        yield p.socks[0]
