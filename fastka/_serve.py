"""`fastka serve`: an HTTP/1.x keep-alive reference server on KeepaliveManager.

One process, one loop: a ``selectors`` selector watches the listener, the manager's epoll
fd (nested), sockets with unsent output and a signal wake-up socket; the manager owns the
idle clock of every connection and closes idle ones with a FIN. HTTP is parsed by
httptools (the ``serve`` extra); keep-alive follows RFC 9112 section 9 and nginx:

- HTTP/1.1 is persistent unless the request says ``Connection: close``; HTTP/1.0 only when
  it says ``Connection: keep-alive``, which the response echoes.
- Persistent responses carry ``Keep-Alive: timeout=N, max=M`` (M: requests left); the last
  allowed request (``--max-requests``) is answered with ``Connection: close``.
- Pipelined requests are answered in order. A request not complete within
  ``--keepalive-timeout`` seconds of its first byte is dropped (no slowloris); headers over
  ``--max-header-size`` bytes get 431, malformed requests 400, then the connection closes.
- The server closes with ``shutdown(SHUT_WR)`` and reads what the client still sends until
  its FIN (at most LINGER seconds), so that a response is never lost to a reset.
- SIGINT/SIGTERM: stop accepting, finish responses in flight, close the rest with a FIN.
"""
from __future__ import annotations

import argparse
import errno
import heapq
import importlib
import json
import selectors
import signal
import socket
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from ._types import Event

ACCEPT_PAUSE = 0.1  # seconds accept() rests after running out of file descriptors
LINGER = 2.0  # seconds a closing connection may take to send its FIN after ours
RECV_SIZE = 65536
BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
BODY = b"Hello from fastka\n"
SERVER = "fastka"
EXTRA_HINT = "fastka serve needs httptools: pip install 'fastka[serve]'"


# -- command line -------------------------------------------------------------------------


def _at_least(kind: type, low: float, high: float = float("inf")):
    """An argparse type: a finite ``kind`` (int or float) in ``low..high``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if not (low <= value <= high and value < float("inf")):
            allowed = f">= {low:g}" if high == float("inf") else f"{low:g}..{high:g}"
            raise argparse.ArgumentTypeError(f"{text!r} is out of range; allowed: {allowed}")
        return value

    return parse


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
    from ._config import KeepaliveConfig

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
    parser.add_argument("--port", type=_at_least(int, 0, 65535), default=8080,
                        help="TCP port (default 8080; 0 picks a free one, printed on stdout)")
    parser.add_argument("--keepalive-timeout", type=_at_least(float, 0.001), default=5.0,
                        metavar="SECONDS", help="close idle connections (with a FIN) and drop incomplete requests after this long (default 5)")
    parser.add_argument("--max-requests", type=_at_least(int, 1), default=1000,
                        metavar="N", help="requests per connection; the last one is answered with Connection: close (default 1000)")
    parser.add_argument("--max-header-size", type=_at_least(int, 256), default=8192,
                        metavar="BYTES", help="request line plus headers larger than this get 431 (default 8192)")
    parser.add_argument("--tcp-keepalive", type=_tcp_keepalive, metavar="IDLE:INTVL:CNT",
                        help="TCP keepalive on the listener, inherited by every connection, as nginx so_keepalive= (seconds:seconds:count)")
    parser.add_argument("--backend", choices=("c", "python"),
                        help="fastka backend (default: the one this process uses)")


def _backend_modules(name: Optional[str]) -> Tuple[Any, Any, str]:
    """(keepalive module, manager module, backend name) for --backend."""
    if name is None:
        import fastka

        name = fastka.IMPLEMENTATION
    if name == "c":
        ka = importlib.import_module("fastka._keepalive_c")
        mgr = importlib.import_module("fastka._manager_c" if sys.platform.startswith("linux") else "fastka._manager_py")
    else:
        ka = importlib.import_module("fastka._keepalive_py")
        mgr = importlib.import_module("fastka._manager_py")
    return ka, mgr, name


def run(args: argparse.Namespace) -> int:
    try:
        import httptools  # noqa: F401
    except ImportError:
        print(f"fastka serve: error: {EXTRA_HINT}", file=sys.stderr)
        return 2
    try:
        ka, mgr_mod, name = _backend_modules(args.backend)
    except ImportError as exc:
        print(f"fastka serve: error: --backend {args.backend}: the compiled backend is not built ({exc})", file=sys.stderr)
        return 2
    try:
        server = Server(args.host, args.port, keepalive_timeout=args.keepalive_timeout,
                        max_requests=args.max_requests, max_header_size=args.max_header_size,
                        tcp_keepalive=args.tcp_keepalive, ka=ka, manager_cls=mgr_mod.KeepaliveManager)
    except OSError as exc:
        print(f"fastka serve: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    host, port = server.address[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on http://{shown}:{port} (backend {name}, keepalive-timeout {args.keepalive_timeout:g} s,"
          f" max-requests {args.max_requests})", flush=True)
    try:
        server.serve_forever()
    finally:
        server.close()
    print(f"stopped after {server.requests} requests", flush=True)
    return 0


# -- the server ---------------------------------------------------------------------------


class _TooLarge(Exception):
    """Raised from a parser callback when the request head exceeds --max-header-size."""


class Conn:
    """One client connection: what the manager tracks (``fileno``/``close``) and the
    parser's callbacks."""

    __slots__ = ("server", "sock", "fd", "parser", "out", "served", "closing", "started",
                 "head_size", "url", "conn_tokens", "queue", "writing", "gone")

    def __init__(self, server: "Server", sock: socket.socket) -> None:
        import httptools

        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.parser = httptools.HttpRequestParser(self)
        self.out = bytearray()
        self.served = 0  # requests answered
        self.closing: Optional[str] = None  # why the server closes it, once decided
        self.started: Optional[float] = None  # monotonic time the current request began
        self.head_size = 0
        self.url = b""
        self.conn_tokens: List[bytes] = []
        self.queue: List[Tuple[bytes, str, bool, bytes, List[bytes]]] = []
        self.writing = False  # registered for EVENT_WRITE
        self.gone = False

    # the manager's view
    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        self.server._discard(self)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.started = time.monotonic()
        self.server._arm(self)
        self.head_size = 0
        self.url = b""
        self.conn_tokens = []

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url) + 16
        if self.head_size > self.server.max_header_size:
            raise _TooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size > self.server.max_header_size:
            raise _TooLarge
        if name.lower() == b"connection":
            self.conn_tokens.extend(t.strip().lower() for t in value.split(b","))

    def on_message_complete(self) -> None:
        p = self.parser
        self.queue.append((p.get_method(), p.get_http_version(), p.should_upgrade(), self.url, self.conn_tokens))
        self.started = None


class Server:
    def __init__(self, host: str, port: int, *, keepalive_timeout: float, max_requests: int,
                 max_header_size: int, tcp_keepalive: Optional[Tuple[Optional[int], ...]],
                 ka: Any, manager_cls: Any) -> None:
        self.keepalive_timeout = keepalive_timeout
        self.max_requests = max_requests
        self.max_header_size = max_header_size
        self._ka_timeout = max(1, int(round(keepalive_timeout)))
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        self.listener = socket.socket(info[0], socket.SOCK_STREAM)
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if tcp_keepalive is not None:
                idle, intvl, cnt = tcp_keepalive
                ka.update_keepalive(self.listener, idle=idle, interval=intvl, count=cnt)
            self.listener.bind(info[4])
            self.listener.listen(BACKLOG)
            self.listener.setblocking(False)
            self.address = self.listener.getsockname()
            self.mgr = manager_cls(idle_timeout=keepalive_timeout)
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
        self._timers: List[Tuple[float, int, Conn]] = []  # (deadline, tiebreak, conn)
        self._seq = 0
        self.requests = 0
        self.accepted = 0
        self.closes: Dict[str, int] = {}
        self.stopping = False
        self._accept_paused: Optional[float] = None  # monotonic time accepting resumes
        self._date = (0, "")

    # -- bookkeeping ----------------------------------------------------------------------

    def status(self) -> Dict[str, Any]:
        return {
            "open_connections": len(self.conns),
            "accepted": self.accepted,
            "requests": self.requests,
            "closes": dict(sorted(self.closes.items())),
            "keepalive_timeout": self.keepalive_timeout,
            "max_requests": self.max_requests,
        }

    def _count(self, reason: str) -> None:
        self.closes[reason] = self.closes.get(reason, 0) + 1

    def _arm(self, c: Conn) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (c.started + self.keepalive_timeout, self._seq, c))  # type: ignore[operator]

    def _discard(self, c: Conn) -> None:
        """Forget and close a connection (the manager calls this when it drops one)."""
        if c.gone:
            return
        c.gone = True
        self.conns.pop(c.fd, None)
        if c.writing:
            self.sel.unregister(c.sock)
            c.writing = False
        c.sock.close()

    def _server_close(self, c: Conn, reason: str) -> None:
        """Close from our side: FIN now, then read until the client's FIN (lingering close)."""
        self._count(reason)
        if c in self.mgr:
            self.mgr.remove(c)
        sock = c.sock
        self.conns.pop(c.fd, None)
        if c.writing:
            self.sel.unregister(sock)
            c.writing = False
        c.gone = True
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

    def _date_header(self) -> str:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)))
        return self._date[1]

    def _respond(self, c: Conn, status: str, body: bytes, *, head: bool, keep: bool, http10: bool,
                 ctype: str = "text/plain; charset=utf-8", extra: str = "") -> None:
        lines = [f"HTTP/1.1 {status}\r\nServer: {SERVER}\r\nDate: {self._date_header()}\r\n"
                 f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}"]
        if keep:
            left = self.max_requests - c.served
            lines.append(f"Connection: keep-alive\r\nKeep-Alive: timeout={self._ka_timeout}, max={left}\r\n")
        else:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        c.out += "".join(lines).encode("latin-1")
        if not head:
            c.out += body

    def _answer(self, c: Conn) -> None:
        """Answer the complete requests parsed so far, in order."""
        queue, c.queue = c.queue, []
        for method, version, upgrade, url, tokens in queue:
            if c.closing:
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
                              http10=http10, extra="Allow: GET, HEAD\r\n")
            elif path == b"/status":
                body = json.dumps(self.status()).encode() + b"\n"
                self._respond(c, "200 OK", body, head=head, keep=keep, http10=http10, ctype="application/json")
            else:
                self._respond(c, "200 OK", BODY, head=head, keep=keep, http10=http10)

    def _fail(self, c: Conn, status: str, reason: str) -> None:
        c.queue = []
        self._respond(c, status, status.encode() + b"\n", head=False, keep=False, http10=False)
        c.closing = reason

    def _on_readable(self, c: Conn) -> None:
        import httptools

        try:
            data = c.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self.mgr.remove(c)
            self._count(Event.RESET.name)
            self._discard(c)
            return
        if not data:  # the client's FIN, seen by us before the manager's peek
            self.mgr.remove(c)
            self._count(Event.PEER_CLOSED.name)
            self._discard(c)
            return
        if c.closing:
            return  # answered its last request: ignore what follows
        try:
            c.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the upgrade request itself was parsed; _answer closes after it
        except httptools.HttpParserCallbackError as exc:
            self._answer(c)
            if isinstance(exc.__context__, _TooLarge):
                self._fail(c, "431 Request Header Fields Too Large", "header_too_large")
            else:
                raise
        except httptools.HttpParserError:
            self._answer(c)
            if not c.closing:
                self._fail(c, "400 Bad Request", "bad_request")
        self._answer(c)
        self._flush(c)

    def _flush(self, c: Conn) -> None:
        if c.out:
            try:
                sent = c.sock.send(c.out)
            except BlockingIOError:
                sent = 0
            except OSError:
                if c in self.mgr:
                    self.mgr.remove(c)
                self._count(Event.RESET.name)
                self._discard(c)
                return
            del c.out[:sent]
        if c.out:
            if not c.writing:
                self.sel.register(c.sock, selectors.EVENT_WRITE, c)
                c.writing = True
            return
        if c.writing:
            self.sel.unregister(c.sock)
            c.writing = False
        if c.closing:
            self._server_close(c, c.closing)

    # -- the loop -------------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(512):
            try:
                sock, _addr = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # out of fds/memory: stop accepting for a while instead of spinning
                    print(f"fastka serve: accept: {exc.strerror}; {len(self.conns)} connections open;"
                          f" pausing accept for {ACCEPT_PAUSE:g} s", file=sys.stderr)
                    self.sel.unregister(self.listener)
                    self._accept_paused = time.monotonic() + ACCEPT_PAUSE
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
        """Drop requests that did not complete in time; end overdue lingering closes."""
        t = self._timers
        while t and t[0][0] <= now:
            deadline, _, c = heapq.heappop(t)
            if not c.gone and c.started is not None and c.started + self.keepalive_timeout <= now:
                c.queue = []
                c.closing = "request_timeout"
                c.out.clear()
                self._flush(c)
        for fd in [fd for fd, (_, until) in self.lingering.items() if until <= now]:
            self._end_linger(fd)
        if self._accept_paused is not None and self._accept_paused <= now:
            self._accept_paused = None
            if not self.stopping:
                self.sel.register(self.listener, selectors.EVENT_READ, "accept")

    def _timeout(self) -> Optional[float]:
        candidates = []
        d = self.mgr.next_deadline()
        if d is not None:
            candidates.append(d)
        now = time.monotonic()
        if self._timers:
            candidates.append(self._timers[0][0] - now)
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
            c.queue = []
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

    def _loop(self) -> None:
        sel, mgr = self.sel, self.mgr
        stop_by = None
        while True:
            if self.stopping:
                if not self.conns:
                    break
                if time.monotonic() > stop_by:
                    break
            for key, _ in sel.select(self._timeout()):
                tag = key.data
                if tag == "accept":
                    self._accept()
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
                else:
                    self._flush(tag)
            for c, ev in mgr.poll(0):
                if ev == Event.READABLE:
                    if not c.gone:
                        self._on_readable(c)
                else:
                    self._count(Event(ev).name)
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
