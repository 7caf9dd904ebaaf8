"""The HTTP/1.x side of a ``fastka serve`` worker: reading a connection, parsing, answering
and writing back, with keep-alive as RFC 9112 section 9 and nginx do it.

``Protocol`` is the half of ``Server`` (server.py) that speaks HTTP; the other half runs the
loop, the clocks and the closes that these methods call.
"""
from __future__ import annotations

import json
import math
import selectors
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import httptools

from fastka import Event

from .connection import Callbacks, Conn, ParserPool, TooLarge

RECV_SIZE = 16384  # bytes read at once: bounds the responses one read can produce
OUT_HIGH = 65536  # bytes of unsent output above which a connection is not read
OUT_TOTAL = 16 * 1024 * 1024  # bytes of unsent output (all connections) above which none with output is read
BODY = b"Hello from fastka\n"
STATUS_PATH = b"/status"  # answered with the figures as JSON; every other path with BODY
SERVER = "fastka"
TEXT = "text/plain; charset=utf-8"



def advertised_timeout(keepalive_timeout: float, margin: float) -> Optional[int]:
    """The ``Keep-Alive: timeout=`` value: whole seconds, ``floor(keepalive_timeout -
    margin)``, so that a client trusting it never reuses a connection the server is about
    to close; None (no ``timeout=`` sent) when that is under one second."""
    hint = math.floor(keepalive_timeout - margin)
    return hint if hint >= 1 else None


def fast_path(backend: Any, max_header_size: int) -> Any:
    """The C fast path (a fastka.cli.serve._fastpath.Plain) with the "c" backend; None with
    the fallback (the readable specification) or when the fast path was not built."""
    if backend.name != "c":
        return None
    try:
        from ._fastpath import Plain
    except ImportError:  # not built: every request takes the general path
        return None
    return Plain(max_header_size, RECV_SIZE, BODY, STATUS_PATH)


class Heads:
    """Response heads of the second of the last refresh() (their Date; call it before the
    first get()), by what else shapes them, as the text before and after the one figure that varies (the Keep-Alive ``max=``).
    The worker refreshes once per loop iteration, as nginx updates its clock once per event
    loop iteration."""

    def __init__(self, keepalive_hint: Optional[int]) -> None:
        self._keep = "Connection: keep-alive\r\nKeep-Alive: " + (
            f"timeout={keepalive_hint}, max=" if keepalive_hint is not None else "max=")
        self._second = -1
        self._date = ""
        self._cache: Dict[Tuple[Any, ...], Tuple[bytes, bytes]] = {}

    def refresh(self) -> bool:
        """Take the current second (UTC) for the Date of the heads; True when it changed."""
        now = int(time.time())
        if self._second == now:
            return False
        self._second = now
        self._date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))
        self._cache = {}
        return True

    def get(self, status: str, ctype: str, length: int, extra: str, keep: bool) -> Tuple[bytes, bytes]:
        key = (status, ctype, length, extra, keep)
        parts = self._cache.get(key)
        if parts is None:
            text = (f"HTTP/1.1 {status}\r\nServer: {SERVER}\r\nDate: {self._date}\r\n"
                    f"Content-Type: {ctype}\r\nContent-Length: {length}\r\n{extra}")
            text += self._keep if keep else "Connection: close"
            parts = self._cache[key] = (text.encode("latin-1"), b"\r\n\r\n")
        return parts


class Protocol:
    """Reading, parsing, answering and writing for ``Server`` (the attributes it uses are
    set by Server.__init__)."""

    mgr: Any
    sel: selectors.BaseSelector
    max_header_size: int
    unsent: int
    requests: int
    plain_requests: int
    _plain: Any  # fastka.cli.serve._fastpath.Plain, or None
    _callbacks: Callbacks
    _parsers: ParserPool
    _heads: Heads

    # Server's methods these call
    status: Callable[[], Dict[str, Any]]
    _drop: Callable[[Conn, str], None]
    _server_close: Callable[[Conn, str], None]
    _start_clock: Callable[[Conn, float], None]
    _stop_clock: Callable[[Conn], None]

    def _send(self, c: Conn, data: bytes) -> None:
        """Queue ``data`` for ``c`` (sent by _flush)."""
        if c.out is None:
            c.out = bytearray()
        c.out += data
        self.unsent += len(data)

    def _respond(self, c: Conn, status: str, body: bytes, *, head: bool, keep: bool,
                 ctype: str = TEXT, extra: str = "") -> None:
        before, after = self._heads.get(status, ctype, len(body), extra, keep)
        left = b"%d" % (c.limit - c.served) if keep else b""
        self._send(c, before + left + after if head else before + left + after + body)

    def _refresh_heads(self) -> None:
        """Once per loop iteration: the current second's Date in the heads (the fast
        path's too)."""
        if self._heads.refresh() and self._plain is not None:
            self._plain.set_head(*self._heads.get("200 OK", TEXT, len(BODY), "", True))

    def _answer(self, c: Conn, done: List[Tuple[Any, ...]]) -> None:
        """Answer the complete requests parsed by the last feed, in order."""
        for method, version, upgrade, url, tokens, parser_keeps in done:
            if c.closing:
                break
            if version not in ("1.1", "1.0"):  # HTTP/0.9 style, or a version we do not speak
                self._fail(c, "400 Bad Request", "bad_request")
                break
            c.served += 1
            self.requests += 1
            http10 = version == "1.0"
            keep = (b"keep-alive" in tokens) if http10 else (b"close" not in tokens)
            if not keep or not parser_keeps:  # the parser takes no more after such a message
                keep = False
                c.closing = "connection_close"
            elif c.served >= c.limit:
                keep = False
                c.closing = "max_requests"
            elif upgrade:
                keep = False  # no protocol switch here (Upgrade, CONNECT): answer, then close
                c.closing = "connection_close"
            head = method == b"HEAD"
            path = url.split(b"?", 1)[0]
            if method not in (b"GET", b"HEAD"):
                self._respond(c, "405 Method Not Allowed", b"only GET and HEAD\n", head=False, keep=keep,
                              extra="Allow: GET, HEAD\r\n")
            elif path == STATUS_PATH:
                body = json.dumps(self.status()).encode() + b"\n"
                self._respond(c, "200 OK", body, head=head, keep=keep, ctype="application/json")
            else:
                self._respond(c, "200 OK", BODY, head=head, keep=keep)

    def _fail(self, c: Conn, status: str, reason: str) -> None:
        self._respond(c, status, status.encode() + b"\n", head=False, keep=False)
        c.closing = reason

    def _on_readable(self, c: Conn) -> None:
        if self._plain is not None and c.out is None and c.parser is None and not c.timed and not c.closing:
            # The fast path: a read of nothing but plain GET/HEAD requests is answered and
            # sent in C, as _answer would answer it; any other read comes back for below.
            try:
                got = self._plain.serve(c.fd, c.limit - c.served - 1)
            except OSError:
                self._drop(c, Event.RESET.name)
                return
            if got is None:
                return
            if got.__class__ is tuple:
                n, rest = got
                c.served += n
                self.requests += n
                self.plain_requests += n
                self.mgr.touch(c.sock)  # a complete request restarts the idle clock
                c.partial = False
                if rest:
                    self._send(c, rest)
                    self._flush(c)
                return
            data = got
        else:
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
                    self.mgr.remove(c.sock)
                    c.paused = True
            elif not c.out:
                self._drop(c, Event.PEER_CLOSED.name)
            return
        if c.closing:
            return  # answered its last request: ignore what follows
        self._feed(c, data)
        self._flush(c)

    def _feed(self, c: Conn, data: bytes) -> None:
        """Parse ``data`` with the connection's parser (one from the pool if it has none)
        and answer the requests it completes."""
        p = c.parser
        if p is None:
            p = c.parser = self._parsers.take()
        callbacks = self._callbacks
        callbacks.c = c
        done: List[Tuple[Any, ...]] = []
        callbacks.done = done
        in_head = c.in_msg and c.head >= 0
        try:
            p.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An Upgrade or CONNECT request (and those pipelined before it) was parsed: the
            # parser takes no more; _answer answers and closes after it.
            self._answer(c, done)
            if not c.closing:
                self._fail(c, "400 Bad Request", "bad_request")
        except httptools.HttpParserCallbackError as exc:
            self._answer(c, done)
            if not isinstance(exc.__context__, TooLarge):
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
        finally:
            callbacks.c = None
        if done and not c.closing:
            self.mgr.touch(c.sock)  # a complete request restarts the idle clock
        if c.closing:
            c.parser = None  # spent (error, upgrade, close): never pooled
        elif not c.in_msg:
            c.parser = None  # between requests: the parser goes back to the pool
            self._parsers.give_back(p)
        c.partial = c.in_msg or not done
        if c.partial and (done or not c.timed):
            # The unfinished request's clock runs from its first byte: that came in this
            # read when the read also completed requests, else at the clock's start.
            self._start_clock(c, time.monotonic())

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
                self.mgr.remove(c.sock)
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
            self.mgr.add(c.sock)  # reports READABLE again if the client sent more meanwhile
            self.mgr.touch(c.sock)
        if not c.partial:
            self._stop_clock(c)
