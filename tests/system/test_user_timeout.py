"""TCP_USER_TIMEOUT in a network namespace: the unacknowledged-data trap, and how it
changes KeepaliveConfig.detection_time on Linux.

While sent data is unacknowledged, Linux's keepalive timer does nothing (it only probes
an idle connection): a dead peer then costs the whole retransmission schedule
(tcp_retries2 = 15: about 15 minutes). user_timeout bounds that, and when set it also
replaces the probe count in the keepalive rule.
"""
from __future__ import annotations

import errno
import socket
import time

import pytest

import netns
from fastka import KeepaliveConfig

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def test_unacknowledged_data_trap_and_its_fix(backend, dead_peer_link):
    link = dead_peer_link
    netns.pin_neighbours(link)
    trap_cfg = KeepaliveConfig(idle=1, interval=1, count=2)
    fixed_cfg = trap_cfg.replace(user_timeout=3)
    trapped, trapped_server = link.connect(lambda s: backend.set_keepalive(s, trap_cfg))
    fixed, fixed_server = link.connect(lambda s: backend.set_keepalive(s, fixed_cfg))
    try:
        link.cut()
        start = time.monotonic()
        trapped.send(b"request that will never be acknowledged")
        fixed.send(b"request that will never be acknowledged")
        failed = netns.failure_times([trapped, fixed], 6.0, start)
        waited = time.monotonic() - start
        print(f"\n[{backend.name}] data in flight, peer gone: keepalive 1/1/2 alone not failed after "
              f"{waited:.2f} s; with user_timeout=3 ETIMEDOUT after {failed.get(fixed, float('nan')):.2f} s")
        # the trap: keepalive alone never fires while data is unacknowledged
        assert trapped not in failed and waited >= 6.0
        assert backend.is_alive(trapped) is True
        info = backend.tcp_info(trapped)
        assert info.state == "ESTABLISHED" and info.unacked >= 1 and info.total_retrans >= 1
        assert info.probes == 0  # no keepalive probe went out at all
        assert trapped.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0  # nothing pending at all
        # the fix
        assert fixed in failed and 3.0 <= failed[fixed] <= 5.0
        assert backend.is_alive(fixed) is False
        assert fixed.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ETIMEDOUT
    finally:
        for s in (trapped, trapped_server, fixed, fixed_server):
            s.close()


def test_detection_time_with_user_timeout(backend, dead_peer_link):
    """With user_timeout set, Linux drops an idle connection at the first probe tick with
    at least user_timeout of silence, whatever count says; detection_time predicts it."""
    link = dead_peer_link
    netns.pin_neighbours(link)
    configs = {
        "count 9, user_timeout 2": KeepaliveConfig(idle=1, interval=1, count=9, user_timeout=2),  # 2 s, not 10
        "count 1, user_timeout 4": KeepaliveConfig(idle=1, interval=1, count=1, user_timeout=4),  # 4 s, not 2
        "count 1": KeepaliveConfig(idle=1, interval=1, count=1),  # the count rule: 2 s
    }
    assert [c.detection_time for c in configs.values()] == [2.0, 4.0, 2.0]
    conns, connected = {}, {}
    try:
        for name, cfg in configs.items():
            conns[name] = link.connect(lambda s, cfg=cfg: backend.set_keepalive(s, cfg))
            connected[name] = time.monotonic()
        link.cut()
        start = min(connected.values())
        clients = {conns[name][0]: name for name in configs}
        failed = netns.failure_times(list(clients), 8.0, start)
        measured = {clients[s]: t - (connected[clients[s]] - start) for s, t in failed.items()}
        print(f"\n[{backend.name}] measured vs detection_time: "
              + ", ".join(f"{n}: {measured.get(n, float('nan')):.2f} s vs {configs[n].detection_time:.0f} s" for n in configs))
        for name, cfg in configs.items():
            assert name in measured, f"{name} did not fail within 8 s"
            assert cfg.detection_time - 0.5 <= measured[name] <= cfg.detection_time + 1.5, name
            client = conns[name][0]
            assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ETIMEDOUT
        # count did not decide: 9 probes would take 10 s, and 1 probe would end at 2 s
        assert measured["count 9, user_timeout 2"] < 5
        assert measured["count 1, user_timeout 4"] > measured["count 1"] + 1
    finally:
        for client, server in conns.values():
            client.close()
            server.close()
