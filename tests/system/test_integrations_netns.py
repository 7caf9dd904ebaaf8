"""The pool example that matters: redis-py (sync) whose server goes silent.

redis-server runs in one network namespace, the client in another (tests/netns.py); after a
few commands the server's namespace drops every packet in and out (nft), as a crashed host
or a dead link would. With fastka's config (docs/examples/redis_recipe.py) the pool's
idle connections are flagged by ``find_dead`` within ``detection_time`` + 1 s; with
redis-py's own defaults they stay ESTABLISHED, and the pool hands one out as if it were
fine. Both backends. Needs root, iproute2, nft and redis-server (skips with the reason).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from typing import Dict, Iterator, List

import netns
import pytest
from integrations import EXAMPLES, load_recipe, redis_ping, redis_server

import fastka

POOL = 3  # idle connections in each pool
CFG = fastka.KeepaliveConfig(idle=1, interval=1, count=2)  # detection_time: 3 s
# The server's namespace drops every packet in and out, as a crashed host would: no answers
# to probes, and no retransmissions of its own that would look like signs of life.
SILENCE = """
add table inet fastka_silent
add chain inet fastka_silent input { type filter hook input priority 0; policy drop; }
add chain inet fastka_silent output { type filter hook output priority 0; policy drop; }
"""


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the block in network namespace ``ns`` (this thread only): sockets made here,
    such as a pool's new connections, belong to ``ns``."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        netns._setns(target)
        try:
            yield
        finally:
            netns._setns(home)
    finally:
        os.close(target)
        os.close(home)


def fill(pool, n: int) -> List[object]:
    """``n`` connected, idle connections in ``pool`` (each answered a PING)."""
    conns = [pool.get_connection() for _ in range(n)]
    for conn in conns:
        conn.send_command("PING")
        assert conn.read_response() in (b"PONG", "PONG")
    for conn in conns:
        pool.release(conn)
    return conns


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.usefixtures("on_backend")
@pytest.mark.skipif(not os.path.isdir(EXAMPLES), reason="docs/examples/ is not beside the tests (installed-wheel run)")
def test_redis_pool_flags_a_silent_peer(backend, dead_peer_link):
    redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install -e '.[test]')")
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed (apt-get install nftables; .ci/run does)")
    link = dead_peer_link
    recipe = load_recipe("redis_recipe")
    host = netns.SERVER_ADDR

    def ping() -> bool:
        with inside(link.client_ns):
            return redis_ping(host, 6379)

    with redis_server(host, 6379, prefix=("ip", "netns", "exec", link.server_ns), ping=ping):
        with inside(link.client_ns):
            fast = recipe.client(CFG, host, 6379)
            plain = redis.Redis(host=host, port=6379)  # redis-py's own keepalive defaults
            fast_conns, plain_conns = fill(fast.connection_pool, POOL), fill(plain.connection_pool, POOL)
        try:
            subprocess.run(["ip", "netns", "exec", link.server_ns, "nft", "-f", "-"], input=SILENCE,
                           text=True, check=True, capture_output=True, timeout=10)
            start = time.monotonic()
            flagged: Dict[int, float] = {}  # id(connection) -> seconds after the peer went silent
            plain_flagged = []
            limit = CFG.detection_time + 1
            while time.monotonic() - start < limit:
                for conn in recipe.drop_dead(fast):
                    flagged.setdefault(id(conn), time.monotonic() - start)
                plain_flagged += recipe.drop_dead(plain)
                time.sleep(0.02)
            times = sorted(flagged.values())
            print(f"\n[{backend.name}] silent peer: {len(times)}/{POOL} fastka-configured connections flagged "
                  f"after {', '.join(f'{t:.2f}' for t in times)} s (detection_time {CFG.detection_time:.0f} s); "
                  f"redis-py defaults: {len(plain_flagged)}/{POOL} flagged after {limit:.0f} s")
            assert len(times) == POOL and all(conn._sock is None for conn in fast_conns), times
            assert plain_flagged == []
            # Without fastka's config the connections look fine: ESTABLISHED, and the pool's own
            # check-out accepts one (a command on it would wait for its timeout).
            assert {fastka.tcp_info(c._sock).state for c in plain_conns} == {"ESTABLISHED"}
            with inside(link.client_ns):
                handed_out = plain.connection_pool.get_connection()
            assert handed_out in plain_conns and handed_out._sock is not None
            plain.connection_pool.release(handed_out)
        finally:
            fast.close()
            plain.close()
