"""``fastka serve --workers N``: the supervisor process and how a worker is started."""
from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import sys
import time
import traceback
from typing import Any, Dict, Tuple

from .server import Server
from .stats import Stats

RESTART_PAUSE = 1.0  # seconds a worker slot waits before it is restarted again
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# The signals the supervisor handles in Python. They are blocked around fork(), and a new
# worker resets them to their default before it unblocks them: a signal sent to a worker
# that has just been started is then never caught by a copy of the supervisor's handler.
HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)


def _end_with_parent(parent: int) -> None:
    """In a worker: get SIGTERM (a graceful stop) when the supervisor ``parent`` dies, even
    by SIGKILL (Linux PR_SET_PDEATHSIG, prctl(2)); exit now if it died already. Elsewhere a
    worker outlives a killed supervisor."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != parent:  # died between fork() and prctl(): no signal will come
        os._exit(0)


def _hold_port(host: str, port: int) -> socket.socket:
    """A socket bound to the port the workers will share (never listening: it takes no
    connections), so that port 0 names one port for every worker and a restarted worker
    gets the same one. It binds without SO_REUSEPORT, so the bind fails with EADDRINUSE
    when anything else holds the port (even a server that set SO_REUSEPORT itself), and
    sets SO_REUSEPORT after binding, which lets the workers join (Linux)."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    hold = socket.socket(info[0], socket.SOCK_STREAM)
    try:
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hold.bind(info[4])
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except BaseException:
        hold.close()
        raise
    return hold


class Supervisor:
    """Starts ``workers`` processes that each listen on the port with SO_REUSEPORT,
    restarts one that dies (at most once per RESTART_PAUSE seconds per slot), and on
    SIGINT/SIGTERM asks every worker to stop gracefully and waits for them.

    ``options`` are the keyword arguments of each worker's Server. OSError (EADDRINUSE)
    when the port is taken or a worker cannot listen.
    """

    def __init__(self, host: str, port: int, workers: int, stats: Stats, options: Dict[str, Any]) -> None:
        self.host, self.workers, self.stats, self.options = host, workers, stats, options
        self._hold = _hold_port(host, port)
        self.address = self._hold.getsockname()
        self.pids: Dict[int, int] = {}  # pid -> worker slot
        self._started: Dict[int, float] = {}  # slot -> monotonic time of its last start
        self._wake: Tuple[socket.socket, ...] = ()  # the supervisor's signal wake-up pair, once it runs
        ready_r, ready_w = os.pipe()
        try:
            for slot in range(workers):
                self._spawn(slot, ready_w)
            os.close(ready_w)
            ready_w = -1
            got = b""
            while len(got) < workers:  # each worker writes one byte once it listens
                chunk = os.read(ready_r, workers)
                if not chunk:
                    break
                got += chunk
        finally:
            os.close(ready_r)
            if ready_w >= 0:
                os.close(ready_w)
        if got.count(b"+") < workers:
            self._terminate_all()
            self._hold.close()
            raise OSError(errno.EADDRINUSE, "a worker could not listen")

    def _spawn(self, slot: int, ready_fd: int = -1) -> int:
        """Fork the worker of ``slot``; returns its pid. ``ready_fd``: a pipe the worker
        writes ``+`` (listening) or ``-`` (could not listen) to."""
        self._started[slot] = time.monotonic()
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            raise
        if pid == 0:  # the worker
            self._worker(slot, parent, mask, ready_fd)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.pids[pid] = slot
        return pid

    def _worker(self, slot: int, parent: int, mask: Any, ready_fd: int) -> None:
        """The child's side of _spawn: never returns."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in HANDLED:
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            _end_with_parent(parent)
            for s in (self._hold, *self._wake):
                s.close()
            try:
                server = Server(self.host, self.address[1], stats=self.stats, worker=slot, reuse_port=True, **self.options)
            except OSError as exc:
                print(f"fastka serve: worker {slot}: cannot listen: {exc.strerror or exc}", file=sys.stderr, flush=True)
                if ready_fd >= 0:
                    os.write(ready_fd, b"-")
                return
            if ready_fd >= 0:
                os.write(ready_fd, b"+")
                os.close(ready_fd)
            try:
                server.serve_forever()
            finally:
                server.close()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _terminate_all(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        while self.pids:
            try:
                pid, _ = os.wait()
            except ChildProcessError:
                break
            self.pids.pop(pid, None)

    def run(self) -> int:
        """Supervise until SIGINT/SIGTERM; returns the exit status."""
        self._wake = wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        stop = []

        def on_stop(signum: int, _frame: Any) -> None:
            stop.append(signum)

        old = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        old[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda *_: None)
        prev_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        pending: Dict[int, float] = {}  # slot -> monotonic time it may restart
        try:
            while not stop:
                self._reap(pending)
                now = time.monotonic()
                for slot, when in list(pending.items()):
                    if when <= now:
                        del pending[slot]
                        self._spawn(slot)
                        self.stats.write(slot, restarts=self.stats.read(slot)["restarts"] + 1)
                wait = min(pending.values()) - now if pending else None
                wake_r.settimeout(None if wait is None else max(0.0, wait))
                try:
                    wake_r.recv(64)
                except (BlockingIOError, socket.timeout):
                    pass
            self._terminate_all()  # each worker stops gracefully (at most --keepalive-timeout)
        finally:
            signal.set_wakeup_fd(prev_fd)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()
            self._hold.close()
        return 0

    def _reap(self, pending: Dict[int, float]) -> None:
        """Collect workers that ended; schedule their restart."""
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.pids.pop(pid, None)
            if slot is None:
                continue
            how = f"signal {-os.waitstatus_to_exitcode(status)}" if os.WIFSIGNALED(status) else f"status {os.waitstatus_to_exitcode(status)}"
            print(f"fastka serve: worker {slot} (pid {pid}) ended with {how}; restarting", file=sys.stderr, flush=True)
            pending[slot] = self._started[slot] + RESTART_PAUSE
