"""A server that dies silently (its network namespace drops every packet, as a crashed host
or a dead link would; tests/netns.py): after the keepalive's detection time the fastka pool
never hands out one of its idle connections to that server, where urllib3's own pool hands
them out as if they were fine (ESTABLISHED; a request on one would wait for its timeout).
Both backends. Needs root, iproute2 and nft (skips with the reason)."""
from __future__ import annotations

import shutil
import subprocess
import time

import netns
import pytest
from pool_servers import fill, pool_test_server
from test_integrations_netns import SILENCE, inside

import fastka

urllib3 = pytest.importorskip("urllib3", reason="urllib3 is not installed (pip install -e '.[test]')")
from fastka.pools import PoolManager  # noqa: E402

IDLE = 2  # idle connections in each pool
CFG = fastka.KeepaliveConfig.within(4, count=2)  # probes from 2 s, every 1 s: detection_time 4 s


@pytest.mark.netns
@pytest.mark.slow
def test_fastka_pool_never_hands_out_a_silently_dead_connection(on_backend, dead_peer_link):
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed (apt-get install nftables; .ci/run does)")
    link = dead_peer_link
    listener = link.socket_in(link.server_ns)
    listener.bind((netns.SERVER_ADDR, 0))
    with pool_test_server(listener=listener) as srv:
        fast, plain = PoolManager(keepalive=CFG, maxsize=IDLE), urllib3.PoolManager(maxsize=IDLE)
        try:
            with inside(link.client_ns):
                fast_conns, plain_conns = fill(fast, srv.url, IDLE), fill(plain, srv.url, IDLE)
            fast_socks = [c.sock for c in fast_conns]
            subprocess.run(["ip", "netns", "exec", link.server_ns, "nft", "-f", "-"], input=SILENCE,
                           text=True, check=True, capture_output=True, timeout=10)
            silent_since = time.monotonic()
            # Wait for the kernel to give up on the fastka-configured sockets (bounded).
            while fastka.find_dead(fast_socks) != fast_socks:
                assert time.monotonic() - silent_since < CFG.detection_time + 5, "keepalive never fired"
                time.sleep(0.05)
            found = time.monotonic() - silent_since
            fast_pool, plain_pool = fast.connection_from_url(srv.url), plain.connection_from_url(srv.url)
            for _ in range(IDLE):  # every checkout: nothing dead comes out
                conn = fast_pool._get_conn()
                assert conn.sock is None  # discarded (to be reconnected), not handed out
                fast_pool._put_conn(conn)
            assert all(s.fileno() == -1 for s in fast_socks)
            handed_out = plain_pool._get_conn()
            print(f"\n[{on_backend.name}] silent server: fastka pool's idle connections dead after {found:.1f} s "
                  f"(detection_time {CFG.detection_time:.0f} s), none handed out; urllib3's pool handed one out "
                  f"({fastka.tcp_info(handed_out.sock).state})")
            assert handed_out in plain_conns and handed_out.sock is not None
            assert fastka.tcp_info(handed_out.sock).state == "ESTABLISHED"
            plain_pool._put_conn(handed_out)
        finally:
            fast.clear()
            plain.clear()
