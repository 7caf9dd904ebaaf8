"""Two network namespaces joined by a veth pair: a peer that can be made to vanish.

``with DeadPeerLink() as link: client, server = link.connect(); link.cut()`` gives a
connected TCP pair whose ends live in different namespaces of this process; ``cut()``
takes the server side's link down, so the client's packets (keepalive probes,
retransmissions) go unanswered and the kernel times the connection out. Needs root and
iproute2; ``skip_reason()`` says why it cannot run where it cannot.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import socket
import subprocess
from typing import Optional, Tuple

CLONE_NEWNET = 0x40000000
SERVER_ADDR, CLIENT_ADDR = "198.18.0.1", "198.18.0.2"  # RFC 2544 test range, inside our namespaces only
_ids = itertools.count()
_skip: Optional[str] = None
_checked = False


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def skip_reason() -> Optional[str]:
    """None where namespaces work, else why the namespace tests must be skipped."""
    global _skip, _checked
    if _checked:
        return _skip
    _checked = True
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        _skip = "network namespaces need root"
    elif shutil.which("ip") is None:
        _skip = "iproute2 ('ip') is not installed"
    else:
        name = f"fkprobe{os.getpid()}"
        try:
            _ip("netns", "add", name)
            _ip("netns", "del", name)
        except (subprocess.SubprocessError, OSError) as exc:
            detail = getattr(exc, "stderr", "") or exc
            _skip = f"'ip netns add' does not work here: {str(detail).strip()}"
    return _skip


class DeadPeerLink:
    """Namespaces <tag>s (server) and <tag>c (client) joined by veth <tag>s/<tag>c."""

    def __init__(self) -> None:
        self.tag = f"fk{os.getpid() % 100000}x{next(_ids)}"
        self.server_ns, self.client_ns = self.tag + "s", self.tag + "c"
        self._made = []

    def __enter__(self) -> "DeadPeerLink":
        try:
            for ns in (self.server_ns, self.client_ns):
                _ip("netns", "add", ns)
                self._made.append(ns)
            _ip("link", "add", self.tag + "s", "netns", self.server_ns, "type", "veth",
                "peer", "name", self.tag + "c", "netns", self.client_ns)
            for ns, dev, addr in ((self.server_ns, self.tag + "s", SERVER_ADDR),
                                  (self.client_ns, self.tag + "c", CLIENT_ADDR)):
                _ip("-n", ns, "addr", "add", addr + "/24", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in self._made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self._made = []

    def socket_in(self, ns: str, *args: object) -> socket.socket:
        """A socket created inside namespace ``ns`` (it stays bound to it)."""
        home = os.open("/proc/self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                return socket.socket(*args)
            finally:
                _setns(home)
        finally:
            os.close(target)
            os.close(home)

    def connect(self, configure=None) -> Tuple[socket.socket, socket.socket]:
        """(client, server) of one established connection across the link.

        ``configure(client)`` runs on the client socket before it connects.
        """
        listener = self.socket_in(self.server_ns, socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind((SERVER_ADDR, 0))
            listener.listen(1)
            client = self.socket_in(self.client_ns, socket.AF_INET, socket.SOCK_STREAM)
            try:
                if configure is not None:
                    configure(client)
                client.settimeout(5)
                client.connect(listener.getsockname())
                server, _ = listener.accept()
            except BaseException:
                client.close()
                raise
            return client, server
        finally:
            listener.close()

    def cut(self) -> None:
        """Take the server's end of the link down: the peer stops answering."""
        _ip("-n", self.server_ns, "link", "set", self.tag + "s", "down")


def failure_times(socks, timeout: float, start: float) -> dict:
    """{sock: seconds from ``start`` (time.monotonic()) until poll(2) reported it failed
    (POLLERR/POLLHUP)} for the members of ``socks`` that failed within ``timeout`` of
    ``start``. Consumes neither data nor the pending error."""
    import select
    import time

    by_fd = {s.fileno(): s for s in socks}
    p = select.poll()
    for fd in by_fd:
        p.register(fd, 0)  # POLLERR and POLLHUP are always reported
    failed = {}
    while len(failed) < len(by_fd):
        left = start + timeout - time.monotonic()
        if left <= 0:
            break
        for fd, _ in p.poll(min(left, 0.05) * 1000):
            failed[by_fd[fd]] = time.monotonic() - start
            p.unregister(fd)
    return failed


def pin_neighbours(link: DeadPeerLink) -> None:
    """Permanent ARP entries on both ends of ``link``: after ``cut()`` the packets are
    simply lost, as behind a router, and the kernel never reports a neighbour failure
    (EHOSTUNREACH as a soft error, which would replace ETIMEDOUT)."""
    import json

    ends = ((link.server_ns, link.tag + "s", SERVER_ADDR), (link.client_ns, link.tag + "c", CLIENT_ADDR))
    macs = {}
    for ns, dev, _ in ends:
        out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", dev], check=True,
                             capture_output=True, text=True, timeout=10).stdout
        macs[dev] = json.loads(out)[0]["address"]
    for (ns, dev, _), (_, peer_dev, peer_addr) in zip(ends, reversed(ends)):
        _ip("-n", ns, "neigh", "replace", peer_addr, "lladdr", macs[peer_dev], "dev", dev, "nud", "permanent")
