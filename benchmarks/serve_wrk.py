"""Requests per second of `fastka serve` (both backends) under wrk, keep-alive connections.

    python benchmarks/serve_wrk.py [--connections 200] [--duration 10] [--threads 2]

wrk keeps its connections alive (HTTP/1.1); each server is started fresh, warmed up for
one second, then measured. ThreadingHTTPServer (HTTP/1.1) is run the same way for scale.
The server and wrk share the machine: on a 2-core VM they compete for the cores.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_memory import THREADED, start, stop  # noqa: E402


def wrk(binary: str, port: int, connections: int, threads: int, duration: int) -> dict:
    r = subprocess.run([binary, "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency",
                        f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=duration + 60)
    out = r.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = re.search(r"Latency\s+([\d.]+\w+)", out).group(1)
    p99 = re.search(r"99%\s+([\d.]+\w+)", out)
    errors = re.search(r"Socket errors:.*", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "latency": lat, "p99": p99.group(1) if p99 else "-",
            "errors": (errors.group(0) if errors else "none") + (f", non-2xx {non2xx.group(1)}" if non2xx else "")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    binary = shutil.which("wrk")
    if binary is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    runs = [
        ("fastka serve (c)", [sys.executable, "-m", "fastka.cli", "serve", "--port", "0", "--backend", "c",
                              "--max-requests", "1000000"]),
        ("fastka serve (python)", [sys.executable, "-m", "fastka.cli", "serve", "--port", "0", "--backend", "python",
                                   "--max-requests", "1000000"]),
        ("ThreadingHTTPServer", [sys.executable, "-c", THREADED]),
    ]
    rows = []
    for name, cmd in runs:
        proc, port = start(cmd)
        try:
            wrk(binary, port, args.connections, args.threads, 1)
            rows.append((name, wrk(binary, port, args.connections, args.threads, args.duration)))
        finally:
            stop(proc)
    print(f"\nwrk -t{args.threads} -c{args.connections} -d{args.duration}s (keep-alive), GET / (18-byte body):\n")
    print("| server | requests/s | mean latency | p99 latency | errors |")
    print("|---|---:|---:|---:|---|")
    for name, r in rows:
        print(f"| {name} | {r['rps']:,.0f} | {r['latency']} | {r['p99']} | {r['errors']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
