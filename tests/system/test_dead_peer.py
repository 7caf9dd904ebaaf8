"""A peer that vanishes (its link goes down, nothing answers): fastka's keepalive settings
reach the kernel and the connection fails with ETIMEDOUT when they say it should.

The client and server live in two network namespaces joined by a veth pair
(tests/netns.py); ``cut()`` takes the server's end down.
"""
from __future__ import annotations

import errno
import socket
import time

import pytest

import netns

pytestmark = [pytest.mark.netns, pytest.mark.slow]

TCP = socket.IPPROTO_TCP


def test_silent_peer_times_out_within_detection_time(backend, dead_peer_link):
    """idle=1, interval=1, count=2: ETIMEDOUT about 3 s after the peer was last heard."""
    link = dead_peer_link
    netns.pin_neighbours(link)
    client, server = link.connect(lambda s: backend.set_keepalive(s, idle=1, interval=1, count=2))
    connected = time.monotonic()
    plain, plain_server = link.connect()  # no keepalive: the control
    try:
        assert (client.getsockopt(TCP, socket.TCP_KEEPIDLE), client.getsockopt(TCP, socket.TCP_KEEPINTVL),
                client.getsockopt(TCP, socket.TCP_KEEPCNT)) == (1, 1, 2)
        link.cut()
        cut = time.monotonic()
        probes_seen = 0
        while time.monotonic() - cut < 6 and backend.is_alive(client):
            probes_seen = max(probes_seen, backend.tcp_info(client).probes)
            time.sleep(0.05)
        elapsed = time.monotonic() - connected
        print(f"\n[{backend.name}] keepalive 1/1/2: failed {elapsed:.2f} s after the last packet "
              f"({time.monotonic() - cut:.2f} s after the cut); detection_time 3 s")
        assert backend.is_alive(client) is False, "not failed within 6 s"
        assert elapsed <= 6.0
        assert elapsed >= 2.0  # two unanswered probes after one idle second
        assert probes_seen >= 1  # tcp_info saw the probes go out
        # what the pool check sees, before anyone reads the error
        assert backend.find_dead([plain, client]) == [client]
        assert backend.tcp_info(client).state == "CLOSE"
        assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ETIMEDOUT
        # the connection without keepalive knows nothing
        assert backend.is_alive(plain) is True and backend.tcp_info(plain).state == "ESTABLISHED"
    finally:
        for s in (client, server, plain, plain_server):
            s.close()


def test_listener_configured_once_detects_for_accepted_connections(backend, dead_peer_link):
    """The server side: keepalive set on the listener only, inherited by the accepted socket."""
    link = dead_peer_link
    netns.pin_neighbours(link)
    listener = link.socket_in(link.server_ns, socket.AF_INET, socket.SOCK_STREAM)
    client = link.socket_in(link.client_ns, socket.AF_INET, socket.SOCK_STREAM)
    accepted = None
    try:
        listener.bind((netns.SERVER_ADDR, 0))
        listener.listen(1)
        backend.set_keepalive(listener, idle=1, interval=1, count=1)
        client.connect(listener.getsockname())
        accepted, _ = listener.accept()
        start = time.monotonic()
        # the client's end vanishes this time: take its link down from the server's view
        netns._ip("-n", link.client_ns, "link", "set", link.tag + "c", "down")
        failed = netns.failure_times([accepted], 6, start)
        print(f"\n[{backend.name}] inherited 1/1/1 on the server side: failed after "
              f"{failed.get(accepted, float('nan')):.2f} s")
        assert accepted in failed
        assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ETIMEDOUT
    finally:
        for s in (listener, client, accepted):
            if s is not None:
                s.close()
