"""`fastka serve` next to nginx and uvicorn, one worker each: requests per second, p99
latency and the least-served connection's share at 100 and 1,000 keep-alive connections
(wrk), and memory per idle keep-alive connection; ratios to nginx from paired rounds.

    python benchmarks/serve_compare.py [--rounds 3] [--duration 5] [--concurrency 100,1000]
                                       [--idle 5000]

Servers: nginx (a minimal configuration in a temporary directory, ``worker_processes 1``,
``return 200``), `fastka serve` on the compiled backend and on the fallback, uvicorn with
uvloop and httptools (a minimal ASGI app). Every server: keep-alive timeout 75 s, no
request limit per connection (so that wrk's connections live the whole run). A server that
cannot run is reported and skipped; the compiled backend of an unbuilt checkout is refused,
not replaced by the fallback.

Each round starts every server in turn (the order rotates per round) and measures, in
this order:

- memory, on the fresh server (before wrk's connections grow its heap): ``--idle``
  connections each send one GET, read the answer and stay open; RSS and PSS growth of
  every server process over the idle server, per connection;
- after a 1 s warm-up, wrk ``-t1 -c C --latency`` for ``--duration`` s at each C of
  ``--concurrency``: requests/s and the p99 latency;
- during each wrk run, the least-served connection's share: one second before wrk ends,
  ``ss -tin`` lists the bytes each connection on the server's port was sent; the smallest
  over the median (1.00: every connection served alike; 0: one was starved).

Ratios to nginx are the median of the per-round ratios with their range (benchmarks/
paired.py); absolute figures are medians. wrk and the servers share this machine's cores.
The output ends with the tables for docs/performance.rst and README.md.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tables  # noqa: E402
from paired import median, ratio  # noqa: E402
from procs import cpu_model, pss_kib, raise_nofile, rss_kib  # noqa: E402
from servers import FastkaServe, Nginx, Refused, Uvicorn, idle_connections  # noqa: E402

UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def served_bytes(port: int) -> List[int]:
    """Bytes sent so far on each established connection from 127.0.0.1:``port`` (ss -tin)."""
    out = subprocess.run(["ss", "-tinHn", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, timeout=30).stdout
    sent = []
    for block in re.split(r"\n(?=\S)", out.strip()):
        if block:
            m = re.search(r"bytes_sent:(\d+)", block)
            sent.append(int(m.group(1)) if m else 0)
    return sent


def wrk_run(wrk: str, port: int, connections: int, duration: float, snapshot: bool) -> Tuple[float, float, Optional[float]]:
    """(requests/s, p99 latency s, least-served share or None) of one wrk run."""
    proc = subprocess.Popen([wrk, "-t", "1", "-c", str(connections), "-d", f"{duration:g}s", "--latency",
                             f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    share = None
    try:
        if snapshot:
            time.sleep(max(0.5, duration - 1.0))
            sent = served_bytes(port)
            if len(sent) < connections * 0.9:
                raise RuntimeError(f"ss saw {len(sent)} of {connections} wrk connections")
            mid = statistics.median(sent)
            share = min(sent) / mid if mid else 0.0  # most connections got nothing
        out, err = proc.communicate(timeout=duration + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    if not rps or not p99 or "Non-2xx" in out:
        raise RuntimeError(f"wrk: {out.strip()} {err.strip()}")
    return float(rps.group(1)), float(p99.group(1)) * UNITS[p99.group(2)], share


def idle_memory(port: int, server, n: int) -> Tuple[float, float]:
    """(RSS, PSS) bytes per idle keep-alive connection after one answered GET each."""
    time.sleep(0.5)
    pids = server.pids()
    rss0, pss0 = rss_kib(pids), pss_kib(pids)
    socks = idle_connections(port, n, 30.0)
    try:
        time.sleep(1.0)
        pids = server.pids()
        return (rss_kib(pids) - rss0) * 1024 / n, (pss_kib(pids) - pss0) * 1024 / n
    finally:
        for s in socks:
            s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--concurrency", default="100,1000", help="wrk connection counts, comma-separated")
    ap.add_argument("--idle", type=int, default=5000, help="idle connections of the memory figure")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.rounds < 1 or args.duration < 2 or args.idle < 1 or any(c < 1 for c in levels):
        ap.error("--rounds, --idle and every --concurrency must be >= 1, --duration >= 2")
    if raise_nofile() < max(levels + [args.idle]) + 500:
        ap.error(f"the open-file limit cannot hold {max(levels + [args.idle])} connections")
    wrk = shutil.which("wrk")
    if not wrk:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    if not shutil.which("ss"):
        raise SystemExit("ss is not installed (apt-get install iproute2)")
    servers: list = []
    skipped: List[str] = []
    for make in (Nginx, lambda: FastkaServe("c"), lambda: FastkaServe("python"), Uvicorn):
        try:
            server = make()
            if isinstance(server, FastkaServe):
                server.check()
            servers.append(server)
        except Refused as exc:
            skipped.append(str(exc))
    for line in skipped:
        print(f"SKIPPED: {line}", flush=True)
    if not servers or not servers[0].label.startswith("nginx"):
        raise SystemExit("nginx is the reference of every ratio: it must run")
    ref = servers[0].label
    # label -> concurrency -> one value per round (None: not measured)
    rps: Dict[str, Dict[int, List[Optional[float]]]] = {s.label: {c: [] for c in levels} for s in servers}
    p99: Dict[str, Dict[int, List[Optional[float]]]] = {s.label: {c: [] for c in levels} for s in servers}
    share: Dict[str, Dict[int, List[Optional[float]]]] = {s.label: {c: [] for c in levels} for s in servers}
    mem: Dict[str, List[Optional[Tuple[float, float]]]] = {s.label: [] for s in servers}
    for rnd in range(args.rounds):
        order = servers[rnd % len(servers):] + servers[:rnd % len(servers)]
        for s in order:
            try:
                port = s.start()
            except (Refused, RuntimeError) as exc:
                print(f"round {rnd + 1}: {s.label}: did not start: {exc}", flush=True)
                for c in levels:
                    rps[s.label][c].append(None), p99[s.label][c].append(None), share[s.label][c].append(None)
                mem[s.label].append(None)
                continue
            try:
                mem[s.label].append(idle_memory(port, s, args.idle))  # first: before wrk's connections grew the heap
                print(f"round {rnd + 1}: {s.label}: {mem[s.label][-1][0]:.0f} B RSS per idle connection", flush=True)
                wrk_run(wrk, port, levels[0], 1.0, False)  # warm-up
                for c in levels:
                    r, p, sh = wrk_run(wrk, port, c, args.duration, True)
                    rps[s.label][c].append(r), p99[s.label][c].append(p), share[s.label][c].append(sh)
                    print(f"round {rnd + 1}: {s.label}: -c{c}: {r:,.0f} req/s, p99 {p * 1000:.1f} ms,"
                          f" least-served share {sh:.2f}", flush=True)
            finally:
                s.stop()
    head = ["server", "connections", "requests/s", "ratio to nginx", "p99 latency", "p99 ratio to nginx",
            "least-served share"]
    rows = []
    for c in levels:
        for s in servers:
            shares = [v for v in share[s.label][c] if v is not None]
            rows.append([s.label, f"{c:,}", f"{median(rps[s.label][c]):,.0f}", str(ratio(rps[s.label][c], rps[ref][c])),
                         f"{median(p99[s.label][c]) * 1000:.1f} ms", str(ratio(p99[s.label][c], p99[ref][c])),
                         f"{median(shares):.2f} (lowest {min(shares):.2f})" if shares else "-"])
    mem_head = ["server", f"RSS per idle connection ({args.idle:,})", "PSS per idle connection", "RSS ratio to nginx"]
    mem_rows = []
    for s in servers:
        rss = [m[0] if m else None for m in mem[s.label]]
        pss = [m[1] if m else None for m in mem[s.label]]
        mem_rows.append([s.label, f"{median(rss) / 1024:.2f} KiB", f"{median(pss) / 1024:.2f} KiB",
                         str(ratio(rss, [m[0] if m else None for m in mem[ref]]))])
    print()
    print(f"{time.strftime('%Y-%m-%d', time.gmtime())}, {os.cpu_count()} CPUs ({cpu_model()}),"
          f" load average {os.getloadavg()[0]:.1f}; {args.rounds} interleaved rounds; wrk -t1 --latency,"
          f" {args.duration:g} s per run; one worker each; ratios: median of per-round ratios (range)")
    print(f"command: python benchmarks/serve_compare.py --rounds {args.rounds} --duration {args.duration:g}"
          f" --concurrency {args.concurrency} --idle {args.idle}")
    for line in skipped:
        print(f"NOT MEASURED: {line}")
    print()
    print(tables.rst(head, rows))
    print()
    print(tables.rst(mem_head, mem_rows))
    print()
    print(tables.markdown(head, rows))
    print()
    print(tables.markdown(mem_head, mem_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
