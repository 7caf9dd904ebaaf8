"""One ``fastka serve`` worker: the listener, its KeepaliveManager and the loop.

A ``selectors`` selector watches the listener, the manager's epoll fd (nested), sockets
with unsent output, lingering closes and a signal wake-up socket; the manager owns the idle
clock of every connection and closes idle ones with a FIN.

- One loop iteration accepts for at most TICK/2 seconds and reads for the rest of TICK,
  then polls the manager again (which closes the connections whose idle time is up): a
  flood of connections or requests delays no idle close by more than about TICK.
- Fair service: readable connections wait in one queue, in the order they were reported;
  an iteration serves from its front until the budget runs out, and the next iteration
  starts where this one stopped (round-robin), so no connection is passed over twice.
- The request clock: the first byte of a request that has not completed starts the
  connection's clock (one entry per connection, never one per request), which a complete
  request stops, or restarts when the same read began the next request: a request not
  complete within ``keepalive_timeout`` seconds of its first byte is dropped (no
  slowloris; bytes that never make a request, such as a ``\\r\\n`` a second, do not keep a
  connection). While output does not drain, the clock measures send progress (nginx
  ``send_timeout``).
- The server closes with ``shutdown(SHUT_WR)`` and reads what the client still sends until
  its FIN (at most LINGER seconds), so that a response is never lost to a reset.
- SIGINT/SIGTERM: stop accepting, finish responses in flight, close the rest with a FIN.
"""
from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import sys
import time
from collections import OrderedDict, deque
from typing import Any, Deque, Dict, Optional, Tuple

from fastka import Event, _jitter

from .connection import Callbacks, Conn, ParserPool
from .protocol import RECV_SIZE, Heads, Protocol, advertised_timeout, fast_path
from .stats import PUBLISH_PERIOD, Stats

ACCEPT_PAUSE = 0.1  # seconds accept() rests after running out of file descriptors
LOG_PERIOD = 10.0  # seconds between two log lines about the same accept() failure
LINGER = 2.0  # seconds a closing connection may take to send its FIN after ours
TICK = 0.01  # seconds of accepting and reading one loop iteration may take before the manager is polled again
BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
MAX_WAIT = 3600.0  # seconds one select() may sleep (epoll takes at most ~24 days); the loop then recomputes


class Server(Protocol):
    """One worker (see the module doc). ``keepalive_timeout``, ``keepalive_margin``:
    seconds; ``max_requests`` per connection, spread by ``jitter`` (a fraction 0..0.5, see
    fastka._jitter); ``max_header_size``: bytes; ``tcp_keepalive``: (idle, interval, count),
    None parts keeping the kernel's values. OSError when it cannot listen."""

    def __init__(self, host: str, port: int, *, keepalive_timeout: float, max_requests: int,
                 max_header_size: int, tcp_keepalive: Optional[Tuple[Optional[int], ...]],
                 backend: Any, keepalive_margin: float = 1.0, jitter: float = 0.0,
                 stats: Optional[Stats] = None, worker: int = 0, reuse_port: bool = False) -> None:
        self.keepalive_timeout = keepalive_timeout
        self.keepalive_hint = advertised_timeout(keepalive_timeout, keepalive_margin)
        self.max_requests = max_requests
        self.jitter = _jitter.check(jitter)
        self.max_header_size = max_header_size
        self.worker = worker
        self.stats = stats or Stats(1)
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        self.listener = socket.socket(info[0], socket.SOCK_STREAM)
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if tcp_keepalive is not None:
                idle, intvl, cnt = tcp_keepalive
                backend.update_keepalive(self.listener, idle=idle, interval=intvl, count=cnt)
            self.listener.bind(info[4])
            self.listener.listen(BACKLOG)
            self.listener.setblocking(False)
            self.address = self.listener.getsockname()
            self.mgr = backend.KeepaliveManager(idle_timeout=keepalive_timeout)
        except BaseException:
            self.listener.close()
            raise
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, "accept")
        self.sel.register(self.mgr.fileno(), selectors.EVENT_READ, "manager")
        self.sel.register(self._wake_r, selectors.EVENT_READ, "signal")
        self.conns: Dict[socket.socket, Conn] = {}  # the manager tracks the sockets
        self.lingering: Dict[int, Tuple[socket.socket, float]] = {}
        # Request deadlines: connections with a request in progress or output not
        # progressing, in the order their clock started. Every clock runs for
        # keepalive_timeout, so insertion order is deadline order; the value is the deadline
        # (monotonic seconds).
        self.deadlines: "OrderedDict[Conn, float]" = OrderedDict()
        # Readable connections waiting for their turn, in the order the manager reported them.
        self.ready: Deque[Conn] = deque()
        self._callbacks = Callbacks(max_header_size, self._send)
        self._parsers = ParserPool(self._callbacks)
        self._heads = Heads(self.keepalive_hint)
        self._plain = fast_path(backend, max_header_size)
        self._refresh_heads()
        self.unsent = 0  # bytes of output not yet sent, all connections
        self.requests = 0
        self.plain_requests = 0  # of which answered by the fast path
        self.accepted = 0
        self.closes: Dict[str, int] = {}
        self.stopping = False
        self._accept_paused: Optional[float] = None  # monotonic time accepting resumes
        self._accept_failures = 0  # accept() failures not yet logged
        self._accept_logged = -LOG_PERIOD  # monotonic time of the last such log line
        self._published = 0.0
        self._publish(time.monotonic())

    # -- bookkeeping ----------------------------------------------------------------------

    def _figures(self) -> Tuple[int, int, int]:
        return len(self.conns), self.accepted, self.requests

    def _publish(self, now: float) -> None:
        """Write this worker's row of the shared figures (an idle worker need not wake for it)."""
        self._published = now
        self._published_figures = self._figures()
        self.stats.write(self.worker, pid=os.getpid(), open_connections=len(self.conns),
                         accepted=self.accepted, requests=self.requests)

    def status(self) -> Dict[str, Any]:
        self._publish(time.monotonic())
        workers = [dict(worker=w, **self.stats.read(w)) for w in range(self.stats.workers)]
        return {
            "worker": self.worker,
            "pid": os.getpid(),
            "open_connections": len(self.conns),
            "accepted": self.accepted,
            "requests": self.requests,
            "hot_path_requests": self.plain_requests,
            "closes": dict(sorted(self.closes.items())),
            "request_clocks": len(self.deadlines),
            "unsent_bytes": self.unsent,
            "keepalive_timeout": self.keepalive_timeout,
            "keepalive_hint": self.keepalive_hint,
            "max_requests": self.max_requests,
            "jitter": self.jitter,
            "workers": workers,
        }

    def _count(self, reason: str) -> None:
        self.closes[reason] = self.closes.get(reason, 0) + 1

    def _start_clock(self, c: Conn, now: float) -> None:
        """(Re)start the request clock of ``c``: it runs out keepalive_timeout from now."""
        if c.timed:
            del self.deadlines[c]
        self.deadlines[c] = now + self.keepalive_timeout
        c.timed = True

    def _stop_clock(self, c: Conn) -> None:
        if c.timed:
            del self.deadlines[c]
            c.timed = False

    def _release(self, c: Conn) -> None:
        """Forget everything a connection holds besides its socket."""
        c.gone = True
        self.conns.pop(c.sock, None)
        self._stop_clock(c)
        if c.out is not None:
            self.unsent -= len(c.out)
            c.out = None
        c.parser = None  # a parser that saw this connection's last bytes is not reused
        if c.writing:
            self.sel.unregister(c.sock)
            c.writing = False

    def _discard(self, c: Conn) -> None:
        """Forget and close a connection."""
        if c.gone:
            return
        self._release(c)
        c.sock.close()

    def _drop(self, c: Conn, reason: str) -> None:
        """The client went away (reset or FIN seen by recv/send): close at once."""
        self.mgr.discard(c.sock)
        self._count(reason)
        self._discard(c)

    def _server_close(self, c: Conn, reason: str) -> None:
        """Close from our side: FIN now, then read until the client's FIN (lingering close)."""
        self._count(reason)
        self.mgr.discard(c.sock)
        sock = c.sock
        self._release(c)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        self.lingering[sock.fileno()] = (sock, time.monotonic() + LINGER)
        self.sel.register(sock, selectors.EVENT_READ, "linger")

    def _end_linger(self, fd: int) -> None:
        sock, _ = self.lingering.pop(fd)
        self.sel.unregister(sock)
        sock.close()

    # -- the loop -------------------------------------------------------------------------

    def _accept(self, until: float) -> None:
        """Accept what is queued until the loop iteration's budget ends at ``until``
        (monotonic seconds); the listener stays readable for the next iteration."""
        while time.monotonic() < until:
            try:
                sock, _addr = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # out of fds/memory: stop accepting for a while instead of spinning
                    self._accept_failures += 1
                    now = time.monotonic()
                    if now - self._accept_logged >= LOG_PERIOD:
                        print(f"fastka serve: accept: {exc.strerror}: {self._accept_failures} time(s) in the last"
                              f" {LOG_PERIOD:g} s; {len(self.conns)} connections open; pausing accept for"
                              f" {ACCEPT_PAUSE:g} s each time", file=sys.stderr, flush=True)
                        self._accept_logged = now
                        self._accept_failures = 0
                    self.sel.unregister(self.listener)
                    self._accept_paused = now + ACCEPT_PAUSE
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                raise
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns[sock] = Conn(sock, _jitter.count(self.max_requests, self.jitter))
            self.accepted += 1
            self.mgr.add(sock)

    def _expire(self, now: float) -> None:
        """Drop requests not complete (or output not progressing) in time; end overdue
        lingering closes; resume accepting."""
        deadlines = self.deadlines
        while deadlines:
            c, deadline = next(iter(deadlines.items()))
            if deadline > now:
                break
            self._stop_clock(c)
            if c.out is not None:
                self.unsent -= len(c.out)
                c.out = None
            c.closing = "request_timeout"
            self._flush(c)
        for fd in [fd for fd, (_, until) in self.lingering.items() if until <= now]:
            self._end_linger(fd)
        if self._accept_paused is not None and self._accept_paused <= now:
            self._accept_paused = None
            if not self.stopping:
                self.sel.register(self.listener, selectors.EVENT_READ, "accept")
        if now - self._published >= PUBLISH_PERIOD and self._figures() != self._published_figures:
            self._publish(now)

    def _timeout(self) -> float:
        """Seconds the next select() may sleep: until the earliest thing due, at most MAX_WAIT."""
        if self.ready:
            return 0.0
        now = time.monotonic()
        candidates = [MAX_WAIT]
        if self._figures() != self._published_figures:
            candidates.append(self._published + PUBLISH_PERIOD - now)
        d = self.mgr.next_deadline()
        if d is not None:
            candidates.append(d)
        if self.deadlines:
            candidates.append(next(iter(self.deadlines.values())) - now)
        if self.lingering:
            candidates.append(min(u for _, u in self.lingering.values()) - now)
        if self._accept_paused is not None:
            candidates.append(self._accept_paused - now)
        if self.stopping:
            candidates.append(0.1)
        return max(0.0, min(candidates))

    def stop(self) -> None:
        """Stop accepting; connections without output in flight get a FIN now."""
        if self.stopping:
            return
        self.stopping = True
        if self._accept_paused is None:
            self.sel.unregister(self.listener)
        self.listener.close()
        for c in list(self.conns.values()):
            if c.out:
                c.closing = c.closing or "shutdown"
            else:
                self._server_close(c, "shutdown")

    def serve_forever(self) -> None:
        old = {}
        prev_fd = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda *_: None)
        try:
            self._loop()
        finally:
            signal.set_wakeup_fd(prev_fd)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            self._publish(time.monotonic())

    def _loop(self) -> None:
        sel, mgr, ready, conns = self.sel, self.mgr, self.ready, self.conns
        readable, monotonic = Event.READABLE, time.monotonic
        stop_by = 0.0
        while True:
            if self.stopping:
                if not self.conns:
                    break
                if time.monotonic() > stop_by:
                    break
            events = sel.select(self._timeout())
            until = time.monotonic() + TICK
            self._refresh_heads()
            for key, _ in events:
                tag = key.data
                if tag == "accept":
                    self._accept(until - TICK / 2)  # the other half is for reading
                elif tag == "manager":
                    pass
                elif tag == "signal":
                    try:
                        while self._wake_r.recv(64):
                            pass
                    except BlockingIOError:
                        pass
                    self.stop()
                    stop_by = time.monotonic() + self.keepalive_timeout
                elif tag == "linger":
                    fd = key.fd
                    try:
                        more = self.lingering[fd][0].recv(RECV_SIZE)
                    except BlockingIOError:
                        continue
                    except OSError:
                        more = b""
                    if not more:
                        self._end_linger(fd)
                elif not tag.gone:
                    self._flush(tag)
            # poll(0) also closes (FIN) every connection whose idle time is up: the budget
            # keeps the next poll near, so a flood of accepts and requests delays no FIN by
            # more than about TICK. A readable connection joins the back of the queue
            # (once); the queue is served from its front, at least one connection per
            # iteration, so one the budget left unserved is first in the next iteration.
            for sock, ev in mgr.poll(0):
                c = conns[sock]
                if ev != readable:
                    self._count(Event(ev).name)
                    self._discard(c)  # the manager closed its socket
                elif not c.queued:
                    c.queued = True
                    ready.append(c)
            while ready:
                c = ready.popleft()
                c.queued = False
                if not c.gone and not c.paused:
                    self._on_readable(c)
                if monotonic() >= until:
                    break
            self._expire(time.monotonic())

    def close(self) -> None:
        """Close everything still open (at once; use stop() for a graceful end)."""
        for c in list(self.conns.values()):
            self._discard(c)
        for fd in list(self.lingering):
            self._end_linger(fd)
        self.ready.clear()
        if not self.stopping:
            if self._accept_paused is None:
                self.sel.unregister(self.listener)
            self.listener.close()
        self.mgr.close()
        self.sel.close()
        self._wake_r.close()
        self._wake_w.close()
