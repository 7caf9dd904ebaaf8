"""The io_uring batch path of the compiled set_keepalive_many (src/uring.c).

The switch (set_batch_path / FASTKA_BATCH_PATH) forces either path; both must give the
same return value, the same per-fd errors (errno and message) and leave every socket in
the same state. Detection of an io_uring that is blocked (seccomp ENOSYS/EPERM) or
disabled (kernel.io_uring_disabled) runs in child processes.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="io_uring is Linux-only")


@pytest.fixture
def kc():
    """fastka._keepalive_c with its batch path restored afterwards."""
    try:
        import fastka._keepalive_c as mod
    except ImportError as exc:
        if os.environ.get("FASTKA_REQUIRE_EXTENSION"):
            pytest.fail(f"fastka._keepalive_c does not import: {exc}")
        pytest.skip(f"fastka._keepalive_c is not built: {exc}")
    before = mod.batch_path()
    yield mod
    mod.set_batch_path(before)


@pytest.fixture
def uring(kc):
    status = kc.uring_status()
    if status != "available":
        pytest.skip(f"io_uring batch path {status}")
    return kc


def _state(fd):
    """Everything set_keepalive_many may change on fd, read with getsockopt(2)."""
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fileno=fd)  # borrowed: detached below
    except OSError as exc:  # a pipe
        return (f"errno {exc.errno}",)
    out = []
    try:
        for level, opt in (
            (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            (socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        ):
            try:
                out.append(s.getsockopt(level, opt))
            except OSError as exc:
                out.append(f"errno {exc.errno}")
        return tuple(out)
    finally:
        s.detach()


class Zoo:
    """Every kind of member set_keepalive_many may meet, twice over (one set per path)."""

    def __init__(self):
        self.owned = []
        self.listener = self.keep(socket.socket())
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)

    def keep(self, obj):
        self.owned.append(obj)
        return obj

    def members(self):
        lst = self.listener
        client = self.keep(socket.create_connection(lst.getsockname()))
        server = self.keep(lst.accept()[0])
        r, w = os.pipe()
        self.owned += [r, w]
        unix_a, unix_b = socket.socketpair()
        self.keep(unix_a), self.keep(unix_b)
        udp = self.keep(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        tcp6 = self.keep(socket.socket(socket.AF_INET6, socket.SOCK_STREAM)) if socket.has_ipv6 else None
        plain = [self.keep(socket.socket()) for _ in range(3)]
        out = [client, server, udp, plain[0], r, unix_a, plain[1], w, plain[2]]
        if tcp6 is not None:
            out.append(tcp6)
        return out

    def close(self):
        for obj in self.owned:
            if isinstance(obj, int):
                os.close(obj)
            else:
                obj.close()


@pytest.fixture
def zoo():
    z = Zoo()
    yield z
    z.close()


def _compare(kc, zoo, **config):
    """Run each path on its own copy of the zoo; return both (result, states)."""
    runs = {}
    for path in ("loop", "uring"):
        members = zoo.members()
        kc.set_batch_path(path)
        errors = kc.set_keepalive_many(members, **config)
        fds = [m if isinstance(m, int) else m.fileno() for m in members]
        position = {fd: i for i, fd in enumerate(fds)}
        # fds differ between the two copies: compare by position in the list
        runs[path] = (
            {position[fd]: (type(e), e.errno, str(e).replace(str(fd), "<fd>")) for fd, e in errors.items()},
            [_state(fd) for fd in fds],
        )
    return runs["loop"], runs["uring"]


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"idle": 7, "interval": 3, "count": 2},
        {"idle": 1, "interval": 1, "count": 1, "user_timeout": 2.5},
        {"idle": 32767, "interval": 32767, "count": 127, "user_timeout": 0},
    ],
)
def test_uring_matches_plain_loop(uring, zoo, config):
    loop, ur = _compare(uring, zoo, **config)
    assert ur == loop
    errors = loop[0]
    # the zoo's UDP socket, pipe ends and Unix socket fail; TCP sockets succeed
    assert sorted(errors) == [2, 4, 5, 7]
    assert "UDP" in errors[2][2] and errors[4][1] != 0


def test_closed_fd_reported_like_the_loop(uring):
    socks = [socket.socket() for _ in range(3)]
    dead = socket.socket()
    dead_fd = dead.fileno()
    dead.close()  # nothing opens an fd until both paths ran: the number stays free
    try:
        fds = [socks[0].fileno(), dead_fd, socks[1].fileno(), socks[2].fileno()]
        results = {}
        for path in ("loop", "uring"):
            uring.set_batch_path(path)
            errors = uring.set_keepalive_many(fds, idle=11)
            results[path] = {fd: (e.errno, str(e)) for fd, e in errors.items()}
        assert results["uring"] == results["loop"]
        assert list(results["loop"]) == [dead_fd] and results["loop"][dead_fd][0] == 9  # EBADF
    finally:
        for s in socks:
            s.close()


def test_many_sockets_across_batches(uring):
    """More fds than one ring holds, failures scattered among them."""
    socks = [socket.socket() for _ in range(1500)]
    udps = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(6)]
    members = list(socks)
    for i, u in enumerate(udps):
        members.insert(1 + i * 251, u)
    try:
        uring.set_batch_path("loop")
        loop = uring.set_keepalive_many(members, idle=9, interval=4, count=3)
        uring.set_batch_path("uring")
        for s in socks:  # start from a different state: the uring run must set everything
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
        ur = uring.set_keepalive_many(members, idle=9, interval=4, count=3)
        assert {fd: str(e) for fd, e in ur.items()} == {fd: str(e) for fd, e in loop.items()}
        assert sorted(ur) == sorted(u.fileno() for u in udps)
        assert {_state(s.fileno())[:4] for s in socks} == {(1, 9, 4, 3)}
        assert {_state(u.fileno())[0] for u in udps} == {0}  # SO_KEEPALIVE untouched, as in the loop
    finally:
        for s in socks + udps:
            s.close()


def test_empty_and_single(uring):
    uring.set_batch_path("uring")
    assert uring.set_keepalive_many([]) == {}
    with socket.socket() as s:
        assert uring.set_keepalive_many([s], idle=5) == {}
        assert _state(s.fileno())[:2] == (1, 5)


def test_threads_share_nothing(uring):
    """The batch runs without the GIL: threads calling at once each use their own ring."""
    uring.set_batch_path("uring")
    groups = [[socket.socket() for _ in range(400)] for _ in range(4)]
    results, failures = {}, []

    def work(i):
        try:
            for _ in range(5):
                results[i] = uring.set_keepalive_many(groups[i], idle=100 + i, count=1 + i)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        assert results == {0: {}, 1: {}, 2: {}, 3: {}}
        for i, group in enumerate(groups):
            assert {_state(s.fileno())[1:4:2] for s in group} == {(100 + i, 1 + i)}
    finally:
        for group in groups:
            for s in group:
                s.close()


def test_forked_child_gets_its_own_ring(uring):
    uring.set_batch_path("uring")
    with socket.socket() as s:
        assert uring.set_keepalive_many([s], idle=21) == {}  # the parent's ring exists now
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ok = uring.set_keepalive_many([s], idle=22) == {} and _state(s.fileno())[1] == 22
                code = 0 if ok else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert uring.set_keepalive_many([s], idle=23) == {}
        assert _state(s.fileno())[1] == 23


def test_switch_values(kc):
    for path in ("loop", "auto"):
        kc.set_batch_path(path)
        assert kc.batch_path() == path
    with pytest.raises(ValueError, match=r"batch path must be one of 'auto', 'uring', 'loop', not 'fast'"):
        kc.set_batch_path("fast")
    with pytest.raises(ValueError):
        kc.set_batch_path(None)
    assert kc.batch_path() == "auto"


def test_status_line(kc):
    status = kc.uring_status()
    assert status == "available" or status.startswith("unavailable: ")
    assert "\n" not in status
    assert kc.uring_status() is not None and kc.uring_status() == status  # cached


def test_forcing_uring_where_unavailable_raises(kc):
    if kc.uring_status() == "available":
        kc.set_batch_path("uring")
        assert kc.batch_path() == "uring"
    else:
        with pytest.raises(OSError, match="io_uring batch path is unavailable: "):
            kc.set_batch_path("uring")


# ---- Child processes: the environment variable, blocked and disabled io_uring -------------

# A seccomp filter that makes io_uring_setup (425 on every architecture) fail with ERRNO,
# installed with prctl(2) before fastka is imported.
SECCOMP = """
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
def block_io_uring(err):
    BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
    prog = [(BPF_LD_W_ABS, 0, 0, 0),               # A = seccomp_data.nr
            (BPF_JEQ_K, 0, 1, 425),                # io_uring_setup?
            (BPF_RET_K, 0, 0, 0x00050000 | err),   # SECCOMP_RET_ERRNO | err
            (BPF_RET_K, 0, 0, 0x7FFF0000)]         # SECCOMP_RET_ALLOW
    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw)
    fprog = struct.pack("HxxxxxxP", len(prog), ctypes.addressof(buf))
    fbuf = ctypes.create_string_buffer(fprog)
    assert libc.prctl(38, 1, 0, 0, 0) == 0                            # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.addressof(fbuf), 0, 0) == 0, ctypes.get_errno()  # PR_SET_SECCOMP, FILTER
"""

CHILD_CHECK = """
import socket
import fastka._keepalive_c as kc
status = kc.uring_status()
print(status)
try:
    kc.set_batch_path("uring")
except OSError as exc:
    print("forcing:", exc)
kc.set_batch_path("auto")
socks = [socket.socket() for _ in range(50)] + [socket.socket(socket.AF_INET, socket.SOCK_DGRAM)]
errors = kc.set_keepalive_many(socks, idle=13)
assert list(errors) == [socks[-1].fileno()], errors
assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 13 for s in socks[:-1])
print("loop fallback ok")
"""


def _child(code, env=None, prefix=()):
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run(
        [*prefix, sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    "err, words",
    [(38, "io_uring_setup is missing (ENOSYS)"), (1, "io_uring_setup is blocked (EPERM)")],
)
def test_blocked_by_seccomp(kc, err, words):
    if not hasattr(os, "fork"):
        pytest.skip("needs a child process with a seccomp filter")
    proc = _child(SECCOMP + f"block_io_uring({err})\n" + CHILD_CHECK)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("unavailable: ") and words in lines[0]
    assert lines[1].startswith("forcing: ") and words in lines[1]
    assert lines[2] == "loop fallback ok"


@pytest.mark.parametrize(
    "value, status",
    [
        ("2", "unavailable: kernel.io_uring_disabled=2 (io_uring is switched off for every process)"),
        ("1", "unavailable: kernel.io_uring_disabled=1 and this process is neither privileged nor in "
              "kernel.io_uring_group (EPERM)"),
    ],
)
def test_disabled_by_sysctl(kc, tmp_path, value, status):
    """kernel.io_uring_disabled as a process sees it: a private mount namespace with a
    file holding the value bound over the sysctl, and io_uring_setup failing with EPERM
    as the kernel then makes it."""
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    probe = subprocess.run([unshare, "--mount", "--propagation", "private", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.strip()}")
    fake = tmp_path / "io_uring_disabled"
    fake.write_text(value + "\n")
    code = (
        "import subprocess\n"
        f"subprocess.run(['mount', '--bind', {str(fake)!r}, '/proc/sys/kernel/io_uring_disabled'], check=True)\n"
        + SECCOMP + "block_io_uring(1)\n" + CHILD_CHECK
    )
    proc = _child(code, prefix=(unshare, "--mount", "--propagation", "private"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == status


def test_environment_variable(kc):
    proc = _child("import fastka._keepalive_c as kc; print(kc.batch_path())", env={"FASTKA_BATCH_PATH": "loop"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "loop"
    proc = _child("import fastka._keepalive_c", env={"FASTKA_BATCH_PATH": "turbo"})
    assert proc.returncode != 0
    assert "FASTKA_BATCH_PATH must be one of 'auto', 'uring', 'loop', not 'turbo'" in proc.stderr
    proc = _child("import fastka._keepalive_c as kc; print(kc.batch_path())", env={"FASTKA_BATCH_PATH": "uring"})
    if kc.uring_status() == "available":
        assert proc.returncode == 0 and proc.stdout.strip() == "uring", proc.stderr
    else:
        assert proc.returncode != 0 and "io_uring batch path is unavailable" in proc.stderr


def test_environment_uring_when_blocked(kc):
    proc = _child(SECCOMP + "block_io_uring(38)\nimport fastka._keepalive_c\n", env={"FASTKA_BATCH_PATH": "uring"})
    assert proc.returncode != 0
    assert "OSError" in proc.stderr and "io_uring_setup is missing (ENOSYS)" in proc.stderr
