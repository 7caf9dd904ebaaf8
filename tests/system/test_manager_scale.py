"""KeepaliveManager at the fd limit, and flat memory over many add/poll/remove cycles."""
from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import time
import tracemalloc

import pytest

if not sys.platform.startswith("linux"):
    pytest.skip("counts fds and memory through /proc (Linux)", allow_module_level=True)

import resource  # noqa: E402  (POSIX only: after the skip)

from conftest import rss_kib  # noqa: E402
from fastka import Event  # noqa: E402

CLIENT = r"""
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
sys.stdout.write("connected\n"); sys.stdout.flush()
sys.stdin.read()  # hold the connections until the parent is done
"""


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow
def test_scale_all_expire_idle(backend):
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    n = min(18000, soft - 1000)
    before = _fd_count()
    lst = socket.create_server(("127.0.0.1", 0), backlog=4096)
    child = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(lst.getsockname()[1]), str(n)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    mgr = backend.KeepaliveManager(1.0)
    try:
        for _ in range(n):
            conn, _ = lst.accept()
            mgr.add(conn)
            del conn  # the manager holds the only reference
        assert child.stdout.readline() == "connected\n"
        assert len(mgr) == n
        got = []
        deadline = time.monotonic() + 60
        while len(got) < n and time.monotonic() < deadline:
            got += mgr.poll(1)
        assert len(got) == n
        assert {ev for _, ev in got} == {Event.IDLE}
        assert all(s.fileno() == -1 for s, _ in got)
        assert len(mgr) == 0
    finally:
        mgr.close()
        lst.close()
        child.stdin.close()
        child.wait(30)
        child.stdout.close()
    gc.collect()
    assert _fd_count() == before


@pytest.mark.slow
def test_no_leak_over_add_poll_remove_cycles(backend, tcp_pair):
    _, s = tcp_pair
    mgr = backend.KeepaliveManager(60)
    try:
        def cycles(k):
            for _ in range(k):
                mgr.add(s)
                mgr.poll(0)
                mgr.touch(s)
                mgr.remove(s)

        cycles(10_000)  # warm up caches and free lists
        gc.collect()
        rss0 = rss_kib()
        tracemalloc.start()
        snap0 = tracemalloc.take_snapshot()
        cycles(100_000)
        gc.collect()
        snap1 = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(d.size_diff for d in snap1.compare_to(snap0, "filename"))
        assert grown < 64 * 1024, f"Python heap grew by {grown} bytes over 100,000 cycles"
        if not os.environ.get("FASTKA_SANITIZER"):  # ASan holds freed memory in quarantine
            assert rss_kib() - rss0 < 2048, "RSS grew by more than 2 MiB over 100,000 cycles"
    finally:
        mgr.close()
