"""`fastka serve` driven by real clients: curl, ab, wrk, http.client and raw sockets.

The server runs as a subprocess on both backends; client binaries that are missing skip
their test with the reason (CI installs curl, wrk and apache2-utils).
"""
from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import rss_kib
from repo import ROOT

pytest.importorskip("httptools", reason="fastka serve needs the serve extra (httptools)")


class Server:
    def __init__(self, backend: str, *flags: str) -> None:
        self.out: "str | None" = None
        self.err = ""
        cmd = [sys.executable, "-m", "fastka.cli", "serve", "--port", "0", "--backend", backend, *flags]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"listening on http://127\.0\.0\.1:(\d+) ", line)
        if not m:
            self.stop()
            raise AssertionError(f"unexpected first line {line!r}; stderr: {self.proc.stderr.read()}")
        self.port = int(m.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def status(self) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/status")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def stop(self) -> str:
        """SIGTERM, wait; returns stdout (stderr is kept in ``.err``)."""
        if self.out is not None:
            return self.out
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.out, self.err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.out, self.err = self.proc.communicate()
        return self.out


def need_backend(name: str) -> None:
    """Skip where the compiled backend is not built (fail where FASTKA_REQUIRE_EXTENSION is set)."""
    if name == "c":
        try:
            importlib.import_module("fastka._manager_c")
        except ImportError as exc:
            if os.environ.get("FASTKA_REQUIRE_EXTENSION"):
                pytest.fail(f"compiled backend missing but FASTKA_REQUIRE_EXTENSION is set: {exc}")
            pytest.skip(f"compiled backend not built: {exc}")


@pytest.fixture(params=("c", "python"))
def serve(request):
    """``serve(*flags)``: a server of its own for the test, stopped afterwards."""
    need_backend(request.param)
    servers = []

    def start(*flags: str) -> Server:
        s = Server(request.param, *flags)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="module", params=("c", "python"))
def shared_server(request):
    """A server with the default flags that the tests whose answers do not depend on what
    came before share (one per backend and module; the tests that count use ``serve``)."""
    need_backend(request.param)
    s = Server(request.param)
    yield s
    s.stop()


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (apt-get install curl wrk apache2-utils)")
    return path


def run_tool(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run for a client binary (curl, ab, wrk, ss, prlimit), without LD_PRELOAD:
    tools/sanitize preloads the ASan runtime for the Python processes (the server needs it),
    and an uninstrumented curl with that runtime preloaded deadlocks on glibc's setlocale
    lock at startup before it sends anything."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return subprocess.run(cmd, env=env, **kwargs)


def read_until_eof(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def responses(data: bytes) -> list:
    """Split raw responses (all with Content-Length bodies); returns [(head, body)]."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        n = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        out.append((head, rest[:n]))
        data = rest[n:]
    return out


def test_curl_reuses_the_connection(serve):
    curl = need("curl")
    s = serve()
    r = run_tool([curl, "-sv", "--write-out", "connects=%{num_connects}\\n", f"{s.url}/", f"{s.url}/status"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert re.search(r"Re-using existing connection|Reusing existing", r.stderr), r.stderr
    assert r.stdout.count("connects=1") == 1 and r.stdout.count("connects=0") == 1, r.stdout
    assert "Hello from fastka" in r.stdout
    assert s.status()["accepted"] == 2  # curl's one, plus the status query


def test_ab_keepalive(serve):
    ab = need("ab")
    s = serve()
    r = run_tool([ab, "-k", "-n", "2000", "-c", "20", f"{s.url}/"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert re.search(r"Failed requests:\s+0\b", r.stdout), r.stdout
    assert re.search(r"Keep-Alive requests:\s+2000\b", r.stdout), r.stdout
    st = s.status()
    assert st["requests"] == 2001 and st["accepted"] <= 21


def test_wrk_short_run(serve):
    wrk = need("wrk")
    s = serve()
    r = run_tool([wrk, "-t", "2", "-c", "50", "-d", "1s", f"{s.url}/"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    m = re.search(r"(\d+) requests in", r.stdout)
    assert m and int(m.group(1)) > 0, r.stdout
    assert "Socket errors" not in r.stdout and "Non-2xx" not in r.stdout, r.stdout


def test_http10_keepalive_with_http_client(serve):
    s = serve()

    class HTTP10(http.client.HTTPConnection):
        _http_vsn = 10
        _http_vsn_str = "HTTP/1.0"

    conn = HTTP10("127.0.0.1", s.port, timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", "/", headers={"Connection": "keep-alive"})
            resp = conn.getresponse()
            assert resp.read() == b"Hello from fastka\n"
            assert resp.getheader("Connection") == "keep-alive"
            assert resp.getheader("Keep-Alive", "").startswith("timeout=4, max=")
            assert not resp.will_close
        conn.request("GET", "/")  # HTTP/1.0 without keep-alive: the server closes
        resp = conn.getresponse()
        assert resp.getheader("Connection") == "close" and resp.will_close
        resp.read()
    finally:
        conn.close()
    st = s.status()
    assert st["accepted"] == 2 and st["requests"] == 5


def test_http11_connection_close(shared_server):
    s = shared_server
    with s.connect() as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        (head, body), = responses(read_until_eof(c))
    assert b"Connection: close" in head and b"Keep-Alive" not in head and body == b"Hello from fastka\n"


def test_pipelining_in_order(serve):
    s = serve()
    reqs = b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
    reqs += b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with s.connect() as c:
        c.sendall(reqs)
        data = read_until_eof(c)
    # HEAD has a Content-Length but no body: split by hand
    heads = data.split(b"HTTP/1.1 ")[1:]
    assert len(heads) == 7
    assert all(h.startswith(b"200 OK") for h in heads)
    maxes = [int(m) for m in re.findall(rb"max=(\d+)", data)]
    assert maxes == [999, 998, 997, 996, 995, 994]
    assert json.loads(heads[-1].split(b"\r\n\r\n", 1)[1])["requests"] == 7


def test_max_requests_closes_on_the_last(serve):
    s = serve("--max-requests", "3")
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    try:
        seen = []
        for _ in range(3):
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            seen.append((resp.getheader("Connection"), resp.getheader("Keep-Alive")))
        assert seen == [("keep-alive", "timeout=4, max=2"), ("keep-alive", "timeout=4, max=1"), ("close", None)]
        assert conn.sock is None  # http.client closed it on Connection: close
    finally:
        conn.close()
    with s.connect() as c:  # and the server really closes: EOF after the third answer
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4)
        assert len(responses(read_until_eof(c))) == 3
    assert s.status()["closes"].get("max_requests") == 2


def test_idle_close_after_timeout(serve):
    s = serve("--keepalive-timeout", "0.3")
    with s.connect() as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"Hello from fastka\n" not in got:
            got += c.recv(4096)
        t0 = time.monotonic()
        assert c.recv(4096) == b""  # a FIN, not a reset
        waited = time.monotonic() - t0
    assert 0.27 <= waited <= 0.8, waited
    assert s.status()["closes"].get("IDLE") == 1


def trickle_until_closed(c: socket.socket, data: bytes, every: float, limit: float = 4.0) -> "float | None":
    """Send ``data`` every ``every`` seconds until the server closes the connection (a FIN,
    or a reset for what crossed it); the seconds that took, None if it did not within ``limit``."""
    c.settimeout(every)
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        try:
            c.sendall(data)
            if c.recv(4096) == b"":
                return time.monotonic() - t0
        except socket.timeout:
            pass
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - t0
    return None


def test_slowloris_dropped(serve):
    s = serve("--keepalive-timeout", "0.4")
    with s.connect() as c:
        c.sendall(b"GET / HTTP/1.1\r\n")
        closed_after = trickle_until_closed(c, b"X", 0.05)  # a header byte every 0.05 s would keep an idle clock alive
    assert closed_after is not None and closed_after < 1.4, closed_after
    assert s.status()["closes"].get("request_timeout") == 1


def test_oversized_headers_431(serve):
    s = serve("--max-header-size", "1024")
    with s.connect() as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n")
        data = read_until_eof(c)
    assert data.startswith(b"HTTP/1.1 431 ") and b"Connection: close" in data
    assert s.status()["closes"].get("header_too_large") == 1


def test_bad_request_400(shared_server):
    s = shared_server
    with s.connect() as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nthis is not http\r\n\r\n")
        data = read_until_eof(c)
    (h1, b1), (h2, b2) = responses(data)
    assert h1.startswith(b"HTTP/1.1 200 ") and h2.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in h2


def test_status_counts(serve):
    s = serve()
    c1 = s.connect()
    c2 = s.connect()
    try:
        c1.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c1.recv(4096).startswith(b"HTTP/1.1 200")
        c2.close()
        time.sleep(0.2)
        st = s.status()
    finally:
        c1.close()
    assert st["open_connections"] == 2  # c1 and the status query
    assert st["accepted"] == 3 and st["requests"] == 2
    assert st["closes"] == {"PEER_CLOSED": 1}


def test_sigterm_graceful(serve):
    s = serve()
    idle = s.connect()
    busy = s.connect()
    try:
        busy.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert busy.recv(4096).startswith(b"HTTP/1.1 200")
        s.proc.send_signal(signal.SIGTERM)
        assert idle.recv(4096) == b""  # FIN, not reset
        assert busy.recv(4096) == b""
        assert s.proc.wait(timeout=10) == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", s.port), timeout=2).close()
    finally:
        idle.close()
        busy.close()
    assert "stopped after 1 requests" in s.stop()


def test_tcp_keepalive_on_listener(serve):
    """--tcp-keepalive is set once on the listener; accepted connections inherit it (ss shows the timer)."""
    ss = need("ss")
    s = serve("--tcp-keepalive", "30:7:4")
    with s.connect() as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.recv(4096).startswith(b"HTTP/1.1 200")
        out = run_tool([ss, "-tnoH", "state", "established", f"( sport = :{s.port} )"],
                             capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"timer:\(keepalive,(\d+)sec", out)
    assert m and 25 <= int(m.group(1)) <= 30, out


@pytest.mark.parametrize("flag", ["0:1:2", "1:2", "a:b:c", "1:1:200"])
def test_bad_tcp_keepalive_flag(cli_main, flag):
    status, _, stderr = cli_main("serve", "--tcp-keepalive", flag)
    assert status == 2
    err = stderr.strip().splitlines()[-1]
    assert err.startswith("fastka serve: error: argument --tcp-keepalive:") and flag in err, stderr


def test_out_of_fds_pauses_accept_logs_once_and_recovers(serve):
    """At the open-file limit the server pauses accept() instead of spinning, logs the
    failures once per period (one line for the many failed accepts of 1.3 s), then serves
    again."""
    prlimit = need("prlimit")
    s = serve()
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    run_tool([prlimit, f"--pid={s.proc.pid}", f"--nofile=24:{hard}"], check=True, timeout=30)

    def cpu_ticks() -> int:
        with open(f"/proc/{s.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    extra = [s.connect() for _ in range(30)]  # more than 24 fds: accept() fails with EMFILE
    try:
        time.sleep(0.3)
        t0 = cpu_ticks()
        time.sleep(1.0)
        ticks = cpu_ticks() - t0
        assert ticks < os.sysconf("SC_CLK_TCK") * 0.5, f"server used {ticks} clock ticks in 1 s while out of fds"
    finally:
        for c in extra:
            c.close()
    run_tool([prlimit, f"--pid={s.proc.pid}", f"--nofile={hard}:{hard}"], check=True, timeout=30)
    st = s.status()  # queued behind the closed connections until accept() resumes
    assert st["requests"] == 1 and st["accepted"] >= 2
    s.stop()
    lines = [line for line in s.err.splitlines() if "accept" in line]
    assert len(lines) == 1, lines
    assert "Too many open files" in lines[0] and "connections open" in lines[0]


# -- hostile use ------------------------------------------------------------------------------


REQ = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
SANITIZER = bool(os.environ.get("FASTKA_SANITIZER"))  # set by tools/sanitize
OK = b"HTTP/1.1 200 OK"


def read_responses(c: socket.socket, want: int) -> int:
    """Read until ``want`` 200 responses arrived (or EOF); returns how many did."""
    got, tail = 0, b""
    while got < want:
        chunk = c.recv(1 << 20)
        if not chunk:
            break
        data = tail + chunk
        got += data.count(OK)
        tail = data[-(len(OK) - 1):]
    return got


def test_pipelining_costs_no_timer_per_request(serve):
    """Timers are O(connections): 40,000 pipelined requests on one connection with a long
    keep-alive timeout leave the server's memory where the first 4,000 put it."""
    s = serve("--keepalive-timeout", "60", "--max-requests", "1000000")
    batch = REQ * 1000
    with s.connect() as c:

        def round_trip(batches: int) -> None:
            for _ in range(batches):
                c.sendall(batch)
                assert read_responses(c, 1000) == 1000

        round_trip(4)
        before = rss_kib(s.proc.pid)
        round_trip(36)
        grown = rss_kib(s.proc.pid) - before
        st = s.status()
    if not SANITIZER:  # ASan's quarantine keeps freed blocks: RSS grows under it
        assert grown < 1024, f"server RSS grew by {grown} KiB over 36,000 requests"
    assert st["requests"] >= 40000
    assert st["request_clocks"] <= 2  # at most one per connection (this one, the status query)


def test_client_that_never_reads_is_not_read(serve):
    """Output backpressure: a client that pipelines and never reads stops being read once
    its unsent output passes the bound; memory stays flat, reading resumes as it drains,
    and memory comes back after the connection closes."""
    s = serve("--keepalive-timeout", "30", "--max-requests", "1000000")
    base = rss_kib(s.proc.pid)
    c = s.connect()
    try:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.setblocking(False)
        flood = memoryview(REQ * (8 * 1024 * 1024 // len(REQ)))
        sent, stuck_since = 0, None
        deadline = time.monotonic() + 10
        while sent < len(flood) and time.monotonic() < deadline:
            try:
                sent += c.send(flood[sent:sent + 65536])
                stuck_since = None
            except BlockingIOError:
                stuck_since = stuck_since or time.monotonic()
                if time.monotonic() - stuck_since > 0.3:
                    break  # the server stopped reading
                time.sleep(0.01)
        peak = rss_kib(s.proc.pid) - base
        assert sent < len(flood), "the server read everything the client sent"
        if not SANITIZER:
            assert peak < 8 * 1024, f"server RSS grew by {peak} KiB while the client did not read"
        st = s.status()
        assert 0 < st["unsent_bytes"] < 1024 * 1024, st
        # drain: every request sent so far is answered, in order, once the client reads
        c.setblocking(True)
        c.settimeout(10)
        c.shutdown(socket.SHUT_WR)
        want = sent // len(REQ)
        assert read_responses(c, want + 1) == want  # then the server's FIN
    finally:
        c.close()
    st = wait_status(s, lambda st: st["open_connections"] == 1)
    assert st["unsent_bytes"] == 0 and st["open_connections"] == 1, st


def test_bytes_that_never_make_a_request_do_not_keep_a_connection(serve):
    """A CRLF every 0.1 s starts the request clock; only a complete request would stop it."""
    s = serve("--keepalive-timeout", "0.4")
    with s.connect() as c:
        c.sendall(REQ)
        assert c.recv(4096).startswith(b"HTTP/1.1 200")
        closed_after = trickle_until_closed(c, b"\r\n", 0.1)
    assert closed_after is not None and closed_after < 1.2, closed_after
    assert s.status()["closes"].get("request_timeout") == 1


def test_a_complete_request_after_crlf_is_served(shared_server):
    s = shared_server
    with s.connect() as c:
        c.sendall(b"\r\n" + REQ)
        assert c.recv(4096).startswith(b"HTTP/1.1 200")
        c.sendall(REQ)
        assert c.recv(4096).startswith(b"HTTP/1.1 200")


def _send_bytewise(c: socket.socket, data: bytes) -> None:
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(data)):
        c.sendall(data[i:i + 1])
        if i % 8 == 0:
            time.sleep(0.0005)


@pytest.mark.parametrize("size, limit, status", [(501, None, b"200"), (300, 300, b"200"), (301, 300, b"431")])
def test_header_size_counts_bytes_not_fragments(serve, size, limit, status):
    """The same request gets the same answer whole or one byte at a time."""
    s = serve(*(["--max-header-size", str(limit)] if limit else []))
    url = b"/" + b"a" * (size - 1)
    req = b"GET " + url + b" HTTP/1.1\r\n\r\n"
    for whole in (True, False):
        with s.connect() as c:
            if whole:
                c.sendall(req)
            else:
                _send_bytewise(c, req)
            got = c.recv(4096)
        assert got.startswith(b"HTTP/1.1 " + status), (whole, got[:40])


def test_unfinished_header_line_is_bounded(shared_server):
    """A header line that never ends is cut off at --max-header-size plus one read: 431."""
    s = shared_server
    with s.connect() as c:
        c.sendall(b"GET / HTTP/1.1\r\nX-Long: ")
        try:
            c.sendall(b"a" * 200_000)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = read_until_eof(c)
    assert data.startswith(b"HTTP/1.1 431 ")


def test_expect_100_continue(shared_server):
    s = shared_server
    with s.connect() as c:
        c.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        assert c.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        c.sendall(b"hello")
        assert c.recv(4096).startswith(b"HTTP/1.1 405 ")
    with s.connect() as c:  # HTTP/1.0 clients never get a 1xx
        c.sendall(b"POST /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello")
        assert read_until_eof(c).startswith(b"HTTP/1.1 405 ")


@pytest.mark.parametrize("request_line", [b"GET /\r\n\r\n", b"GET / HTTP/0.9\r\n\r\n", b"GET / HTTP/2.0\r\n\r\n"])
def test_no_http1_version_is_400_and_closed(serve, request_line):
    s = serve()
    with s.connect() as c:
        c.sendall(request_line)
        data = read_until_eof(c)
    assert data.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in data
    assert s.status()["closes"].get("bad_request") == 1


@pytest.mark.parametrize("flag, value", [
    ("--keepalive-timeout", "2e9"), ("--keepalive-timeout", "nan"), ("--keepalive-timeout", "inf"),
    ("--keepalive-timeout", "0"), ("--keepalive-timeout", "x"), ("--max-requests", "0"),
    ("--max-requests", "1e3"), ("--max-requests", "99999999999999999999"), ("--max-header-size", "10"),
    ("--port", "70000"), ("--port", "-1"), ("--workers", "0"), ("--workers", "100000"), ("--workers", "two"),
    ("--jitter", "0.51"), ("--jitter", "-0.1"), ("--jitter", "nan"), ("--jitter", "x"),
    ("--keepalive-margin", "-1"), ("--keepalive-margin", "inf"),
])
def test_bad_numeric_option_is_an_argparse_error(cli_main, flag, value):
    status, _, stderr = cli_main("serve", flag, value)
    assert status == 2, stderr
    err = stderr.strip().splitlines()[-1]
    assert err.startswith(f"fastka serve: error: argument {flag}:") and value in err, stderr


# -- --workers --------------------------------------------------------------------------------


def wait_status(s: Server, done, timeout: float = 10.0) -> dict:
    """The server's /status once ``done(status)`` holds (other workers publish their
    figures once a second); fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        st = s.status()
        if done(st):
            return st
        assert time.monotonic() < deadline, f"/status never met the condition: {st}"
        time.sleep(0.05)


def children(pid: int) -> set:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


def test_workers_share_the_port_and_status_lists_each(serve):
    s = serve("--workers", "2")
    conns = [s.connect() for _ in range(24)]
    queries = 0

    def all_counted(st: dict) -> bool:  # the 24 requests and every status query so far
        nonlocal queries
        queries += 1
        return sum(r["requests"] for r in st["workers"]) == 24 + queries

    try:
        for c in conns:
            c.sendall(REQ)
            assert c.recv(4096).startswith(b"HTTP/1.1 200")
        rows = wait_status(s, all_counted)["workers"]
    finally:
        for c in conns:
            c.close()
    assert [r["worker"] for r in rows] == [0, 1]
    assert {r["pid"] for r in rows} == children(s.proc.pid)
    assert all(r["accepted"] > 0 for r in rows), rows  # SO_REUSEPORT spreads 24 connections


def test_crashed_worker_is_restarted(serve):
    s = serve("--workers", "2")
    rows = wait_status(s, lambda st: {r["pid"] for r in st["workers"]} == children(s.proc.pid))["workers"]
    victim = rows[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    # Wait until the supervisor has reaped it: only then are its listening socket and its
    # queue gone (a leader is a zombie while its other threads, such as the fallback's
    # alarm thread, still hold the fds; a connection queued there meanwhile is reset).
    while os.path.exists(f"/proc/{victim}"):
        time.sleep(0.01)
    rows = wait_status(s, lambda st: st["workers"][0]["pid"] != victim and st["workers"][0]["restarts"]
                       and st["workers"][0]["pid"] in children(s.proc.pid))["workers"]
    assert rows[0]["pid"] != victim and rows[0]["restarts"] == 1 and rows[1]["restarts"] == 0, rows
    with s.connect() as c:
        c.sendall(REQ)
        assert c.recv(4096).startswith(b"HTTP/1.1 200")
    s.stop()
    assert "worker 0" in s.err and "signal 9" in s.err


def test_workers_stop_gracefully_on_sigterm(serve):
    s = serve("--workers", "2")
    conns = [s.connect() for _ in range(16)]
    try:
        for c in conns[:8]:
            c.sendall(REQ)
            assert c.recv(4096).startswith(b"HTTP/1.1 200")
        pids = children(s.proc.pid)
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        for c in conns:
            assert c.recv(4096) == b""  # a FIN from whichever worker held it
        assert s.proc.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 2.0
    finally:
        for c in conns:
            c.close()
    assert not any(os.path.exists(f"/proc/{p}/status") and "zombie" not in open(f"/proc/{p}/status").read() for p in pids)
    assert "stopped after 8 requests" in s.stop()


# -- the compiled hot path (plain GET/HEAD answered in C) ---------------------------------------

PLAIN_READS = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD /a?b=c&d=%20 HTTP/1.1\r\nHost: x\r\nUser-Agent: t\tab\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n" * 3,
    b"GET /" + b"a" * 150 + b" HTTP/1.1\r\nX-Pad: " + b"b" * 130 + b"\r\n\r\n",  # 151 + 5 + 130 + 4 = 290 <= 300
    b"GET /" + b"a" * 150 + b" HTTP/1.1\r\nX-Pad: " + b"b" * 141 + b"\r\n\r\n",  # 301 > 300: 431 both ways
    b"GET /statusx HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Trail: v \r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
]


def _without_date(data: bytes) -> bytes:
    return re.sub(rb"Date: [^\r]*\r\n", b"", data)


def test_hot_path_answers_as_the_general_path():
    """The same reads give the same bytes (apart from Date) with the compiled hot path
    (backend c) and without it (backend python); the hot path did answer some."""
    if importlib.util.find_spec("fastka.cli.serve._fastpath") is None or importlib.util.find_spec("fastka._manager_c") is None:
        pytest.skip("the compiled backend is not built")
    got = {}
    for backend in ("c", "python"):
        s = Server(backend, "--max-header-size", "300", "--max-requests", "7")
        try:
            answers = []
            with s.connect() as c:
                for data in PLAIN_READS[:4]:
                    c.sendall(data)
                    want = data.count(b"HTTP/1.1\r\n")
                    buf = b""
                    while buf.count(b"HTTP/1.1 ") < want or not (buf.endswith(b"\r\n\r\n") or buf.endswith(b"fastka\n")):
                        buf += c.recv(65536)
                    answers.append(_without_date(buf))
                c.sendall(PLAIN_READS[2])  # requests 7..9 of at most 7: the 7th closes
                answers.append(_without_date(read_until_eof(c)))
            for data in PLAIN_READS[4:]:
                with s.connect() as c:
                    c.sendall(data + b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                    answers.append(_without_date(read_until_eof(c)))
            hot = s.status()["hot_path_requests"]
        finally:
            s.stop()
        got[backend] = (answers, hot)
    assert got["c"][0] == got["python"][0]
    assert got["python"][1] == 0 and got["c"][1] >= 6


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: x\r\n",  # incomplete
    b"get / HTTP/1.1\r\n\r\n", b"POST / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.0\r\n\r\n", b"GET /\r\n\r\n",
    b"GET * HTTP/1.1\r\n\r\n", b"GET http://x/ HTTP/1.1\r\n\r\n", b"GET /a\"b HTTP/1.1\r\n\r\n",
    b"GET /other HTTP/1.1\r\n\r\n", b"GET /other?x HTTP/1.1\r\n\r\n",  # the caller's other path
    b"GET / HTTP/1.1\r\nProxy-Connection: close\r\n\r\n",
    b"GET / HTTP/1.1\nHost: x\n\n", b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", b"GET / HTTP/1.1\r\nX: \xe9\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nexpect: 100-continue\r\n\r\n", b"GET / HTTP/1.1\r\nUPGRADE: h2c\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", b"\r\nGET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n",  # a complete request, then a partial one
    b"GET / HTTP/1.1\r\nX: v\t\r\n\r\n",
])
def test_hot_path_leaves_everything_else_to_the_general_parser(data):
    fastpath = pytest.importorskip("fastka.cli.serve._fastpath", reason="the compiled fast path is not built")
    assert fastpath.answer(data, 8192, 100, b"H", b"T", b"B", b"/other") is None


def test_hot_path_knows_no_route():
    """Only the path the caller names is left to the general path: /status is not special
    to the C code, and a longer path or one sharing a prefix is plain."""
    fastpath = pytest.importorskip("fastka.cli.serve._fastpath", reason="the compiled fast path is not built")
    for target in (b"/status", b"/other/x", b"/othe", b"/others?q", b"/x?/other"):
        assert fastpath.answer(b"GET " + target + b" HTTP/1.1\r\n\r\n", 100, 5, b"H", b"T", b"B", b"/other") == (1, b"H5TB")
    assert fastpath.answer(b"GET /other HTTP/1.1\r\n\r\n", 100, 5, b"H", b"T", b"B", b"") == (1, b"H5TB")


def test_hot_path_limits():
    serve_c = pytest.importorskip("fastka.cli.serve._fastpath", reason="the compiled fast path is not built")
    one = b"GET /ab HTTP/1.1\r\nHost: x\r\n\r\n"  # head: 3 + (4 + 1 + 4) = 12 bytes
    assert serve_c.answer(one, 12, 5, b"H", b"T", b"B", b"") == (1, b"H5TB")
    assert serve_c.answer(one, 11, 5, b"H", b"T", b"B", b"") is None
    assert serve_c.answer(b"HEAD / HTTP/1.1\r\n\r\n" + one, 100, 10, b"H", b"T", b"B", b"") == (2, b"H10TH9TB")
    assert serve_c.answer(one * 3, 100, 3, b"H", b"T", b"", b"") == (3, b"H3TH2TH1T")
    assert serve_c.answer(one * 3, 100, 2, b"H", b"T", b"", b"") is None  # the 3rd would be max=0: closing
    assert serve_c.answer(one, 100, 0, b"H", b"T", b"", b"") is None
    assert serve_c.answer(b"GET / HTTP/1.1\r\n\r\n" * 513, 100, 10**6, b"", b"", b"", b"") is None  # over one batch
    assert serve_c.answer(b"", 100, 5, b"H", b"T", b"B", b"") is None


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" not in f.read()
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or before the read
        return False


def test_workers_end_when_the_supervisor_is_killed(serve):
    """SIGKILL to the supervisor (no chance to stop anything): its workers notice
    (PR_SET_PDEATHSIG), close their connections and the listener, and exit."""
    s = serve("--workers", "2")
    pids = children(s.proc.pid)
    assert len(pids) == 2
    try:
        with s.connect() as c:
            c.sendall(REQ)
            assert c.recv(4096).startswith(OK)
            s.proc.kill()
            s.proc.wait(timeout=10)
            assert c.recv(4096) == b""  # the worker's FIN
        deadline = time.monotonic() + 5
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(p) for p in pids), pids
        with socket.socket() as probe:  # nobody listens on the port any more
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", s.port))
            probe.listen(1)
    finally:
        for p in pids:  # orphans would also hold the fixture's pipes open
            if alive(p):
                os.kill(p, signal.SIGKILL)


def test_request_flood_does_not_delay_idle_close(serve):
    """While the server works through a flood of pipelined requests (seconds of parsing in
    all), an idle connection still gets its FIN within --keepalive-timeout + 1 s: the loop
    polls the manager, which closes what is due, after at most a few milliseconds of work."""
    timeout = 0.5
    s = serve("--keepalive-timeout", str(timeout))
    load = b"GET / HTTP/1.1\r\n\r\n" * 900  # one read (16,200 bytes) of more requests than the hot path takes
    flood = [s.connect() for _ in range(600)]
    try:
        with s.connect() as idle:
            idle.sendall(REQ)
            assert idle.recv(4096).startswith(OK)
            t0 = time.monotonic()
            time.sleep(timeout * 0.8)  # the flood lands just before the FIN is due
            for c in flood:
                c.sendall(load)
            idle.settimeout(timeout + 10)
            assert idle.recv(4096) == b""
            late = time.monotonic() - t0 - timeout
        assert late < 1.0, f"FIN {late:.2f} s past the keep-alive timeout"
    finally:
        for c in flood:
            c.close()


# -- pooled state, answers that never came, clocks, ports, signals --------------------------


BROWSER_GET = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\n"


def test_proxy_connection_close_does_not_poison_other_clients(shared_server):
    """A request with Proxy-Connection: close leaves its parser refusing further input: the
    connection closes after it and the parser is never pooled, so 200 ordinary requests from
    other clients afterwards are all answered 200."""
    s = shared_server
    for _ in range(100):
        with s.connect() as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nProxy-Connection: close\r\n\r\n")
            got = read_until_eof(c)  # the server closes after it
            assert got.startswith(OK) and b"Connection: close\r\n" in got
    statuses = []
    for _ in range(200):
        with s.connect() as c:
            c.sendall(BROWSER_GET)
            statuses.append(c.recv(4096).split(b"\r\n", 1)[0])
    assert statuses == [OK] * 200


@pytest.mark.parametrize("last", [
    b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
])
def test_upgrade_and_connect_are_answered_with_what_came_before(serve, last):
    """An Upgrade or CONNECT request and the requests pipelined before it are answered at
    once (no protocol switch: the connection closes after it), not left to time out."""
    s = serve("--keepalive-timeout", "60")
    with s.connect() as c:
        c.sendall(BROWSER_GET + BROWSER_GET + last)
        got = responses(read_until_eof(c))  # the socket's 10 s timeout fails a wait of 60 s
    assert [h.split(b"\r\n", 1)[0] for h, _ in got[:2]] == [OK, OK]
    assert len(got) == 3 and b"Connection: close" in got[2][0]
    assert got[2][0].startswith(b"HTTP/1.1 405 " if last.startswith(b"CONNECT") else OK)


def test_pipelining_client_whose_sends_end_mid_request_is_not_timed_out(serve):
    """A client sending a request every 0.05 s, each send ending mid-request, keeps its
    connection for 24 requests (1.2 s) under a 0.4 s request timeout: every read that
    completes a request restarts the clock of the one it began."""
    s = serve("--keepalive-timeout", "0.4")
    req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    half = len(req) // 2
    with s.connect() as c:
        c.sendall(req[:half])
        for _ in range(23):
            time.sleep(0.05)
            c.sendall(req[half:] + req[:half])  # ends one request, begins the next
        time.sleep(0.05)
        c.sendall(req[half:] + b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        got = responses(read_until_eof(c))
    assert len(got) == 25 and all(h.startswith(OK) for h, _ in got)


def test_workers_refuse_a_port_another_reuseport_server_holds():
    """--workers 2 fails like --workers 1 when another server (with SO_REUSEPORT) listens
    on the port, instead of sharing its traffic."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen(8)
        port = other.getsockname()[1]
        for workers in ("1", "2"):
            r = subprocess.run([sys.executable, "-m", "fastka.cli", "serve", "--port", str(port), "--workers", workers],
                               cwd=ROOT, capture_output=True, text=True, timeout=30)
            assert r.returncode == 1 and "Address already in use" in r.stderr, (workers, r.stderr)


SPAWN_AND_TERM = r"""
import os, signal, sys, time
from fastka import _backends
from fastka.cli.serve.stats import Stats
from fastka.cli.serve.supervisor import Supervisor

options = dict(keepalive_timeout=5.0, max_requests=100, max_header_size=8192, tcp_keepalive=None,
               backend=_backends.load(sys.argv[1]))
sup = Supervisor("127.0.0.1", 0, 1, Stats(1), options)
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):  # as Supervisor.run
    signal.signal(sig, lambda *_: None)
started = []
for _ in range(int(sys.argv[2])):  # each new worker gets SIGTERM the moment fork() returns
    pid = sup._spawn(0)
    os.kill(pid, signal.SIGTERM)
    started.append(pid)
deadline = time.monotonic() + 10
left = set(started)
while left and time.monotonic() < deadline:
    for pid in list(left):
        if os.waitpid(pid, os.WNOHANG)[0]:
            left.discard(pid)
    time.sleep(0.02)
for pid in left:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    sup.pids.pop(pid, None)
for pid in started:
    sup.pids.pop(pid, None)
sup._terminate_all()
print(len(left))
"""


@pytest.mark.parametrize("backend", ["c", "python"])
def test_worker_signalled_right_after_fork_ends(backend):
    """A SIGTERM that reaches a worker before it has set up its own handling ends it (the
    signals are blocked around fork and reset in the child before they are unblocked),
    instead of being swallowed by a copy of the supervisor's handler: 20 workers, each
    signalled the moment fork() returns, all end."""
    if backend == "c" and importlib.util.find_spec("fastka._manager_c") is None:
        pytest.skip("the compiled backend is not built")
    r = subprocess.run([sys.executable, "-c", SPAWN_AND_TERM, backend, "20"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0", f"{r.stdout.strip()} of 20 workers ignored SIGTERM; {r.stderr[-2000:]}"


def test_huge_keepalive_timeout_survives_an_idle_connection(serve):
    """--keepalive-timeout 1e9 (the largest allowed): the loop's wait is bounded, so an idle
    connection does not end the server."""
    s = serve("--keepalive-timeout", "1e9")
    with s.connect() as idle:
        idle.sendall(REQ)
        assert idle.recv(4096).startswith(OK)
        time.sleep(1.2)  # the loop now waits with that connection idle (past the 1 s figures refresh)
        with s.connect() as c:
            c.sendall(REQ)
            assert c.recv(4096).startswith(OK)
        assert s.proc.poll() is None


@pytest.mark.parametrize("flags, hint", [
    ((), b"Keep-Alive: timeout=4, max=99"),  # 5 s, margin 1 s
    (("--keepalive-timeout", "0.5"), b"Keep-Alive: max=99"),
    (("--keepalive-timeout", "1.6"), b"Keep-Alive: max=99"),
    (("--keepalive-timeout", "1.6", "--keepalive-margin", "0"), b"Keep-Alive: timeout=1, max=99"),
    (("--keepalive-timeout", "2.999", "--keepalive-margin", "0.5"), b"Keep-Alive: timeout=2, max=99"),
    (("--keepalive-timeout", "75", "--keepalive-margin", "0"), b"Keep-Alive: timeout=75, max=99"),
])
def test_keepalive_hint_is_never_longer_than_the_real_close(serve, flags, hint):
    """timeout= is the keep-alive timeout minus the margin, rounded down; under 1 s no
    timeout= is sent. The same on the fast path (plain GET) and the general path."""
    s = serve("--max-requests", "100", *flags)
    for request in (REQ, BROWSER_GET):
        with s.connect() as c:
            c.sendall(request)
            assert hint + b"\r\n" in c.recv(4096)


def test_jitter_spreads_max_requests_and_the_last_answer_says_close(serve):
    """--jitter 0.5 with --max-requests 10: each connection's limit is drawn within 5..15;
    the last answer before the server's close carries Connection: close and max counts down
    to 1 before it."""
    s = serve("--max-requests", "10", "--jitter", "0.5")
    counts = []
    for _ in range(20):
        with s.connect() as c:
            c.sendall(REQ * 20)
            got = responses(read_until_eof(c))
        heads = [h for h, _ in got]
        assert all(b"Connection: keep-alive" in h for h in heads[:-1]) and b"Connection: close" in heads[-1]
        assert [int(m) for m in re.findall(rb"max=(\d+)", b"".join(heads))] == list(range(len(got) - 1, 0, -1))
        counts.append(len(got))
    assert all(5 <= n <= 15 for n in counts) and len(set(counts)) > 1, counts


# -- fair service ---------------------------------------------------------------------------


def _answers(sock: socket.socket, n: int) -> int:
    """Read until ``n`` responses (plain GET answers) have arrived; returns how many did
    before the peer closed or the socket's timeout."""
    got = b""
    count = 0
    while count < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
        count = got.count(OK)
    return count


@pytest.mark.parametrize("backend_name", ["c", "python"])
def test_every_ready_connection_is_served_in_turn(backend_name, monkeypatch):
    """Heavy clients that never stop sending pipelined requests (and read their answers
    as fast as they can) next to light ones sending one request at a time, under a budget
    spent by one connection per loop iteration (TICK shrunk to 0.1 ms). The ready queue
    resumes where the last iteration stopped, so the heavy connections that are always
    readable do not keep the light ones waiting: every light client gets its 20 answers
    while the heavy ones are still sending, and every heavy one gets answers too."""
    import threading

    from fastka import _backends
    from fastka.cli.serve import server as server_mod

    try:
        backend = _backends.load(backend_name)
    except _backends.BackendUnavailable as exc:
        pytest.skip(str(exc))
    monkeypatch.setattr(server_mod, "TICK", 1e-4)
    srv = server_mod.Server("127.0.0.1", 0, keepalive_timeout=60.0, max_requests=2**31 - 1, max_header_size=8192,
                            tcp_keepalive=None, backend=backend)
    loop = threading.Thread(target=srv._loop)
    loop.start()
    port = srv.address[1]
    done = threading.Event()
    socks: list = []
    threads: list = []
    try:
        heavy = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(4)]
        light = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(8)]
        socks = heavy + light
        heavy_answers = [0] * len(heavy)
        light_answers = [0] * len(light)

        def send_forever(s: socket.socket) -> None:
            try:
                while not done.is_set():
                    s.sendall(REQ * 500)
            except OSError:
                pass

        def read_forever(i: int) -> None:
            try:
                while not done.is_set():
                    chunk = heavy[i].recv(65536)
                    if not chunk:
                        return
                    heavy_answers[i] += chunk.count(b"fastka\n")
            except OSError:
                pass

        def light_client(i: int) -> None:
            for _ in range(20):
                light[i].sendall(REQ)
                if _answers(light[i], 1) != 1:
                    return
                light_answers[i] += 1

        for i, s in enumerate(heavy):
            threads += [threading.Thread(target=send_forever, args=(s,)), threading.Thread(target=read_forever, args=(i,))]
        for t in threads:
            t.start()
        time.sleep(0.5)  # the heavy connections are readable all the time from now on
        clients = [threading.Thread(target=light_client, args=(i,)) for i in range(len(light))]
        for t in clients:
            t.start()
        for t in clients:
            t.join(60)
        assert light_answers == [20] * len(light)
        assert all(heavy_answers), heavy_answers
    finally:
        done.set()
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            t.join(30)
        for s in socks:
            s.close()
        srv._wake_w.send(b"x")  # as a signal: stop
        loop.join(60)
        srv.close()


def test_without_httptools_says_what_to_install():
    code = "import sys; sys.modules['httptools'] = None; from fastka.cli import main; sys.exit(main(['serve']))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stderr.strip() == "fastka serve: error: fastka serve needs httptools: pip install 'fastka[serve]'", r.stderr
