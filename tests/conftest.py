"""Shared fixtures: the backend switch every behavioural test runs over, loopback pairs,
dead-peer links in network namespaces, and an fd-leak guard around every test."""
from __future__ import annotations

import gc
import os
import re
import socket
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import netns  # noqa: E402

import fastka  # noqa: E402
from fastka import _backends  # noqa: E402

BACKENDS = _backends.NAMES


class Backend:
    """The public API of one backend: ``backend.set_keepalive(...)``, ``backend.KeepaliveManager``.

    The backend loads lazily (through fastka._backends, as the package does), so a compiled
    backend that is missing skips only the tests that use it (or fails them when
    FASTKA_REQUIRE_EXTENSION is set, as in CI).
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<backend {self.name}>"

    def load(self) -> _backends.Backend:
        try:
            return _backends.load(self.name)
        except _backends.BackendUnavailable as exc:
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


class FakeClock:
    """A clock for ``_set_clock`` or a module's ``monotonic``: reads ``now`` (seconds), which
    the test advances."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def on_backend(backend, monkeypatch):
    """Code that calls ``fastka.<function>`` (the pools, the recipes) gets this backend's."""
    loaded = backend.load()
    for name in ("is_alive", "find_dead", "set_keepalive", "get_keepalive", "create_server"):
        if hasattr(loaded, name):
            monkeypatch.setattr(fastka, name, getattr(loaded, name))
    return backend


@pytest.fixture
def cli_main(capsys, monkeypatch):
    """``cli_main(*args)``: `fastka args` run in this process (an 80-column terminal, as in a
    subprocess whose output is a pipe); returns (exit status, stdout, stderr)."""
    from fastka import cli

    monkeypatch.setenv("COLUMNS", "80")

    def run(*args: str):
        capsys.readouterr()
        try:
            status = cli.main(list(args))
        except SystemExit as exc:  # argparse: --help, --version, a usage error
            status = exc.code
        out, err = capsys.readouterr()
        return status, out, err

    return run


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
def make_pairs(listener):
    """``make_pairs(n)``: n connected loopback (client, server) pairs, all closed afterwards."""
    made = []

    def make(n: int) -> list:
        new = [pair(listener) for _ in range(n)]
        made.extend(new)
        return new

    yield make
    for client, server in made:
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


def rss_kib(pid: "int | str" = "self") -> int:
    """The resident set size of process ``pid`` (this one by default), KiB (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1))


def _open_fds():
    """{fd: what it points at} for this process (socket:[inode], a path, ...); None off Linux."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    fds = {}
    for name in names:
        try:
            fds[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the fd listdir itself used, closed since
            pass
    return fds


@pytest.fixture(autouse=True)
def no_fd_leak(request):
    """Fail a test that leaves file descriptors open (Linux; skipped for marked tests).

    Free when nothing changed: the fd table is compared before and after the test, and only
    a difference pays for gc.collect() (an unreachable socket closes when collected) and a
    second look.
    """
    if request.node.get_closest_marker("allow_fd_change"):
        yield
        return
    before = _open_fds()
    yield
    if before is None:
        return
    after = _open_fds()
    if _leaked(before, after):
        gc.collect()
        after = _open_fds()
        leaked = _leaked(before, after)
        if leaked:
            pytest.fail(f"test left file descriptors open: {leaked}")


def _leaked(before, after):
    """The fds open in ``after`` that were not open, or pointed elsewhere, in ``before``."""
    return {fd: what for fd, what in after.items() if before.get(fd) != what}
