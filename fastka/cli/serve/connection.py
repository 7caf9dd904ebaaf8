"""One client connection of ``fastka serve``, the httptools callbacks that fill it in, and
the pool of idle parsers shared by all connections of a worker."""
from __future__ import annotations

import socket
from typing import Any, List, Optional, Tuple

import httptools  # the serve extra: fastka.cli.serve.run checks it is there before importing this

PARSER_POOL = 256  # idle parsers kept for reuse
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class TooLarge(Exception):
    """Raised from a parser callback when the request head exceeds --max-header-size."""


class Conn:
    """One client connection (the manager tracks its socket).

    ``url``, ``tokens`` and ``head`` describe the request being parsed and are reset to
    shared empty values between requests; ``parser`` is None while no request is in
    progress; ``out`` is None while nothing is unsent; ``limit`` is this connection's
    --max-requests (spread by --jitter).
    """

    __slots__ = ("sock", "fd", "parser", "out", "served", "limit", "closing", "in_msg", "partial",
                 "head", "raw", "url", "tokens", "timed", "paused", "writing", "queued", "gone")

    def __init__(self, sock: socket.socket, limit: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.parser: Any = None
        self.out: Optional[bytearray] = None
        self.served = 0  # requests answered
        self.limit = limit  # requests it may make; the last is answered with Connection: close
        self.closing: Optional[str] = None  # why the server closes it, once decided
        self.in_msg = False  # between a request's first byte and its end, as the parser sees it
        self.partial = False  # bytes arrived that no complete request has followed yet
        self.head = 0  # bytes of request target and header lines so far; -1 once the head is complete
        self.raw = 0  # bytes received while the head was incomplete (a header line may still be open)
        self.url = b""
        self.tokens: Tuple[bytes, ...] = ()
        self.timed = False  # has a deadline in Server.deadlines
        self.paused = False  # out of the manager while its output drains
        self.writing = False  # registered for EVENT_WRITE
        self.queued = False  # in Server.ready: readable, waiting for its turn
        self.gone = False


class Callbacks:
    """The httptools protocol object of every parser: callbacks go to ``.c``, the
    connection being fed (parsers are pooled, so they belong to no connection)."""

    __slots__ = ("max_header_size", "send", "c", "done")

    def __init__(self, max_header_size: int, send: Any) -> None:
        self.max_header_size = max_header_size
        self.send = send  # send(conn, bytes): queue output (the 100 Continue)
        self.c: Any = None
        # The complete requests of the current feed: (method, version, upgrade, url,
        # Connection tokens, whether the parser keeps the connection alive after it).
        self.done: List[Tuple[Any, ...]] = []

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
        if c.head > self.max_header_size:
            raise TooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        c = self.c
        c.head += len(name) + len(value) + 4  # "name: value\r\n"
        if c.head > self.max_header_size:
            raise TooLarge
        lname = name.lower()
        if lname == b"connection":
            c.tokens += tuple(t.strip().lower() for t in value.split(b","))
        elif lname == b"expect" and value.strip().lower() == b"100-continue":
            c.tokens += (b"100-continue",)

    def on_headers_complete(self) -> None:
        c = self.c
        c.head = -1
        if b"100-continue" in c.tokens and not c.closing and c.parser.get_http_version() == "1.1":
            self.send(c, CONTINUE)

    def on_message_complete(self) -> None:
        c = self.c
        p = c.parser
        self.done.append((p.get_method(), p.get_http_version(), p.should_upgrade(), c.url, c.tokens,
                          p.should_keep_alive()))
        c.in_msg = False
        c.url = b""
        c.tokens = ()


class ParserPool:
    """Idle httptools parsers, taken when a connection's bytes arrive and given back when
    no request is in progress.

    A parser carries state from one message to the next (llhttp refuses any byte after a
    message it did not keep alive, for instance one with ``Proxy-Connection: close``, and
    stays paused after an upgrade or CONNECT), so only a parser whose last message ended
    cleanly with the connection kept alive comes back; any other is dropped and a fresh
    one made when needed. A pooled parser never carries one client's state to another.
    """

    def __init__(self, callbacks: Callbacks, size: int = PARSER_POOL) -> None:
        self._callbacks = callbacks
        self._idle: List[Any] = []
        self._size = size

    def take(self) -> Any:
        return self._idle.pop() if self._idle else httptools.HttpRequestParser(self._callbacks)

    def give_back(self, parser: Any) -> None:
        """Keep ``parser`` for reuse: only for one that is between messages and whose last
        message ended without error, upgrade or close (the caller knows; the parser's own
        keep-alive view is checked again here)."""
        if len(self._idle) < self._size and parser.should_keep_alive() and not parser.should_upgrade():
            self._idle.append(parser)
