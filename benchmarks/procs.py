"""Processes and kernel figures the serve benchmarks read: /proc, limits, stopping.

Every figure is read from /proc (Linux). Sizes are in KiB as /proc gives them, CPU in
seconds.
"""
from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import time
from typing import List


def raise_nofile() -> int:
    """Raise this process's soft open-file limit to the hard one; returns it. Also a
    ``preexec_fn`` for the servers and clients the benchmarks start."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def sysctl(name: str) -> str:
    """The value of sysctl ``name`` (e.g. "net.core.somaxconn"), whitespace collapsed."""
    with open("/proc/sys/" + name.replace(".", "/")) as f:
        return " ".join(f.read().split())


def set_sysctl(name: str, value: str) -> None:
    """Write sysctl ``name`` (root only); OSError when the kernel refuses."""
    with open("/proc/sys/" + name.replace(".", "/"), "w") as f:
        f.write(value)


def meminfo_kib(field: str) -> int:
    """``field`` of /proc/meminfo (e.g. "Slab", "MemAvailable") in KiB."""
    with open("/proc/meminfo") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    if not m:
        raise RuntimeError(f"no {field} in /proc/meminfo")
    return int(m.group(1))


def tree_pids(pid: int) -> List[int]:
    """``pid`` and all its descendants (those alive now)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return pids


def proc_kib(pids: List[int], path: str, field: str) -> int:
    """The sum of ``field`` (kB) in /proc/PID/``path`` over ``pids``; a process that is gone
    counts 0."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/{path}") as f:
                total += int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1))
        except (OSError, AttributeError):
            pass
    return total


def rss_kib(pids: List[int]) -> int:
    """Resident set size of ``pids`` together, KiB (shared pages counted in each)."""
    return proc_kib(pids, "status", "VmRSS")


def pss_kib(pids: List[int]) -> int:
    """Proportional set size of ``pids`` together, KiB (shared pages split between them)."""
    return proc_kib(pids, "smaps_rollup", "Pss")


def cpu_seconds(pids: List[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` together."""
    ticks = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def stop_process(proc: subprocess.Popen, sig: int, timeout: float) -> None:
    """Send ``sig`` (the server's graceful stop) and wait ``timeout`` seconds, then kill the
    process and every descendant."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for p in tree_pids(proc.pid):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20.0) -> None:
    """Wait until 127.0.0.1:``port`` accepts; RuntimeError when ``proc`` exits first or
    ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited: {proc.stderr.read().strip() if proc.stderr else ''}")
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen within {timeout:g} s")


def cpu_model() -> str:
    """This machine's CPU model name, "?" where /proc/cpuinfo does not say."""
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
        return m.group(1).strip() if m else "?"
    except OSError:
        return "?"
