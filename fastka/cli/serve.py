"""`fastka serve`: an HTTP/1.x keep-alive reference server on KeepaliveManager.

Each worker process runs one loop: a ``selectors`` selector watches the listener, the
manager's epoll fd (nested), sockets with unsent output and a signal wake-up socket; the
manager owns the idle clock of every connection and closes idle ones with a FIN. HTTP is
parsed by httptools (the ``serve`` extra); keep-alive follows RFC 9112 section 9 and nginx:

- HTTP/1.1 is persistent unless the request says ``Connection: close``; HTTP/1.0 only when
  it says ``Connection: keep-alive``, which the response echoes. A request without an
  HTTP/1.x version (HTTP/0.9 style ``GET /``) gets 400 and the connection closes.
- Persistent responses carry ``Keep-Alive: timeout=N, max=M`` (M: requests left); the last
  allowed request (``--max-requests``) is answered with ``Connection: close``.
- Timers cost O(connections): the idle clock is the manager's idle list (restarted by
  ``touch`` when a request completes); the first byte of a request that has not completed
  starts the connection's request clock (one entry per connection, not per request), which
  nothing but a complete request stops: a request not complete within
  ``--keepalive-timeout`` seconds of its first byte is dropped (no slowloris, and bytes that
  never make a request, such as a ``\\r\\n`` a second, do not keep a connection).
- The request line target plus header lines are counted in bytes; over
  ``--max-header-size`` they get 431, malformed requests 400, then the connection closes.
  ``Expect: 100-continue`` gets ``100 Continue`` before the body.
- Output backpressure: a connection with more than OUT_HIGH bytes of unsent output, or with
  any unsent output while all connections together hold more than OUT_TOTAL, is not read
  until its output drains (the request clock then measures send progress, as nginx
  ``send_timeout``). One read is at most RECV_SIZE bytes, so a connection holds at most
  OUT_HIGH plus the responses to one read.
- An idle connection holds its socket, its manager slot and a small object; the parser is
  taken from a pool when bytes arrive and given back when no request is in progress.
- With the "c" backend, a read that holds nothing but plain GET/HEAD requests (see
  src/http_simple.h) is answered in C (fastka._serve_c); everything else goes through
  httptools. Both give the same bytes.
- One loop iteration accepts for at most TICK/2 seconds and reads for the rest of TICK,
  then polls the manager again (which closes the connections whose idle time is up): a
  flood of connections or requests delays no idle close by more than about TICK.
- The server closes with ``shutdown(SHUT_WR)`` and reads what the client still sends until
  its FIN (at most LINGER seconds), so that a response is never lost to a reset.
- SIGINT/SIGTERM: stop accepting, finish responses in flight, close the rest with a FIN.
- ``--workers N``: N processes accept on the same port (SO_REUSEPORT), each with its own
  manager; a supervisor restarts a worker that dies and forwards SIGINT/SIGTERM. A worker
  stops gracefully when the supervisor dies, even by SIGKILL (Linux).
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import json
import mmap
import os
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

from .. import _backends

try:
    import httptools
except ImportError:  # run() says what to install
    httptools = None
from .._manager import MAX_TIMEOUT
from .._types import Event
from ._args import integer, seconds

ACCEPT_PAUSE = 0.1  # seconds accept() rests after running out of file descriptors
LOG_PERIOD = 10.0  # seconds between two log lines about the same accept() failure
PUBLISH_PERIOD = 1.0  # seconds: how stale another worker's figures in /status may be
LINGER = 2.0  # seconds a closing connection may take to send its FIN after ours
RECV_SIZE = 16384  # bytes read at once: bounds the responses one read can produce
OUT_HIGH = 65536  # bytes of unsent output above which a connection is not read
OUT_TOTAL = 16 * 1024 * 1024  # bytes of unsent output (all connections) above which none with output is read
PARSER_POOL = 256  # idle parsers kept for reuse
TICK = 0.01  # seconds of accepting and reading one loop iteration may take before the manager is polled again
BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
MAX_WORKERS = 256
RESTART_PAUSE = 1.0  # seconds a worker slot waits before it is restarted again
PR_SET_PDEATHSIG = 1  # linux/prctl.h
BODY = b"Hello from fastka\n"
SERVER = "fastka"
EXTRA_HINT = "fastka serve needs httptools: pip install 'fastka[serve]'"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
TEXT = "text/plain; charset=utf-8"


# -- command line -------------------------------------------------------------------------


def _tcp_keepalive(text: str) -> Tuple[Optional[int], Optional[int], Optional[int]]:
    """IDLE:INTVL:CNT as nginx ``so_keepalive=`` (an empty part keeps the kernel's value)."""
    parts = text.split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r} is not IDLE:INTVL:CNT (e.g. 30:10:3; an empty part keeps the kernel default)")
    values: List[Optional[int]] = []
    for name, part in zip(("IDLE", "INTVL", "CNT"), parts):
        if part == "":
            values.append(None)
            continue
        try:
            values.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: {name} {part!r} is not an integer") from None
    from .._config import KeepaliveConfig

    idle, intvl, cnt = values
    try:  # the library's own validation names the field, the value and the range
        KeepaliveConfig(idle=idle or 1, interval=intvl or 1, count=cnt or 1)
        for name, v in zip(("IDLE", "INTVL", "CNT"), values):
            if v is not None and v <= 0:
                raise ValueError(f"{name}={v} is out of range; allowed: IDLE and INTVL 1..32767, CNT 1..127")
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return idle, intvl, cnt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=integer(0, 65535), default=8080,
                        help="TCP port (default 8080; 0 picks a free one, printed on stdout)")
    parser.add_argument("--keepalive-timeout", type=seconds(0.001, MAX_TIMEOUT), default=5.0,
                        metavar="SECONDS", help="close idle connections (with a FIN), and drop requests not complete"
                        " (or output not progressing) after this long (default 5)")
    parser.add_argument("--max-requests", type=integer(1, 2**31 - 1), default=1000,
                        metavar="N", help="requests per connection; the last one is answered with Connection: close (default 1000)")
    parser.add_argument("--max-header-size", type=integer(256, 2**31 - 1, " bytes"), default=8192,
                        metavar="BYTES", help="request target plus header lines larger than this get 431 (default 8192)")
    parser.add_argument("--tcp-keepalive", type=_tcp_keepalive, metavar="IDLE:INTVL:CNT",
                        help="TCP keepalive on the listener, inherited by every connection, as nginx so_keepalive= (seconds:seconds:count)")
    parser.add_argument("--workers", type=integer(1, MAX_WORKERS), default=1, metavar="N",
                        help=f"worker processes sharing the port with SO_REUSEPORT, each with its own manager (default 1, at most {MAX_WORKERS})")
    parser.add_argument("--backend", choices=_backends.NAMES,
                        help="fastka backend (default: the one this process uses)")


def run(args: argparse.Namespace) -> int:
    if httptools is None:
        print(f"fastka serve: error: {EXTRA_HINT}", file=sys.stderr)
        return 2
    try:
        backend = _backends.default() if args.backend is None else _backends.load(args.backend)
    except _backends.BackendUnavailable as exc:
        print(f"fastka serve: error: --backend {args.backend}: {exc}", file=sys.stderr)
        return 2
    options = dict(keepalive_timeout=args.keepalive_timeout, max_requests=args.max_requests,
                   max_header_size=args.max_header_size, tcp_keepalive=args.tcp_keepalive, backend=backend)
    stats = Stats(args.workers)
    try:
        if args.workers == 1:
            server = Server(args.host, args.port, stats=stats, worker=0, **options)
            address = server.address
        else:
            supervisor = Supervisor(args.host, args.port, args.workers, stats, options)
            address = supervisor.address
    except OSError as exc:
        print(f"fastka serve: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    host, port = address[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on http://{shown}:{port} (backend {backend.name}, workers {args.workers},"
          f" keepalive-timeout {args.keepalive_timeout:g} s, max-requests {args.max_requests})", flush=True)
    if args.workers == 1:
        try:
            server.serve_forever()
        finally:
            server.close()
        requests = server.requests
    else:
        code = supervisor.run()
        if code:
            return code
        requests = stats.total("requests")
    print(f"stopped after {requests} requests", flush=True)
    return 0


# -- per-worker figures, shared with the supervisor and the other workers ------------------


class Stats:
    """One row of counters per worker in anonymous shared memory (created before fork).

    A worker writes its own row (at most once per PUBLISH_PERIOD when it changed, and before
    answering /status); /status reads every row, so the other workers' figures are at most
    PUBLISH_PERIOD old.
    """

    FIELDS = ("pid", "open_connections", "accepted", "requests", "restarts")
    _row = struct.Struct("<" + "q" * len(FIELDS))

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._mem = mmap.mmap(-1, self._row.size * workers)

    def write(self, worker: int, **values: int) -> None:
        row = dict(zip(self.FIELDS, self._row.unpack_from(self._mem, worker * self._row.size)))
        row.update(values)
        self._row.pack_into(self._mem, worker * self._row.size, *(row[f] for f in self.FIELDS))

    def read(self, worker: int) -> Dict[str, int]:
        return dict(zip(self.FIELDS, self._row.unpack_from(self._mem, worker * self._row.size)))

    def total(self, field: str) -> int:
        return sum(self.read(w)[field] for w in range(self.workers))


def _end_with_parent(parent: int) -> None:
    """In a worker: get SIGTERM (a graceful stop) when the supervisor ``parent`` dies, even
    by SIGKILL (Linux PR_SET_PDEATHSIG, prctl(2)); exit now if it died already. Elsewhere a
    worker outlives a killed supervisor."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != parent:  # died between fork() and prctl(): no signal will come
        os._exit(0)


class Supervisor:
    """Starts ``workers`` processes that each listen on the port with SO_REUSEPORT,
    restarts one that dies (at most once per RESTART_PAUSE seconds per slot), and on
    SIGINT/SIGTERM asks every worker to stop gracefully and waits for them."""

    def __init__(self, host: str, port: int, workers: int, stats: Stats, options: Dict[str, Any]) -> None:
        self.host, self.workers, self.stats, self.options = host, workers, stats, options
        # Hold the port (bound, never listening: it takes no connections) so that port 0
        # names one port for every worker, and a restarted worker gets the same one.
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        self._hold = socket.socket(info[0], socket.SOCK_STREAM)
        try:
            self._hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self._hold.bind(info[4])
        except BaseException:
            self._hold.close()
            raise
        self.address = self._hold.getsockname()
        self.pids: Dict[int, int] = {}  # pid -> worker slot
        self._started: Dict[int, float] = {}  # slot -> monotonic time of its last start
        self._wake: Tuple[socket.socket, ...] = ()  # the supervisor's signal wake-up pair, once it runs
        ready_r, ready_w = os.pipe()
        try:
            for slot in range(workers):
                self._spawn(slot, ready_w)
            os.close(ready_w)
            ready_w = -1
            got = b""
            while len(got) < workers:  # each worker writes one byte once it listens
                chunk = os.read(ready_r, workers)
                if not chunk:
                    break
                got += chunk
        finally:
            os.close(ready_r)
            if ready_w >= 0:
                os.close(ready_w)
        if got.count(b"+") < workers:
            self._terminate_all()
            raise OSError(errno.EADDRINUSE, "a worker could not listen")

    def _spawn(self, slot: int, ready_fd: int = -1) -> None:
        self._started[slot] = time.monotonic()
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                _end_with_parent(parent)
                for s in (self._hold, *self._wake):
                    s.close()
                try:
                    server = Server(self.host, self.address[1], stats=self.stats, worker=slot, reuse_port=True, **self.options)
                except OSError as exc:
                    print(f"fastka serve: worker {slot}: cannot listen: {exc.strerror or exc}", file=sys.stderr, flush=True)
                    if ready_fd >= 0:
                        os.write(ready_fd, b"-")
                    return
                if ready_fd >= 0:
                    os.write(ready_fd, b"+")
                    os.close(ready_fd)
                try:
                    server.serve_forever()
                finally:
                    server.close()
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.pids[pid] = slot

    def _terminate_all(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        while self.pids:
            pid, _ = os.wait()
            self.pids.pop(pid, None)

    def run(self) -> int:
        """Supervise until SIGINT/SIGTERM; returns the exit status."""
        self._wake = wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        stop = []

        def on_stop(signum: int, _frame: Any) -> None:
            stop.append(signum)

        old = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        old[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda *_: None)
        prev_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        pending: Dict[int, float] = {}  # slot -> monotonic time it may restart
        try:
            while not stop:
                self._reap(pending)
                now = time.monotonic()
                for slot, when in list(pending.items()):
                    if when <= now:
                        del pending[slot]
                        self._spawn(slot)
                        self.stats.write(slot, restarts=self.stats.read(slot)["restarts"] + 1)
                wait = min(pending.values()) - now if pending else None
                wake_r.settimeout(None if wait is None else max(0.0, wait))
                try:
                    wake_r.recv(64)
                except (BlockingIOError, socket.timeout):
                    pass
            for pid in self.pids:
                os.kill(pid, signal.SIGTERM)
            while self.pids:  # each worker stops gracefully (at most --keepalive-timeout)
                try:
                    pid, _ = os.wait()
                except ChildProcessError:
                    break
                self.pids.pop(pid, None)
        finally:
            signal.set_wakeup_fd(prev_fd)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()
            self._hold.close()
        return 0

    def _reap(self, pending: Dict[int, float]) -> None:
        """Collect workers that ended; schedule their restart."""
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.pids.pop(pid, None)
            if slot is None:
                continue
            how = f"signal {-os.waitstatus_to_exitcode(status)}" if os.WIFSIGNALED(status) else f"status {os.waitstatus_to_exitcode(status)}"
            print(f"fastka serve: worker {slot} (pid {pid}) ended with {how}; restarting", file=sys.stderr, flush=True)
            pending[slot] = self._started[slot] + RESTART_PAUSE


# -- the server ---------------------------------------------------------------------------


def _plain_answerer(backend: Any) -> Any:
    """The compiled hot path (fastka._serve_c.answer) with the "c" backend, else None."""
    if backend.name != "c":
        return None
    try:
        from .._serve_c import answer
    except ImportError:  # built before the hot path existed: the general path serves alone
        return None
    return answer


class _TooLarge(Exception):
    """Raised from a parser callback when the request head exceeds --max-header-size."""


class Conn:
    """One client connection: what the manager tracks (``fileno``/``close``).

    ``url``, ``tokens`` and ``head`` describe the request being parsed and are reset to
    shared empty values between requests; ``parser`` is None while no request is in
    progress; ``out`` is None while nothing is unsent.
    """

    __slots__ = ("server", "sock", "fd", "parser", "out", "served", "closing", "in_msg", "partial",
                 "head", "raw", "url", "tokens", "timed", "paused", "writing", "gone")

    def __init__(self, server: "Server", sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.parser: Any = None
        self.out: Optional[bytearray] = None
        self.served = 0  # requests answered
        self.closing: Optional[str] = None  # why the server closes it, once decided
        self.in_msg = False  # between a request's first byte and its end, as the parser sees it
        self.partial = False  # bytes arrived that no complete request has followed yet
        self.head = 0  # bytes of request target and header lines so far; -1 once the head is complete
        self.raw = 0  # bytes received while the head was incomplete (a header line may still be open)
        self.url = b""
        self.tokens: Tuple[bytes, ...] = ()
        self.timed = False  # in Server._clock
        self.paused = False  # out of the manager while its output drains
        self.writing = False  # registered for EVENT_WRITE
        self.gone = False

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        """The manager drops it (idle, peer closed, reset)."""
        self.server._discard(self)


class _Parse:
    """The httptools protocol object of every parser: callbacks go to ``.c``, the
    connection being fed (parsers are pooled, so they belong to no connection)."""

    __slots__ = ("server", "c", "done")

    def __init__(self, server: "Server") -> None:
        self.server = server
        self.c: Any = None
        self.done: List[Tuple[Any, ...]] = []  # complete requests of the current feed

    def on_message_begin(self) -> None:
        c = self.c
        c.in_msg = True
        c.head = 0
        c.raw = 0
        c.url = b""
        c.tokens = ()

    def on_url(self, url: bytes) -> None:
        c = self.c
        c.url += url
        c.head += len(url)
        if c.head > self.server.max_header_size:
            raise _TooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        c = self.c
        c.head += len(name) + len(value) + 4  # "name: value\r\n"
        if c.head > self.server.max_header_size:
            raise _TooLarge
        lname = name.lower()
        if lname == b"connection":
            c.tokens += tuple(t.strip().lower() for t in value.split(b","))
        elif lname == b"expect" and value.strip().lower() == b"100-continue":
            c.tokens += (b"100-continue",)

    def on_headers_complete(self) -> None:
        c = self.c
        c.head = -1
        if b"100-continue" in c.tokens and not c.closing and c.parser.get_http_version() == "1.1":
            self.server._send(c, CONTINUE)

    def on_message_complete(self) -> None:
        c = self.c
        p = c.parser
        self.done.append((p.get_method(), p.get_http_version(), p.should_upgrade(), c.url, c.tokens))
        c.in_msg = False
        c.url = b""
        c.tokens = ()


class Server:
    """One worker: a listener, a KeepaliveManager and the loop (see the module doc)."""

    def __init__(self, host: str, port: int, *, keepalive_timeout: float, max_requests: int,
                 max_header_size: int, tcp_keepalive: Optional[Tuple[Optional[int], ...]],
                 backend: Any, stats: Optional[Stats] = None, worker: int = 0, reuse_port: bool = False) -> None:
        self.keepalive_timeout = keepalive_timeout
        self.max_requests = max_requests
        self.max_header_size = max_header_size
        self.worker = worker
        self.stats = stats or Stats(1)
        self._ka_timeout = max(1, int(round(keepalive_timeout)))
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
        self.conns: Dict[int, Conn] = {}
        self.lingering: Dict[int, Tuple[socket.socket, float]] = {}
        # The request clock: connections with a request in progress or output not
        # progressing, in the order their clock started. Every clock runs for
        # keepalive_timeout, so insertion order is deadline order; the value is the deadline.
        self._clock: "OrderedDict[Conn, float]" = OrderedDict()
        self._parse = _Parse(self)
        self._plain = _plain_answerer(backend)
        self._parsers: List[Any] = []
        self.unsent = 0  # bytes of output not yet sent, all connections
        self.requests = 0
        self.plain_requests = 0  # of which answered by the compiled hot path
        self.accepted = 0
        self.closes: Dict[str, int] = {}
        self.stopping = False
        self._accept_paused: Optional[float] = None  # monotonic time accepting resumes
        self._accept_failures = 0  # accept() failures not yet logged
        self._accept_logged = -LOG_PERIOD  # monotonic time of the last such log line
        self._date = (0, "")
        self._head_cache: Dict[Tuple[Any, ...], Tuple[bytes, bytes]] = {}
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
            "request_clocks": len(self._clock),
            "unsent_bytes": self.unsent,
            "keepalive_timeout": self.keepalive_timeout,
            "max_requests": self.max_requests,
            "workers": workers,
        }

    def _count(self, reason: str) -> None:
        self.closes[reason] = self.closes.get(reason, 0) + 1

    def _start_clock(self, c: Conn, now: float) -> None:
        """(Re)start the request clock of ``c``: it runs out keepalive_timeout from now."""
        if c.timed:
            del self._clock[c]
        self._clock[c] = now + self.keepalive_timeout
        c.timed = True

    def _stop_clock(self, c: Conn) -> None:
        if c.timed:
            del self._clock[c]
            c.timed = False

    def _release(self, c: Conn) -> None:
        """Forget everything a connection holds besides its socket."""
        c.gone = True
        self.conns.pop(c.fd, None)
        self._stop_clock(c)
        if c.out is not None:
            self.unsent -= len(c.out)
            c.out = None
        c.parser = None  # a parser that saw this connection's last bytes is not reused
        if c.writing:
            self.sel.unregister(c.sock)
            c.writing = False

    def _discard(self, c: Conn) -> None:
        """Forget and close a connection (the manager calls this when it drops one)."""
        if c.gone:
            return
        self._release(c)
        c.sock.close()

    def _drop(self, c: Conn, reason: str) -> None:
        """The client went away (reset or FIN seen by recv/send): close at once."""
        if c in self.mgr:
            self.mgr.remove(c)
        self._count(reason)
        self._discard(c)

    def _server_close(self, c: Conn, reason: str) -> None:
        """Close from our side: FIN now, then read until the client's FIN (lingering close)."""
        self._count(reason)
        if c in self.mgr:
            self.mgr.remove(c)
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

    # -- HTTP -----------------------------------------------------------------------------

    def _heads(self) -> Dict[Tuple[Any, ...], Tuple[bytes, bytes]]:
        """Response heads of the current second (their Date), by what else shapes them."""
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)))
            self._head_cache = {}
        return self._head_cache

    def _send(self, c: Conn, data: bytes) -> None:
        """Queue ``data`` for ``c`` (sent by _flush)."""
        if c.out is None:
            c.out = bytearray()
        c.out += data
        self.unsent += len(data)

    def _parts(self, status: str, ctype: str, length: int, extra: str, keep: bool) -> Tuple[bytes, bytes]:
        """A response head of this second, as the text before and after the one figure that
        varies (the Keep-Alive ``max=``; nothing for a closing answer)."""
        key = (status, ctype, length, extra, keep)
        heads = self._heads()
        parts = heads.get(key)
        if parts is None:
            text = (f"HTTP/1.1 {status}\r\nServer: {SERVER}\r\nDate: {self._date[1]}\r\n"
                    f"Content-Type: {ctype}\r\nContent-Length: {length}\r\n{extra}")
            if keep:
                text += f"Connection: keep-alive\r\nKeep-Alive: timeout={self._ka_timeout}, max="
            else:
                text += "Connection: close"
            parts = heads[key] = (text.encode("latin-1"), b"\r\n\r\n")
        return parts

    def _respond(self, c: Conn, status: str, body: bytes, *, head: bool, keep: bool,
                 ctype: str = TEXT, extra: str = "") -> None:
        before, after = self._parts(status, ctype, len(body), extra, keep)
        left = b"%d" % (self.max_requests - c.served) if keep else b""
        self._send(c, before + left + after if head else before + left + after + body)

    def _answer_plain(self, c: Conn, data: bytes) -> bool:
        """The hot path (compiled): answer a read of nothing but plain GET/HEAD requests in
        C, as _answer would; False (nothing done) for anything else."""
        before, after = self._parts("200 OK", TEXT, len(BODY), "", True)
        got = self._plain(data, self.max_header_size, self.max_requests - c.served - 1, before, after, BODY)
        if got is None:
            return False
        n, out = got
        c.served += n
        self.requests += n
        self.plain_requests += n
        self.mgr.touch(c)  # a complete request restarts the idle clock
        c.partial = False
        if c.out is None:  # nothing queued before: send the answers straight away
            try:
                sent = c.sock.send(out)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._drop(c, Event.RESET.name)
                return True
            if sent == len(out):
                return True
            out = out[sent:]
        self._send(c, out)
        self._flush(c)
        return True

    def _answer(self, c: Conn, done: List[Tuple[Any, ...]]) -> None:
        """Answer the complete requests parsed by the last feed, in order."""
        for method, version, upgrade, url, tokens in done:
            if c.closing:
                break
            if version not in ("1.1", "1.0"):  # HTTP/0.9 style, or a version we do not speak
                self._fail(c, "400 Bad Request", "bad_request")
                break
            c.served += 1
            self.requests += 1
            http10 = version == "1.0"
            keep = (b"keep-alive" in tokens) if http10 else (b"close" not in tokens)
            if not keep:
                c.closing = "connection_close"
            elif c.served >= self.max_requests:
                keep = False
                c.closing = "max_requests"
            elif upgrade:
                keep = False  # no protocol switch here: answer, then close
                c.closing = "connection_close"
            head = method == b"HEAD"
            path = url.split(b"?", 1)[0]
            if method not in (b"GET", b"HEAD"):
                self._respond(c, "405 Method Not Allowed", b"only GET and HEAD\n", head=False, keep=keep,
                              extra="Allow: GET, HEAD\r\n")
            elif path == b"/status":
                body = json.dumps(self.status()).encode() + b"\n"
                self._respond(c, "200 OK", body, head=head, keep=keep, ctype="application/json")
            else:
                self._respond(c, "200 OK", BODY, head=head, keep=keep)

    def _fail(self, c: Conn, status: str, reason: str) -> None:
        self._respond(c, status, status.encode() + b"\n", head=False, keep=False)
        c.closing = reason

    def _on_readable(self, c: Conn) -> None:
        try:
            data = c.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self._drop(c, Event.RESET.name)
            return
        if not data:  # the client's FIN, seen by us before the manager's peek
            if c.out and not c.closing:  # answers still unsent: finish them, then close
                c.closing = Event.PEER_CLOSED.name
                if not c.paused:
                    self.mgr.remove(c)
                    c.paused = True
            elif not c.out:
                self._drop(c, Event.PEER_CLOSED.name)
            return
        if c.closing:
            return  # answered its last request: ignore what follows
        if self._plain is not None and c.parser is None and not c.timed and self._answer_plain(c, data):
            return
        p = c.parser
        if p is None:
            p = c.parser = self._parsers.pop() if self._parsers else httptools.HttpRequestParser(self._parse)
        parse = self._parse
        parse.c = c
        done: List[Tuple[Any, ...]] = []
        parse.done = done
        in_head = c.in_msg and c.head >= 0
        try:
            p.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the upgrade request itself was parsed; _answer closes after it
        except httptools.HttpParserCallbackError as exc:
            self._answer(c, done)
            if not isinstance(exc.__context__, _TooLarge):
                raise
            if not c.closing:
                self._fail(c, "431 Request Header Fields Too Large", "header_too_large")
        except httptools.HttpParserError:
            self._answer(c, done)
            if not c.closing:
                self._fail(c, "400 Bad Request", "bad_request")
        else:
            if c.in_msg and c.head >= 0 and in_head:
                # httptools holds an unfinished header line without a callback: bound it too
                c.raw += len(data)
                if c.raw > self.max_header_size + RECV_SIZE:
                    self._answer(c, done)
                    self._fail(c, "431 Request Header Fields Too Large", "header_too_large")
            if not c.closing:
                self._answer(c, done)
        parse.c = None
        if done and not c.closing:
            self.mgr.touch(c)  # a complete request restarts the idle clock
        if c.closing:
            c.parser = None
        elif not c.in_msg:
            c.parser = None  # between requests: the parser goes back to the pool
            if len(self._parsers) < PARSER_POOL:
                self._parsers.append(p)
        c.partial = c.in_msg or not done
        if c.partial and not c.timed:  # a read that leaves a request unfinished starts its clock
            self._start_clock(c, time.monotonic())
        self._flush(c)

    def _flush(self, c: Conn) -> None:
        out = c.out
        if out:
            try:
                sent = c.sock.send(out)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._drop(c, Event.RESET.name)
                return
            if sent:
                del out[:sent]
                self.unsent -= sent
                if c.paused or c.writing:
                    self._start_clock(c, time.monotonic())  # output progressed
        if out:
            if not c.writing:
                self.sel.register(c.sock, selectors.EVENT_WRITE, c)
                c.writing = True
                if not c.timed:
                    self._start_clock(c, time.monotonic())
            if not c.paused and (len(out) > OUT_HIGH or self.unsent > OUT_TOTAL) and not c.closing:
                c.paused = True  # backpressure: stop reading until the output drains
                self.mgr.remove(c)
            return
        c.out = None
        if c.writing:
            self.sel.unregister(c.sock)
            c.writing = False
        if c.closing:
            self._server_close(c, c.closing)
            return
        if c.paused:
            c.paused = False
            self.mgr.add(c)  # reports READABLE again if the client sent more meanwhile
            self.mgr.touch(c)
        if not c.partial:
            self._stop_clock(c)

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
            c = Conn(self, sock)
            self.conns[c.fd] = c
            self.accepted += 1
            self.mgr.add(c)

    def _expire(self, now: float) -> None:
        """Drop requests not complete (or output not progressing) in time; end overdue
        lingering closes; resume accepting."""
        clock = self._clock
        while clock:
            c, deadline = next(iter(clock.items()))
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

    def _timeout(self) -> Optional[float]:
        now = time.monotonic()
        candidates = [self._published + PUBLISH_PERIOD - now] if self._figures() != self._published_figures else []
        d = self.mgr.next_deadline()
        if d is not None:
            candidates.append(d)
        if self._clock:
            candidates.append(next(iter(self._clock.values())) - now)
        if self.lingering:
            candidates.append(min(u for _, u in self.lingering.values()) - now)
        if self._accept_paused is not None:
            candidates.append(self._accept_paused - now)
        if self.stopping:
            candidates.append(0.1)
        return max(0.0, min(candidates)) if candidates else None

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
        sel, mgr = self.sel, self.mgr
        stop_by = 0.0
        while True:
            if self.stopping:
                if not self.conns:
                    break
                if time.monotonic() > stop_by:
                    break
            ready = sel.select(self._timeout())
            until = time.monotonic() + TICK
            for key, _ in ready:
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
            # poll(0) also closes every connection whose idle time is up: the budget keeps
            # the next poll near, so a flood of accepts and requests delays no FIN by more
            # than about TICK. A READABLE left unhandled when the budget runs out is
            # reported again by the next poll (the manager's epoll is level-triggered).
            for c, ev in mgr.poll(0):
                if ev != Event.READABLE:
                    self._count(Event(ev).name)
                elif not c.gone and time.monotonic() < until:
                    self._on_readable(c)
            self._expire(time.monotonic())

    def close(self) -> None:
        """Close everything still open (at once; use stop() for a graceful end)."""
        for c in list(self.conns.values()):
            self._discard(c)
        for fd in list(self.lingering):
            self._end_linger(fd)
        if not self.stopping:
            if self._accept_paused is None:
                self.sel.unregister(self.listener)
            self.listener.close()
        self.mgr.close()
        self.sel.close()
        self._wake_r.close()
        self._wake_w.close()
