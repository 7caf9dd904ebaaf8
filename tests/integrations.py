"""Helpers for tests/test_integrations*.py: read keepalive options back from the kernel, a
keep-alive HTTP server, a real redis-server, servers run as subprocesses, and the socket a
server process holds for one connection (duplicated with pidfd_getfd(2))."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import http.server
import importlib.util
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from types import ModuleType
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

import fastka
from pool_servers import serving
from repo import ROOT

EXAMPLES = os.path.join(ROOT, "docs", "examples")
LINUX = sys.platform.startswith("linux")

# The options a test reads back, as getsockopt(2) names them.
OPTIONS = {
    "SO_KEEPALIVE": (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
    "TCP_KEEPIDLE": (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", -1)),
    "TCP_KEEPINTVL": (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", -1)),
    "TCP_KEEPCNT": (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", -1)),
    "TCP_USER_TIMEOUT": (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", -1)),
    "TCP_NODELAY": (socket.IPPROTO_TCP, socket.TCP_NODELAY),
}


def read_options(sock: socket.socket) -> Dict[str, int]:
    """The keepalive options (and TCP_NODELAY) of ``sock``, read back from the kernel."""
    return {name: sock.getsockopt(level, opt) for name, (level, opt) in OPTIONS.items()}


def expected_options(cfg: fastka.KeepaliveConfig) -> Dict[str, int]:
    """What read_options() gives on Linux for a socket configured with ``cfg``."""
    want = {"SO_KEEPALIVE": 1, "TCP_KEEPIDLE": int(cfg.idle), "TCP_KEEPINTVL": int(cfg.interval),
            "TCP_KEEPCNT": cfg.count}
    if cfg.user_timeout is not None:
        want["TCP_USER_TIMEOUT"] = round(cfg.user_timeout * 1000)
    return want


def assert_configured(got: Dict[str, int], cfg: fastka.KeepaliveConfig) -> None:
    want = expected_options(cfg)
    assert {k: got[k] for k in want} == want, f"read back {got}, configured {cfg}"


def load_recipe(name: str) -> ModuleType:
    """docs/examples/<name>.py as a module (the file the documentation shows)."""
    path = os.path.join(EXAMPLES, name + ".py")
    spec = importlib.util.spec_from_file_location(f"fastka_recipe_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- a keep-alive HTTP/1.1 server for the clients ---------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/hold":
            # The body's last chunk waits until the test has looked at the client's socket
            # (aiohttp gives a response's connection back to its pool once the body is in).
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"2\r\nok\r\n")
            self.wfile.flush()
            self.server.release.wait(10)  # type: ignore[attr-defined]
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


class HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the connection threads: no fd outlives a test

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.release = threading.Event()
        self.url = "http://127.0.0.1:%d/" % self.server_address[1]

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that resets a keep-alive connection it is done with is no error; anything
        else is printed as usual."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@contextlib.contextmanager
def http_server() -> Iterator[HTTPServer]:
    srv = HTTPServer()
    with serving(srv, srv.release.set):
        yield srv


# -- a real redis-server ----------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_ping(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(bind: str = "127.0.0.1", port: Optional[int] = None, prefix: Tuple[str, ...] = (),
                 ping=None) -> Iterator[int]:
    """A redis-server on ``bind``:``port`` (a free loopback port by default) for the duration;
    ``prefix`` runs it under e.g. ``ip netns exec NS``. Yields the port. Skips where
    redis-server is not installed."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    port = port or free_port()
    ping = ping or (lambda: redis_ping(bind, port))
    proc = subprocess.Popen(
        [*prefix, exe, "--bind", bind, "--port", str(port), "--save", "", "--appendonly", "no",
         "--protected-mode", "no"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not ping():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start on {bind}:{port} (exit status {proc.poll()})")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- servers in subprocesses ----------------------------------------------------------------

class Subprocess:
    """A server process whose output lines are collected by a thread; stopped on exit."""

    def __init__(self, argv: List[str], env: Dict[str, str], cwd: Optional[str] = None) -> None:
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.output: List[str] = []
        self._reader = threading.Thread(target=self._read)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 20) -> "re.Match[str]":
        """The first output line matching ``pattern`` (fails after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.0, min(left, 0.5)))
            except queue.Empty:
                if left <= 0 or self.proc.poll() is not None:
                    pytest.fail(f"{self.proc.args[0]} printed no line matching {pattern!r}; "
                                f"exit status {self.proc.poll()}; output:\n{''.join(self.output)}")
                continue
            self.output.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def __enter__(self) -> "Subprocess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def subprocess_env(backend_name: str) -> Dict[str, str]:
    """The environment for a child process that must use backend ``backend_name``."""
    env = dict(os.environ)
    env.pop("FASTKA_NO_EXTENSIONS", None)
    if backend_name == "python":
        env["FASTKA_NO_EXTENSIONS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return env


# -- the socket a server process holds for one of our connections ---------------------------

SYS_pidfd_getfd = 438  # the same number on every Linux architecture (asm-generic)


def _pidfd_getfd(pid: int, fd: int) -> int:
    pidfd = os.pidfd_open(pid)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        dup = libc.syscall(SYS_pidfd_getfd, pidfd, fd, 0)
        if dup < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pidfd_getfd(pid {pid}, fd {fd}): {os.strerror(err)}")
        return dup
    finally:
        os.close(pidfd)


def _process_tree(pid: int) -> List[int]:
    """``pid`` and its descendants (gunicorn's workers are children of the arbiter)."""
    parents: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(parents.get(p, []))
    return tree


def server_side_socket(pid: int, client: socket.socket, timeout: float = 10) -> socket.socket:
    """The socket that process ``pid`` (or one of its children) holds for the other end of
    ``client``, duplicated into this process: its options are the server's own. Waits up to
    ``timeout`` seconds for the server to accept."""
    if not hasattr(os, "pidfd_open"):
        pytest.skip("os.pidfd_open needs Python 3.9+ on Linux 5.3+")
    want = (client.getpeername(), client.getsockname())
    deadline = time.monotonic() + timeout
    while True:
        for p in _process_tree(pid):
            sock = _find_socket(p, want)
            if sock is not None:
                return sock
        if time.monotonic() > deadline:
            raise AssertionError(f"no process of {_process_tree(pid)} holds the server end of {want}")
        time.sleep(0.05)


def _find_socket(pid: int, want: tuple) -> Optional[socket.socket]:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                continue
            dup = _pidfd_getfd(pid, int(fd))
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.ENOSYS):
                pytest.skip(f"cannot look at another process's socket here: {exc}")
            continue  # the fd was closed meanwhile
        sock = socket.socket(fileno=dup)
        try:
            if (sock.getsockname(), sock.getpeername()) == want:
                return sock
        except OSError:
            pass  # not connected: a listener, a pipe-like socket
        sock.close()
    return None
