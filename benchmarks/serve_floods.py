"""Peak memory of `fastka serve` under two floods from well-formed clients.

    python benchmarks/serve_floods.py [--seconds 15] [--clients 4] [--tree PATH] [--backends c,python]

- ``pipeline``: clients that pipeline 1,000 requests at a time and read every answer,
  reconnecting when the server closes after ``--max-requests`` (default settings,
  ``--keepalive-timeout 60``): no request may leave state behind for the 60 s timeout.
- ``noread``: clients that pipeline requests and never read the answers, against a server
  with ``--max-requests 1000000`` (with the default 1,000 the connection ends early):
  a server that went on reading would queue responses without bound.

For each flood the server's VmRSS is sampled every 0.1 s: at the start, the peak over
``--seconds``, and 2 s after the clients closed (memory must come back). ``--tree`` runs
the server from another source tree (for example ``git archive main`` unpacked in /tmp with
the built extensions copied in), for a before/after comparison from the same script. The
backend asked for is checked against the one the server reports: a tree without the
compiled backend is refused, not measured on the fallback. Loopback only; every process is
stopped at the end. The output ends with the table for docs/performance.rst.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time

from procs import rss_kib, stop_process  # noqa: E402  (this folder is sys.path[0] when run as a script)
import tables  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQ = b"GET / HTTP/1.1\r\nHost: flood\r\n\r\n"


FLOODS = {"pipeline": "pipelining 1,000 requests at a time, ``--keepalive-timeout 60``",
          "noread": "pipelining clients that never read the answers"}


def start(tree: str, backend: str, *flags: str) -> "tuple[subprocess.Popen, int]":
    env = dict(os.environ, PYTHONPATH=tree)
    proc = subprocess.Popen([sys.executable, "-m", "fastka", "serve", "--port", "0", "--backend", backend,
                             "--keepalive-timeout", "60", *flags], cwd=tree, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    m = re.search(r"127\.0\.0\.1:(\d+) \(backend (\w+)", line)
    if not m or m.group(2) != backend:
        stop_process(proc, signal.SIGTERM, 15)
        raise SystemExit(f"server did not start with backend {backend!r}: {line.strip()!r}")
    return proc, int(m.group(1))


def pipeline_client(port: int, until: float) -> None:
    batch = REQ * 1000
    while time.monotonic() < until:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            while time.monotonic() < until:
                try:
                    c.sendall(batch)
                    got, tail = 0, b""
                    while got < 1000:
                        chunk = c.recv(1 << 20)
                        if not chunk:
                            break
                        data = tail + chunk
                        got += data.count(b"HTTP/1.1 200")
                        tail = data[-11:]
                except OSError:
                    break
                if got < 1000:
                    break  # the server closed after max-requests: reconnect


def noread_client(port: int, until: float) -> None:
    flood = memoryview(REQ * ((1 << 20) // len(REQ)))  # whole requests, so wrapping around keeps them whole
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.setblocking(False)
        at = 0
        while time.monotonic() < until:
            try:
                at = (at + c.send(flood[at:])) % len(flood)
            except BlockingIOError:
                time.sleep(0.05)
            except OSError:
                return


def measure(tree: str, backend: str, flood: str, seconds: float, clients: int) -> dict:
    proc, port = start(tree, backend, *(("--max-requests", "1000000") if flood == "noread" else ()))
    try:
        time.sleep(0.3)
        first = rss_kib([proc.pid])
        until = time.monotonic() + seconds
        target = pipeline_client if flood == "pipeline" else noread_client
        procs = [multiprocessing.Process(target=target, args=(port, until)) for _ in range(clients)]
        for p in procs:
            p.start()
        peak = first
        while time.monotonic() < until:
            peak = max(peak, rss_kib([proc.pid]))
            time.sleep(0.1)
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        time.sleep(2.0)
        after = rss_kib([proc.pid])
    finally:
        stop_process(proc, signal.SIGTERM, 15)
        proc.stdout.close()
    return {"start": first, "peak": peak, "after": after}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--tree", default=ROOT, help="source tree of the server to measure (default: this one)")
    ap.add_argument("--backends", default="c,python")
    ap.add_argument("--floods", default="pipeline,noread")
    args = ap.parse_args()
    print(f"tree {args.tree}; {args.clients} clients per flood, {args.seconds:g} s each; RSS in MiB")
    print(f"{'flood':<10}{'backend':<9}{'start':>8}{'peak':>8}{'after':>8}")
    rows = []
    for flood in args.floods.split(","):
        for backend in args.backends.split(","):
            r = measure(args.tree, backend, flood, args.seconds, args.clients)
            print(f"{flood:<10}{backend:<9}" + "".join(f"{r[k] / 1024:>8.1f}" for k in ("start", "peak", "after")), flush=True)
            rows.append([FLOODS[flood], "compiled" if backend == "c" else "fallback",
                         " -> ".join(f"{r[k] / 1024:,.1f}" for k in ("start", "peak", "after"))])
    print()
    print(f"{time.strftime('%Y-%m-%d', time.gmtime())}: python benchmarks/serve_floods.py --seconds {args.seconds:g}"
          f" --clients {args.clients}; load average {os.getloadavg()[0]:.1f}")
    print()
    print(tables.rst(["Flood", "backend", "RSS at the start -> peak -> 2 s after (MiB)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
