"""N connected loopback TCP sockets whose peers live in a child process (``Pool``), the
connections every pytest-benchmark scenario measures on.

The sizes (:func:`sizes`) are bounded by the open-file limit (one fd per connection in
this process, the peers' in the child) and by the ephemeral port range (every connection
goes from 127.0.0.1 to one listener).
"""
from __future__ import annotations

import select
import socket
import subprocess
import sys
import time
from typing import List, Optional, Sequence

from procs import raise_nofile, sysctl

RESERVED_FDS = 1000  # left free under the open-file limit for the interpreter and pipes

_PEER = r"""
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = {}
for _ in range(n):
    try:
        s = socket.create_connection(("127.0.0.1", port))
    except OSError as exc:
        sys.exit(f"connect failed: {exc.strerror}")
    socks[s.getsockname()[1]] = s
print("ready", flush=True)
for line in sys.stdin:
    cmd, *ports = line.split()
    for p in map(int, ports):
        if cmd == "close":
            socks.pop(p).close()
        elif cmd == "send":
            socks[p].send(b"x")
    print("ok", flush=True)
"""


def room() -> int:
    """The most connections a Pool can hold here: the open-file limit less RESERVED_FDS,
    and nine tenths of the ephemeral port range (the rest left to other programs)."""
    low, high = map(int, sysctl("net.ipv4.ip_local_port_range").split())
    return max(0, min(raise_nofile() - RESERVED_FDS, (high - low + 1) * 9 // 10))


def sizes() -> List[int]:
    """1,000 / 5,000 / 10,000 and the most :func:`room` allows (rounded down to a thousand)."""
    limit = room() // 1000 * 1000
    return sorted({*(n for n in (1000, 5000, 10000) if n <= limit), limit} - {0})


def wait_for(socks: Sequence[socket.socket], event: int, timeout: float = 10.0) -> None:
    """Wait until every one of ``socks`` reports poll ``event``; RuntimeError after
    ``timeout`` seconds (loopback delivers within microseconds)."""
    waiting = {s.fileno() for s in socks}
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        p = select.poll()
        for fd in waiting:
            p.register(fd, event)
        waiting -= {fd for fd, ev in p.poll(100) if ev & event}
    if waiting:
        raise RuntimeError(f"{len(waiting)} sockets never saw the peer's data or FIN")


class Pool:
    """``n`` connected loopback TCP sockets (``pool.socks``, non-blocking), their peers in a
    child process. ``close_peers(i)`` / ``send(i)`` make the peers of ``socks[i]`` for i in
    ``i`` close (a FIN arrives) or send one byte (the socket turns readable), and wait until
    it arrived. RuntimeError when the connections cannot be made (the message says why)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.socks: List[socket.socket] = []
        self._listener = socket.socket()
        self._proc: Optional[subprocess.Popen] = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        lst = self._listener
        lst.bind(("127.0.0.1", 0))
        lst.listen(4096)
        lst.settimeout(0.1)
        self._proc = subprocess.Popen([sys.executable, "-c", _PEER, str(lst.getsockname()[1]), str(self.n)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while len(self.socks) < self.n:
            try:
                self.socks.append(lst.accept()[0])
            except socket.timeout:
                if self._proc.poll() is not None:
                    lines = self._proc.stderr.read().strip().splitlines() or [f"exit status {self._proc.returncode}"]
                    raise RuntimeError(f"the peer process stopped after {len(self.socks)} of {self.n}"
                                       f" connections: {lines[-1]}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the peer process opened {len(self.socks)} of {self.n} connections in 30 s") from None
        for s in self.socks:
            s.setblocking(False)
        if self._proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the peer process failed to connect {self.n} sockets")
        self._ports = [s.getpeername()[1] for s in self.socks]

    def _command(self, cmd: str, indices: Sequence[int]) -> None:
        self._proc.stdin.write(cmd + " " + " ".join(str(self._ports[i]) for i in indices) + "\n")
        self._proc.stdin.flush()
        if self._proc.stdout.readline().strip() != "ok":
            raise RuntimeError(f"the peer process did not {cmd}")

    def close_peers(self, indices: Sequence[int]) -> None:
        self._command("close", indices)
        wait_for([self.socks[i] for i in indices], getattr(select, "POLLRDHUP", select.POLLIN))

    def send(self, indices: Sequence[int]) -> None:
        self._command("send", indices)
        wait_for([self.socks[i] for i in indices], select.POLLIN)

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks = []
        self._listener.close()
        if self._proc is not None:
            self._proc.stdin.close()
            self._proc.wait(timeout=30)
            self._proc.stdout.close()
            self._proc.stderr.close()
            self._proc = None

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
