"""N connected loopback TCP connections, both ends in this process (``Pool``): the
connections every pytest-benchmark scenario and find_dead_vs_poll.py measure on.

The sizes (:func:`sizes`) are bounded by the open-file limit (two fds per connection) and
by the ephemeral port range (every connection goes from 127.0.0.1 to one listener).
Sizes up to the open-file limit itself, with the peers in a child process, are
``fastka bench``'s.
"""
from __future__ import annotations

import select
import socket
import time
from typing import List, Sequence

from procs import raise_nofile, sysctl

RESERVED_FDS = 1000  # left free under the open-file limit for the interpreter and pipes


def room() -> int:
    """The most connections a Pool can hold here: half the open-file limit less
    RESERVED_FDS, and nine tenths of the ephemeral port range (the rest left to other
    programs)."""
    low, high = map(int, sysctl("net.ipv4.ip_local_port_range").split())
    return max(0, min((raise_nofile() - RESERVED_FDS) // 2, (high - low + 1) * 9 // 10))


def sizes() -> List[int]:
    """1,000 / 5,000 / 10,000 and the most :func:`room` allows (rounded down to a thousand)."""
    limit = room() // 1000 * 1000
    return sorted({*(n for n in (1000, 5000, 10000) if n <= limit), limit} - {0})


class Pool:
    """``n`` connected loopback TCP sockets (``pool.socks``, non-blocking) and their peers.
    ``close_peers(i)`` / ``send(i)`` make the peers of ``socks[i]`` for i in ``i`` close
    (a FIN arrives) or send one byte (the socket turns readable), and wait until it
    arrived (RuntimeError after 10 s; loopback delivers within microseconds). OSError when
    the connections cannot be made (the open-file limit, the port range)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.socks: List[socket.socket] = []
        self._peers: List[socket.socket] = []
        try:
            with socket.create_server(("127.0.0.1", 0), backlog=min(n, 4096)) as lst:
                for _ in range(n):
                    self._peers.append(socket.create_connection(lst.getsockname()))
                    self.socks.append(lst.accept()[0])
        except BaseException:
            self.close()
            raise
        for s in self.socks:
            s.setblocking(False)

    def close_peers(self, indices: Sequence[int]) -> None:
        for i in indices:
            self._peers[i].close()
        self._wait(indices, getattr(select, "POLLRDHUP", select.POLLIN))

    def send(self, indices: Sequence[int]) -> None:
        for i in indices:
            self._peers[i].send(b"x")
        self._wait(indices, select.POLLIN)

    def _wait(self, indices: Sequence[int], event: int) -> None:
        p = select.poll()
        for i in indices:
            p.register(self.socks[i], event)
        waiting, deadline = len(indices), time.monotonic() + 10
        while waiting:
            arrived = [fd for fd, ev in p.poll(100) if ev & event]
            for fd in arrived:
                p.unregister(fd)  # so that the next poll waits for the others
            waiting -= len(arrived)
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(f"the peers' data or FIN did not reach {waiting} of {len(indices)} sockets in 10 s")

    def close(self) -> None:
        for s in self.socks + self._peers:
            s.close()
        self.socks, self._peers = [], []

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
