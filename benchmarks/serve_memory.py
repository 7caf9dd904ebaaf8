"""Resident memory of `fastka serve` vs a thread-per-connection server, N idle keep-alive connections.

    python benchmarks/serve_memory.py [--connections 5000]

Servers: `fastka serve` on each backend, and the standard library's ThreadingHTTPServer
with protocol_version "HTTP/1.1" (one thread per connection, blocked reading the next
request). A separate client process opens N connections, sends one GET on each, reads the
answer and then holds them idle. The server's VmRSS (now) and VmHWM (peak) come from
/proc/<pid>/status once all connections have been answered, before and after.
"""
from __future__ import annotations

import argparse
import signal
import os
import re
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
from procs import raise_nofile, stop_process  # noqa: E402
from servers import ROOT, FastkaServe, Refused  # noqa: E402

THREADED = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"Hello from http.server\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    request_queue_size = 4096
srv = S(("127.0.0.1", 0), H)
print(f"listening on http://127.0.0.1:{srv.server_address[1]} (ThreadingHTTPServer)", flush=True)
srv.serve_forever()
"""

CLIENT = r"""
import sys
sys.path.insert(0, sys.argv[3])
from procs import raise_nofile
from servers import idle_connections
raise_nofile()
socks = idle_connections(int(sys.argv[1]), int(sys.argv[2]), 60.0)
print("ready", flush=True)
sys.stdin.read()
"""


def mem_kib(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        text = f.read()
    return {k: int(re.search(rf"^{k}:\s+(\d+) kB", text, re.M).group(1)) for k in ("VmRSS", "VmHWM")} | {
        "Threads": int(re.search(r"^Threads:\s+(\d+)", text, re.M).group(1))}


def start(cmd: list) -> tuple:
    """Start a server that prints "listening on http://127.0.0.1:PORT"; stderr is discarded
    (ThreadingHTTPServer prints a traceback for every connection the clients drop at the end)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            preexec_fn=raise_nofile)
    line = proc.stdout.readline()
    m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, int(m.group(1))


def stop(proc: subprocess.Popen) -> None:
    stop_process(proc, signal.SIGTERM, 30)
    proc.stdout.close()


def measure(name: str, cmd: list, n: int) -> dict:
    proc, port = start(cmd)
    try:
        time.sleep(0.3)
        before = mem_kib(proc.pid)
        client = subprocess.Popen([sys.executable, "-c", CLIENT, str(port), str(n), BENCH], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            line = client.stdout.readline()
            if line.strip() != "ready":
                raise SystemExit(f"{name}: the client failed ({line!r})")
            time.sleep(1.0)
            held = mem_kib(proc.pid)
        finally:
            client.stdin.close()
            client.wait(timeout=60)
            client.stdout.close()
    finally:
        stop(proc)
    return {"server": name, "before": before, "held": held}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=5000)
    args = ap.parse_args()
    n = args.connections
    idle = "600"  # longer than the run: nothing is closed for idleness
    runs = []
    for backend in ("c", "python"):
        try:
            FastkaServe(backend).check()  # refused, not replaced by the other backend, where not built
        except Refused as exc:
            raise SystemExit(f"refused: {exc}") from None
        runs.append((f"fastka serve ({backend})", [sys.executable, "-m", "fastka", "serve", "--port", "0",
                                                   "--backend", backend, "--keepalive-timeout", idle]))
    runs.append(("ThreadingHTTPServer", [sys.executable, "-c", THREADED]))
    results = [measure(name, cmd, n) for name, cmd in runs]
    print(f"\n{n} idle keep-alive connections (one request each), server process memory:\n")
    print("| server | threads | RSS idle (MiB) | RSS holding (MiB) | peak RSS (MiB) | per connection (KiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        b, h = r["before"], r["held"]
        per = (h["VmRSS"] - b["VmRSS"]) / n
        print(f"| {r['server']} | {h['Threads']} | {b['VmRSS'] / 1024:.1f} | {h['VmRSS'] / 1024:.1f} |"
              f" {h['VmHWM'] / 1024:.1f} | {per:.1f} |")
    threaded = results[-1]["held"]["VmRSS"]
    for r in results[:-1]:
        print(f"\n{r['server']}: {r['held']['VmRSS'] / threaded:.3f} of the threaded server's RSS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
