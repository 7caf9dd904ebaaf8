"""What the pytest-benchmark suites share: the sizes and connections (from loopback.py),
the keepalive config they apply, the C floor of the system calls (floor.c,
compiled now), and the memory a manager adds per connection. Public API and the backend
registry only: nothing here comes from the command line's code.

    python benchmarks/harness.py BACKEND N   # memory per managed connection, as JSON
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from typing import Optional, Sequence

from loopback import Pool, sizes
from procs import raise_nofile

from fastka import KeepaliveConfig, _backends

__all__ = ["CONFIG", "SIZES", "Floor", "Pool", "measure_memory"]

FLOOR_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floor.c")


CONFIG = KeepaliveConfig()
SIZES = sizes()


class Floor:
    """floor.c built as a shared library, called through ctypes on arrays of fds."""

    def __init__(self, lib: ctypes.CDLL, tmpdir: str) -> None:
        self.lib = lib
        self._tmpdir = tmpdir
        ptr = ctypes.POINTER(ctypes.c_int)
        lib.floor_set_keepalive.argtypes = [ptr, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        for name in ("floor_get_keepalive", "floor_tcp_info", "floor_find_dead"):
            getattr(lib, name).argtypes = [ptr, ctypes.c_int]

    @staticmethod
    def build() -> "Floor":
        """Compile floor.c now; RuntimeError saying why where that cannot be done."""
        if not sys.platform.startswith("linux"):
            raise RuntimeError("the C floor uses Linux socket options (TCP_KEEPIDLE, TCP_INFO, POLLRDHUP)")
        cc = (sysconfig.get_config_var("CC") or "").split()[:1]
        compiler = next((c for c in (*cc, "cc", "gcc", "clang") if c and shutil.which(c)), None)
        if compiler is None:
            raise RuntimeError("no C compiler found (tried $CC, cc, gcc, clang)")
        tmpdir = tempfile.mkdtemp(prefix="fastka-floor-")
        lib = os.path.join(tmpdir, "floor.so")
        proc = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", lib, FLOOR_SOURCE],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise RuntimeError(f"{compiler} could not build floor.c: {proc.stderr.strip()[:200]}")
        return Floor(ctypes.CDLL(lib), tmpdir)

    def close(self) -> None:
        shutil.rmtree(self._tmpdir, ignore_errors=True)

    @staticmethod
    def fds(socks: Sequence) -> ctypes.Array:
        return (ctypes.c_int * len(socks))(*[s.fileno() for s in socks])


# ---- Memory per managed connection ------------------------------------------------------

def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _malloced() -> Optional[int]:
    """Bytes in use from malloc (glibc mallinfo2: uordblks + hblkhd), None elsewhere."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (AttributeError, OSError):
        return None
    fn.restype = _Mallinfo2
    info = fn()
    return info.uordblks + info.hblkhd


def memory_main(backend: str, n: int) -> None:
    """In a child process: bytes per connection a manager adds (RSS and malloc deltas over
    n connections; the sockets exist before and after). Prints JSON."""
    raise_nofile()
    Manager = _backends.load(backend).KeepaliveManager
    with Pool(n) as pool:
        warm = Manager(None, close=False)  # first-use allocations (module state, code paths)
        warm.add(pool.socks[0])
        warm.close()
        gc.collect()
        rss0, mal0 = _rss(), _malloced()
        mgr = Manager(None, close=False)
        for s in pool.socks:
            mgr.add(s)
        gc.collect()
        rss1, mal1 = _rss(), _malloced()
        out = {"backend": backend, "n": n, "rss_per_conn": (rss1 - rss0) / n,
               "malloc_per_conn": None if mal0 is None else (mal1 - mal0) / n}
        mgr.close()
    print(json.dumps(out))


def measure_memory(backend: str, n: int) -> dict:
    """memory_main in a fresh interpreter (so that earlier allocations do not hide the
    manager's); RuntimeError with the child's last error line when it fails."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), backend, str(n)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    memory_main(sys.argv[1], int(sys.argv[2]))
