"""The servers the serve benchmarks start: `fastka serve`, nginx and uvicorn, each behind
``start() -> port``, ``pids()``, ``stop()`` and a ``label``.

Each measures exactly what its label says or refuses: `fastka serve` is started with an
explicit ``--backend`` and stopped with an error when the one it reports is another (an
unbuilt checkout has no compiled backend; the benchmark then says so instead of measuring
the fallback under the compiled label).
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

from procs import free_port, raise_nofile, stop_process, tree_pids, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNLIMITED_REQUESTS = 2**31 - 1
GET = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


class Refused(RuntimeError):
    """The server cannot run as asked here (the message says why)."""


def idle_connections(port: int, n: int, timeout: float) -> List[socket.socket]:
    """Open ``n`` connections to 127.0.0.1:``port``, send one GET on each and read its whole
    answer (a body ending in a newline): keep-alive connections left idle, for the caller
    to close. ``timeout``: seconds any one connect or read may take. RuntimeError when the
    server closes a connection first (the ones opened are closed then)."""
    socks: List[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            socks.append(s)
            s.sendall(GET)
        for s in socks:
            data = b""
            while b"\r\n\r\n" not in data or not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError("the server closed an idle connection early")
                data += chunk
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


class Process:
    """A server run as a process tree (``self.proc``): its pids, and stop() with
    ``stop_signal``, closing its pipes and removing ``self.dir`` when it has one."""

    stop_signal = signal.SIGTERM
    proc: subprocess.Popen
    dir: Optional[str] = None

    def pids(self) -> List[int]:
        return tree_pids(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc, self.stop_signal, 30)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _started(self, port: int, name: str) -> int:
        """``port`` once the server listens there (and is settled); stopped on failure."""
        try:
            wait_port(port, self.proc, name)
            self._settle()
        except BaseException:
            self.stop()
            raise
        return port

    def _settle(self) -> None:
        """Wait, after the port answers, until the server is fully up (nothing by default)."""


class FastkaServe(Process):
    """``python -m fastka serve`` from this checkout, ``backend`` "c" or "python"."""

    def __init__(self, backend: str, workers: int = 1, timeout: float = 75.0,
                 max_requests: int = UNLIMITED_REQUESTS) -> None:
        self.backend, self.workers, self.timeout, self.max_requests = backend, workers, timeout, max_requests
        kind = "compiled" if backend == "c" else "fallback"
        self.label = f"fastka serve, {kind}" + (f", {workers} workers" if workers > 1 else "")

    def check(self) -> None:
        """Refused when this checkout cannot run the backend asked for."""
        sys.path.insert(0, ROOT)
        try:
            from fastka import _backends

            _backends.load(self.backend)
        except ImportError as exc:
            hint = " (build it: tools/dev-build)" if self.backend == "c" else ""
            raise Refused(f"{self.label}: {exc}{hint}") from None
        finally:
            sys.path.remove(ROOT)

    def start(self) -> int:
        self.check()
        cmd = [sys.executable, "-m", "fastka", "serve", "--port", "0", "--backend", self.backend,
               "--workers", str(self.workers), "--keepalive-timeout", f"{self.timeout:g}",
               "--max-requests", str(self.max_requests)]
        env = {**os.environ, "PYTHONPATH": ROOT}
        env.pop("FASTKA_NO_EXTENSIONS", None)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, preexec_fn=raise_nofile)
        line = self.proc.stdout.readline()
        port = re.search(r"127\.0\.0\.1:(\d+)", line)
        ran = re.search(r"backend (\w+)", line)
        if not port or not ran:
            self.stop()
            raise Refused(f"{self.label} did not start: {line.strip() or self.proc.stderr.read().strip()}")
        if ran.group(1) != self.backend:
            self.stop()
            raise Refused(f"{self.label}: asked for backend {self.backend!r}, the server runs {ran.group(1)!r}")
        return int(port.group(1))


NGINX_CONF = """
worker_processes {workers};
worker_rlimit_nofile {nofile};
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections {per_worker}; use epoll; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_timeout {timeout};
    keepalive_requests {requests};
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{ return 200 "Hello from nginx\\n"; }}
    }}
}}
"""


def nginx_binary() -> Optional[str]:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


class Nginx(Process):
    """nginx with a minimal configuration in a temporary directory: ``workers`` worker
    processes, ``return 200`` on loopback, keep-alive timeout ``timeout`` s."""

    stop_signal = signal.SIGQUIT  # nginx's graceful stop

    def __init__(self, workers: int = 1, timeout: float = 75.0, requests: int = UNLIMITED_REQUESTS) -> None:
        self.binary = nginx_binary()
        if self.binary is None:
            raise Refused("nginx is not installed (apt-get install nginx)")
        self.workers, self.timeout, self.requests = workers, timeout, requests
        r = subprocess.run([self.binary, "-v"], capture_output=True, text=True)
        version = re.search(r"nginx/([\d.]+)", r.stderr)
        self.label = f"nginx {version.group(1) if version else '?'}" + (f", {workers} workers" if workers > 1 else "")

    def start(self) -> int:
        self.dir = tempfile.mkdtemp(prefix="fastka_bench_nginx_")
        port = free_port()
        nofile = raise_nofile()
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(workers=self.workers, nofile=nofile, dir=self.dir, port=port,
                                      per_worker=nofile - 100, timeout=f"{self.timeout * 1000:.0f}ms",
                                      requests=self.requests))
        self.proc = subprocess.Popen([self.binary, "-p", self.dir, "-c", conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, preexec_fn=raise_nofile)
        return self._started(port, "nginx")

    def _settle(self) -> None:
        deadline = time.monotonic() + 30  # every worker has its reuseport listener
        while len(self.pids()) < self.workers + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)


UVICORN_APP = '''
BODY = b"Hello from uvicorn\\n"
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(BODY))]})
    await send({"type": "http.response.body", "body": BODY})
'''


class Uvicorn(Process):
    """uvicorn with uvloop and httptools, one worker, a minimal ASGI app; keep-alive
    timeout ``timeout`` s."""

    label = "uvicorn (uvloop + httptools)"

    def __init__(self, timeout: float = 75.0) -> None:
        missing = [m for m in ("uvicorn", "uvloop", "httptools") if importlib.util.find_spec(m) is None]
        if missing:
            raise Refused(f"uvicorn: {', '.join(missing)} not installed (pip install uvicorn uvloop httptools)")
        self.timeout = timeout

    def start(self) -> int:
        self.dir = tempfile.mkdtemp(prefix="fastka_bench_uvicorn_")
        with open(os.path.join(self.dir, "hello_app.py"), "w") as f:
            f.write(UVICORN_APP)
        port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "hello_app:app", "--port", str(port),
                                      "--loop", "uvloop", "--http", "httptools", "--workers", "1",
                                      "--log-level", "warning", "--no-access-log", "--backlog", "4096",
                                      "--timeout-keep-alive", f"{self.timeout:.0f}"],
                                     cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=raise_nofile)
        return self._started(port, "uvicorn")
