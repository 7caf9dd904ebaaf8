"""A small keep-alive HTTP/1.1 server for the client pool tests (tests/*/test_pools*.py).

Every response's body is the client's port, so a test sees which connection served a
request, unless the test sets ``server.body`` (bytes, sent as XML). ``/?ka=N`` adds
``Keep-Alive: timeout=N``, as does ``server.keep_alive = N`` for every response. ``drop_all()`` shuts every open
connection down (the clients see a FIN), as a server's idle close does. ``tls=True`` serves
HTTPS with a throw-away self-signed certificate (made with the openssl command).
``connect_proxy()`` is an HTTP proxy that tunnels (CONNECT) to it.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import os
import select
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from typing import Callable, Iterator, Optional, Set


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "PoolTestServer"

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.open.add(self.connection)
            self.server.accepted += 1

    def finish(self) -> None:
        with self.server.lock:
            self.server.open.discard(self.connection)
        super().finish()

    def _answer(self) -> None:
        body = self.server.body or str(self.client_address[1]).encode()
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        hint = query["ka"][0] if "ka" in query else self.server.keep_alive
        self.send_response(200)
        if self.server.body:
            self.send_header("Content-Type", "application/xml")
        if hint is not None:
            self.send_header("Keep-Alive", f"timeout={hint}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer  # noqa: N815 (http.server's naming)

    def log_message(self, *args: object) -> None:
        pass


class PoolTestServer(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the connection threads: no fd outlives a test

    def __init__(self, context: Optional[ssl.SSLContext] = None, listener: Optional[socket.socket] = None) -> None:
        """``listener``: a bound socket to serve on (e.g. made in a network namespace);
        default a new one on 127.0.0.1."""
        super().__init__(("127.0.0.1", 0), _Handler, bind_and_activate=listener is None)
        if listener is not None:
            self.socket.close()
            self.socket = listener
            self.server_address = listener.getsockname()
            listener.listen()
        self.lock = threading.Lock()
        self.open: Set[socket.socket] = set()
        self.accepted = 0
        self.body: Optional[bytes] = None
        self.keep_alive: Optional[object] = None
        self.context = context
        scheme = "https" if context else "http"
        self.url = f"{scheme}://{self.server_address[0]}:{self.server_address[1]}/"

    def get_request(self):  # type: ignore[no-untyped-def]
        conn, addr = super().get_request()
        if self.context is not None:
            conn = self.context.wrap_socket(conn, server_side=True)
        return conn, addr

    def drop_all(self) -> None:
        """Send a FIN on every open connection (the handler threads then end)."""
        with self.lock:
            for conn in list(self.open):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, OSError)):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=None)
def tls_context() -> ssl.SSLContext:
    """A server context with a self-signed certificate for 127.0.0.1 (made once per run)."""
    if shutil.which("openssl") is None:
        import pytest

        pytest.skip("the openssl command is not installed (it makes the test certificate)")
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
             "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True,
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
    return context


@contextlib.contextmanager
def serving(srv: socketserver.BaseServer, stop: Callable[[], None] = lambda: None) -> Iterator[socketserver.BaseServer]:
    """``srv.serve_forever()`` in a thread for the block; on the way out ``stop()`` (what
    releases the handlers), then shutdown, join and close."""
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv
    finally:
        stop()
        srv.shutdown()
        thread.join(10)
        srv.server_close()


@contextlib.contextmanager
def pool_test_server(tls: bool = False, listener: Optional[socket.socket] = None) -> Iterator[PoolTestServer]:
    srv = PoolTestServer(tls_context() if tls else None, listener)
    with serving(srv, srv.drop_all):
        yield srv


def fill(pm, url: str, n: int) -> list:
    """``n`` idle connections in urllib3 PoolManager ``pm``'s pool for ``url``; their
    connection objects."""
    responses = [pm.request("GET", url, preload_content=False) for _ in range(n)]
    conns = [r.connection for r in responses]
    for r in responses:
        r.read()
        r.release_conn()
    return conns


class _Tunnel(socketserver.BaseRequestHandler):
    """One CONNECT tunnel: the request line and headers, ``200``, then bytes both ways
    until either side closes."""

    def handle(self) -> None:
        client = self.request
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        target = head.split(b" ", 2)[1].decode()
        host, _, port = target.rpartition(":")
        try:
            upstream = socket.create_connection((host, int(port)), timeout=10)
        except OSError:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        with upstream:
            upstream.settimeout(None)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.server.tunnels += 1  # type: ignore[attr-defined]
            ends = {client: upstream, upstream: client}
            while True:
                readable, _, _ = select.select(list(ends), [], [], 30)
                if not readable:
                    return
                for sock in readable:
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return  # one side closed: close both (the other sees a FIN)
                    ends[sock].sendall(data)


class ConnectProxy(socketserver.ThreadingTCPServer):
    """An HTTP proxy that only tunnels (CONNECT), on 127.0.0.1; ``tunnels`` counts them."""

    daemon_threads = False
    block_on_close = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Tunnel)
        self.tunnels = 0
        self.url = f"http://127.0.0.1:{self.server_address[1]}/"


@contextlib.contextmanager
def connect_proxy() -> Iterator[ConnectProxy]:
    proxy = ConnectProxy()
    with serving(proxy):
        yield proxy
