"""`fastka serve` next to nginx and uvicorn: requests per second (wrk) and memory per idle
keep-alive connection, one worker each, as ratios to nginx from one run.

    python benchmarks/serve_compare.py [--rounds 3] [--duration 5] [--connections 100]
                                       [--idle 2000] [--no-install]

Servers: `fastka serve` on each backend, nginx (``worker_processes 1``, ``return 200``,
keepalive_requests 1000 as fastka's default --max-requests), uvicorn with uvloop and httptools
(a minimal ASGI app). uvicorn, uvloop and httptools are installed into this interpreter's
environment with pip when missing (``--no-install`` skips uvicorn instead); a server that
cannot run is skipped with the reason.

req/s: wrk keep-alive, ``--connections`` connections, one thread, ``--rounds`` interleaved
rounds of ``--duration`` seconds, the median. Memory: ``--idle`` connections each send one
GET, read the answer and stay open; RSS (and PSS) of every server process, growth over the
idle server, divided by the connections. Server and wrk share this machine's cores.
Loopback only; every process is stopped at the end.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_100k import ROOT, Nginx, pss_kib, raise_nofile, rss_kib, stop_process, tree_pids  # noqa: E402

UVICORN_APP = '''
BODY = b"Hello from uvicorn\\n"
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(BODY))]})
    await send({"type": "http.response.body", "body": BODY})
'''


def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen within 20 s")


class FastkaServe:
    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.label = f"fastka serve, {backend}"

    def start(self) -> int:
        self.proc = subprocess.Popen([sys.executable, "-m", "fastka.cli", "serve", "--port", "0", "--backend", self.backend],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=raise_nofile)
        m = re.search(r"127\.0\.0\.1:(\d+)", self.proc.stdout.readline())
        if not m:
            self.stop()
            raise RuntimeError(self.proc.stderr.read().strip().splitlines()[-1])
        return int(m.group(1))

    def pids(self) -> List[int]:
        return tree_pids(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, 20)


class Uvicorn:
    label = "uvicorn (uvloop + httptools)"

    def start(self) -> int:
        self.dir = tempfile.mkdtemp(prefix="serve_compare_uvicorn_")
        with open(os.path.join(self.dir, "hello_app.py"), "w") as f:
            f.write(UVICORN_APP)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "hello_app:app", "--port", str(port), "--loop", "uvloop",
                                      "--http", "httptools", "--workers", "1", "--log-level", "warning", "--no-access-log",
                                      "--backlog", "4096"], cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, preexec_fn=raise_nofile)
        wait_port(port, self.proc, "uvicorn")
        return port

    def pids(self) -> List[int]:
        return tree_pids(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, 20)
        shutil.rmtree(self.dir, ignore_errors=True)


def uvicorn_missing(install: bool) -> Optional[str]:
    """None when uvicorn, uvloop and httptools import (installing them if allowed), else why not."""
    wanted = ("uvicorn", "uvloop", "httptools")
    if all(importlib.util.find_spec(m) for m in wanted):
        return None
    if not install:
        return "uvicorn/uvloop not installed (--no-install)"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", *wanted], capture_output=True, text=True, timeout=600)
    importlib.invalidate_caches()
    if r.returncode != 0 or not all(importlib.util.find_spec(m) for m in wanted):
        return f"pip install {' '.join(wanted)} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}"
    return None


def wrk_rps(wrk: str, port: int, connections: int, duration: float) -> float:
    r = subprocess.run([wrk, "-t", "1", "-c", str(connections), "-d", f"{duration:g}s", f"http://127.0.0.1:{port}/"],
                       capture_output=True, text=True, timeout=duration + 60)
    m = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
    if not m or "Non-2xx" in r.stdout:
        raise RuntimeError(f"wrk: {r.stdout.strip()} {r.stderr.strip()}")
    return float(m.group(1))


def idle_memory(port: int, server, n: int) -> "tuple[float, float]":
    """(RSS, PSS) bytes per idle keep-alive connection after one request each."""
    time.sleep(0.5)
    pids = server.pids()
    rss0, pss0 = rss_kib(pids), pss_kib(pids)
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            socks.append(s)
        for s in socks:
            data = b""
            while b"\r\n\r\n" not in data or not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError("server closed an idle connection early")
                data += chunk
        time.sleep(1.0)
        pids = server.pids()
        return (rss_kib(pids) - rss0) * 1024 / n, (pss_kib(pids) - pss0) * 1024 / n
    finally:
        for s in socks:
            s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--idle", type=int, default=2000)
    ap.add_argument("--no-install", action="store_true")
    args = ap.parse_args()
    raise_nofile()
    wrk = shutil.which("wrk")
    if not wrk:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    servers: list = [FastkaServe("c"), FastkaServe("python")]
    skipped = []
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx:
        servers.insert(0, Nginx(nginx, 1, 75.0, resource_hard()))
    else:
        skipped.append("nginx: not installed (apt-get install nginx)")
    why = uvicorn_missing(not args.no_install)
    if why is None:
        servers.append(Uvicorn())
    else:
        skipped.append(f"uvicorn: {why}")
    rps = {s.label: [] for s in servers}
    mem = {}
    for rnd in range(args.rounds):
        for s in list(servers):
            try:
                port = s.start()
            except (RuntimeError, SystemExit) as exc:
                skipped.append(f"{s.label}: {exc}")
                servers.remove(s)
                continue
            try:
                wrk_rps(wrk, port, args.connections, 1.0)  # warm-up
                rps[s.label].append(wrk_rps(wrk, port, args.connections, args.duration))
                if rnd == 0:
                    mem[s.label] = idle_memory(port, s, args.idle)
            finally:
                s.stop()
            print(f"round {rnd + 1}: {s.label}: {rps[s.label][-1]:,.0f} req/s", flush=True)
    for line in skipped:
        print(f"skipped {line}")
    ref = next((s.label for s in servers if s.label.startswith("nginx")), None)
    print()
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs ({cpu_model()}), wrk -t1 -c{args.connections},"
          f" median of {args.rounds} x {args.duration:g} s; memory over {args.idle} idle connections")
    print("| server | req/s | vs nginx | RSS per idle conn | PSS per idle conn | RSS vs nginx |")
    print("|---|---|---|---|---|---|")
    for s in servers:
        r = statistics.median(rps[s.label])
        rss, pss = mem[s.label]
        vs = f"{r / statistics.median(rps[ref]):.2f}x" if ref else "-"
        mvs = f"{rss / mem[ref][0]:.2f}x" if ref and mem[ref][0] > 0 else "-"
        print(f"| {s.label} | {r:,.0f} | {vs} | {rss / 1024:.2f} KiB | {pss / 1024:.2f} KiB | {mvs} |")
    return 0


def resource_hard() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
        return m.group(1).strip() if m else "?"
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
