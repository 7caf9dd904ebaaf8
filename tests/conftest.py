"""Shared fixtures: the backend switch every behavioural test runs over, loopback pairs,
dead-peer links in network namespaces, and an fd-leak guard around every test."""
from __future__ import annotations

import gc
import importlib
import os
import socket
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import netns  # noqa: E402

BACKENDS = ("c", "python")
_MODULES = {
    "c": ("fastka._keepalive_c", "fastka._manager_c"),
    "python": ("fastka._keepalive_py", "fastka._manager_py"),
}


class Backend:
    """The public API of one backend: ``backend.set_keepalive(...)``, ``backend.KeepaliveManager``.

    Modules import lazily, so a compiled module that is missing skips only the tests
    that use it (or fails them when FASTKA_REQUIRE_EXTENSION is set, as in CI).
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<backend {self.name}>"

    def module(self, which: int):
        modname = _MODULES[self.name][which]
        if modname == "fastka._manager_c" and not sys.platform.startswith("linux"):
            pytest.skip("the compiled manager is epoll-based and built only on Linux")
        try:
            return importlib.import_module(modname)
        except ImportError as exc:
            if os.environ.get("FASTKA_REQUIRE_EXTENSION"):
                pytest.fail(f"{modname} does not import but FASTKA_REQUIRE_EXTENSION is set: {exc}")
            pytest.skip(f"{modname} is not built: {exc}")

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        mod = self.module(1 if attr in ("KeepaliveManager", "_manager") else 0)
        return getattr(mod, attr)


@pytest.fixture(params=BACKENDS)
def backend(request) -> Backend:
    """Each behavioural test runs once per backend."""
    return Backend(request.param)


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
