"""Shared fixtures: the backend switch every behavioural test runs over, loopback pairs,
dead-peer links in network namespaces, and an fd-leak guard around every test."""
from __future__ import annotations

import gc
import os
import socket
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import netns  # noqa: E402

from fastka import _compat  # noqa: E402

BACKENDS = _compat.NAMES


class Backend:
    """The public API of one backend: ``backend.set_keepalive(...)``, ``backend.KeepaliveManager``.

    The backend loads lazily (through fastka._compat, as the package does), so a compiled
    backend that is missing skips only the tests that use it (or fails them when
    FASTKA_REQUIRE_EXTENSION is set, as in CI).
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<backend {self.name}>"

    def load(self) -> _compat.Backend:
        try:
            return _compat.load(self.name)
        except _compat.BackendUnavailable as exc:
            if os.environ.get("FASTKA_REQUIRE_EXTENSION"):
                pytest.fail(f"{exc}, but FASTKA_REQUIRE_EXTENSION is set")
            pytest.skip(str(exc))

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self.load(), attr)


@pytest.fixture(params=BACKENDS)
def backend(request) -> Backend:
    """Each behavioural test runs once per backend."""
    return Backend(request.param)


def pair(listener):
    """A connected loopback (client, server) pair from ``listener``; the caller closes both."""
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    return client, server


@pytest.fixture
def mgr_factory(backend):
    """``make(*args, **kw)``: a KeepaliveManager of the test's backend, closed afterwards."""
    made = []

    def make(*args, **kw):
        m = backend.KeepaliveManager(*args, **kw)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


@pytest.fixture
def listener():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    yield s
    s.close()


@pytest.fixture
def tcp_pair(listener):
    """A connected loopback (client, server) pair, both closed afterwards."""
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    yield client, server
    client.close()
    server.close()


@pytest.fixture
def dead_peer_link():
    """A DeadPeerLink (see tests/netns.py); skips with the reason where namespaces are missing."""
    reason = netns.skip_reason()
    if reason:
        pytest.skip(reason)
    with netns.DeadPeerLink() as link:
        yield link


def _open_fds():
    try:
        return set(os.listdir("/proc/self/fd"))
    except OSError:
        return None


@pytest.fixture(autouse=True)
def no_fd_leak(request):
    """Fail a test that leaves file descriptors open (Linux; skipped for marked tests)."""
    if request.node.get_closest_marker("allow_fd_change"):
        yield
        return
    gc.collect()
    before = _open_fds()
    yield
    if before is None:
        return
    gc.collect()
    leaked = _open_fds() - before
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    if leaked:
        what = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
        pytest.fail(f"test left file descriptors open: {what}")
