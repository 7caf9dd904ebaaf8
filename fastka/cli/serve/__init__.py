"""`fastka serve`: an HTTP/1.x keep-alive reference server on KeepaliveManager.

The command line (this module), one worker's loop (server.py), its HTTP side
(protocol.py), a connection and the parser pool (connection.py), the supervisor of
``--workers N`` (supervisor.py) and the figures the workers share (stats.py). HTTP is parsed
by httptools (the ``serve`` extra); with the compiled backend, a read of nothing but plain
GET/HEAD requests is answered by the optional C fast path (_fastpath, src/serve/), which
gives the same bytes. docs/cli.rst describes the behaviour.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Tuple

from fastka import KeepaliveConfig, _backends, _jitter

from .._args import integer, number, seconds

MAX_KEEPALIVE_TIMEOUT = 1e9  # seconds: the largest idle_timeout a KeepaliveManager takes
MAX_WORKERS = 256
EXTRA_HINT = "fastka serve needs httptools: pip install 'fastka[serve]'"


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
    idle, intvl, cnt = values
    try:  # the library's own validation names the field, the value and the range
        KeepaliveConfig(idle=idle or 1, interval=intvl or 1, count=cnt or 1)
        for name, v in zip(("IDLE", "INTVL", "CNT"), values):
            if v is not None and v <= 0:
                raise ValueError(f"{name}={v} is out of range; allowed: IDLE and INTVL 1..32767, CNT 1..127")
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return idle, intvl, cnt


def _fraction(text: str) -> float:
    """--jitter: a fraction from 0 to fastka._jitter.MAX_JITTER."""
    allowed = f"allowed: 0..{_jitter.MAX_JITTER:g} (a fraction: 0.1 spreads each connection's --max-requests by ±10%)"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; {allowed}") from None
    try:
        return _jitter.check(value, "--jitter")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is out of range; {allowed}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=integer(0, 65535), default=8080,
                        help="TCP port (default 8080; 0 picks a free one, printed on stdout)")
    parser.add_argument("--keepalive-timeout", type=seconds(0.001, MAX_KEEPALIVE_TIMEOUT), default=5.0,
                        metavar="SECONDS", help="close idle connections (with a FIN), and drop requests not complete"
                        " (or output not progressing) after this long (default 5)")
    parser.add_argument("--keepalive-margin", type=number(0.0, MAX_KEEPALIVE_TIMEOUT, "seconds"), default=1.0,
                        metavar="SECONDS", help="responses advertise Keep-Alive: timeout=N with N the keepalive"
                        " timeout minus this, rounded down to whole seconds; no timeout= when N < 1 (default 1)")
    parser.add_argument("--max-requests", type=integer(1, 2**31 - 1), default=1000,
                        metavar="N", help="requests per connection; the last one is answered with Connection: close (default 1000)")
    parser.add_argument("--jitter", type=_fraction, default=0.0, metavar="F",
                        help=f"spread each connection's --max-requests uniformly within ±F (0..{_jitter.MAX_JITTER:g},"
                        " default 0); the keepalive timeout is never spread")
    parser.add_argument("--max-header-size", type=integer(256, 2**31 - 1, unit="bytes"), default=8192,
                        metavar="BYTES", help="request target plus header lines larger than this get 431 (default 8192)")
    parser.add_argument("--tcp-keepalive", type=_tcp_keepalive, metavar="IDLE:INTVL:CNT",
                        help="TCP keepalive on the listener, inherited by every connection, as nginx so_keepalive= (seconds:seconds:count)")
    parser.add_argument("--workers", type=integer(1, MAX_WORKERS), default=1, metavar="N",
                        help=f"worker processes sharing the port with SO_REUSEPORT, each with its own manager (default 1, at most {MAX_WORKERS})")
    parser.add_argument("--backend", choices=_backends.NAMES,
                        help="fastka backend (default: the one this process uses)")


def run(args: argparse.Namespace) -> int:
    try:
        import httptools  # noqa: F401  (the serve extra; the server's modules import it)
    except ImportError:
        print(f"fastka serve: error: {EXTRA_HINT}", file=sys.stderr)
        return 2
    try:
        backend = _backends.default() if args.backend is None else _backends.load(args.backend)
    except _backends.BackendUnavailable as exc:
        print(f"fastka serve: error: --backend {args.backend}: {exc}", file=sys.stderr)
        return 2
    from .server import Server
    from .stats import Stats
    from .supervisor import Supervisor

    options = dict(keepalive_timeout=args.keepalive_timeout, keepalive_margin=args.keepalive_margin,
                   max_requests=args.max_requests, jitter=args.jitter, max_header_size=args.max_header_size,
                   tcp_keepalive=args.tcp_keepalive, backend=backend)
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
