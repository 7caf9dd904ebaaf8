"""The `fastka` command line: help, --version, python -m fastka, info, demo on each backend,
FASTKA_NO_EXTENSIONS, bad flags (one argparse error line, never a traceback), a closed
stdout pipe (quiet, as a Unix tool)."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

import fastka
from fastka import _backends, cli
from fastka._config import MIDDLEBOX_IDLE_TIMEOUTS
from repo import ROOT

NO_EXT = {_backends.ENV_NO_EXTENSIONS: "1"}


def fastka_cmd(*args: str, env: dict = None, timeout: float = 120, module: str = "fastka") -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def need(name: str) -> None:
    """Skip (or fail, where FASTKA_REQUIRE_EXTENSION is set) when backend ``name`` is missing."""
    chosen, reasons = _backends.available([name])
    if not chosen:
        if os.environ.get("FASTKA_REQUIRE_EXTENSION"):
            pytest.fail(f"{reasons[name]}, but FASTKA_REQUIRE_EXTENSION is set")
        pytest.skip(reasons[name])


@pytest.mark.parametrize("module", ["fastka", "fastka.cli"])
def test_main_help_lists_every_subcommand(module):
    r = fastka_cmd("--help", module=module)
    assert r.returncode == 0 and r.stdout.startswith("usage: fastka ")
    for name in ("info", "demo", "serve", "bench"):
        assert re.search(rf"^\s+{name}\s+\S", r.stdout, re.M), r.stdout


@pytest.mark.parametrize("module", ["fastka", "fastka.cli"])
def test_no_command_prints_the_help(module):
    """`fastka` alone shows what it can do, exactly as `fastka --help` does, with status 0."""
    r = fastka_cmd(module=module)
    assert (r.returncode, r.stderr) == (0, ""), r
    assert r.stdout == fastka_cmd("--help", module=module).stdout


def test_version(cli_main):
    assert cli_main("--version") == (0, f"fastka {fastka.__version__}\n", "")


@pytest.mark.parametrize("cmd,flags", [("info", []), ("demo", ["--connections", "--idle-timeout", "--backend"]),
                                       ("bench", ["--quick", "--sizes", "--repeat", "--json", "--plot"]),
                                       ("serve", ["--port", "--keepalive-timeout", "--max-requests",
                                                  "--tcp-keepalive", "--backend", "--max-header-size"])])
def test_subcommand_help(cli_main, cmd, flags):
    status, out, _ = cli_main(cmd, "--help")
    assert status == 0 and out.startswith(f"usage: fastka {cmd}")
    for f in flags:
        assert f in out


@pytest.mark.parametrize("args,message", [
    (["demo", "--connections", "-5"], "argument --connections: -5 is out of range; allowed: 10.."),
    (["demo", "--connections", "many"], "argument --connections: 'many' is not an integer; allowed: 10.."),
    (["demo", "--connections", "2e9"], "argument --connections: '2e9' is not an integer"),
    (["demo", "--connections", "100000000"], "argument --connections: 100000000 is out of range; allowed: 10.."),
    (["demo", "--idle-timeout", "0"], "argument --idle-timeout: 0 is out of range; allowed: 0.1..60 seconds"),
    (["demo", "--idle-timeout", "2e9"], "argument --idle-timeout: 2e9 is out of range; allowed: 0.1..60 seconds"),
    (["demo", "--idle-timeout", "nan"], "argument --idle-timeout: nan is out of range"),
    (["demo", "--idle-timeout", "inf"], "argument --idle-timeout: inf is out of range"),
    (["demo", "--idle-timeout", "soon"], "argument --idle-timeout: 'soon' is not a number of seconds"),
    (["demo", "--backend", "java"], "argument --backend: invalid choice: 'java'"),
    (["bench", "--sizes", "0"], "argument --sizes: 0 is out of range; allowed: 10.."),
    (["bench", "--sizes", "100,ten"], "argument --sizes: 'ten' is not an integer"),
    (["bench", "--sizes", ","], "argument --sizes: ',' holds no number"),
    (["bench", "--sizes", "10,,20"], "argument --sizes: '10,,20' has an empty item between commas; give N or N,N"),
    (["bench", "--sizes", "10,20,"], "argument --sizes: '10,20,' has an empty item between commas"),
    (["bench", "--sizes", "99999999"], "argument --sizes: 99999999 is out of range; allowed: 10.."),
    (["bench", "--repeat", "-1"], "argument --repeat: -1 is out of range; allowed: 1..1000"),
    (["bench", "--repeat", "2e9"], "argument --repeat: '2e9' is not an integer; allowed: 1..1000"),
    (["bench", "--json", "/nonexistent/dir/bench.json"],
     "argument --json: can't write '/nonexistent/dir/bench.json': no directory '/nonexistent/dir'"),
    (["bench", "--json", "/"], "argument --json: can't write '/': it is a directory"),
    (["bench", "--plot", "/nonexistent/dir/bench.png"],
     "argument --plot: can't write '/nonexistent/dir/bench.png': no directory '/nonexistent/dir'"),
    (["serve", "--port", "-1"], "--port"),
    (["serve", "--port", "70000"], "--port"),
    (["serve", "--keepalive-timeout", "nan"], "--keepalive-timeout"),
    (["serve", "--max-requests", "0"], "--max-requests"),
    (["serve", "--tcp-keepalive", "0:1:2"], "--tcp-keepalive"),
    (["info", "--bogus"], "--bogus"),
    (["nosuchcommand"], "nosuchcommand"),
    (["--bogus"], "COMMAND"),
])
def test_bad_flags_one_line_exit_2(cli_main, args, message):
    status, _, stderr = cli_main(*args)
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    errors = [ln for ln in lines if ": error: " in ln]
    assert len(errors) == 1 and message in errors[0], stderr
    assert lines[-1] == errors[0]


def test_info(cli_main):
    status, out, err = cli_main("info")
    assert status == 0, err
    d = fastka.system_defaults()
    assert f"backend: {fastka.IMPLEMENTATION}" in out
    assert f"idle={d.idle} s, interval={d.interval} s, count={d.count}" in out
    assert f"= {d.detection_time:g} s" in out
    late = [name for name, t in MIDDLEBOX_IDLE_TIMEOUTS.items() if d.idle >= t]
    assert ("warning:" in out) == bool(late)
    for name in late:  # the table of fastka._config, not a copy
        assert name in out
    assert "io_uring" not in out
    assert re.search(r"^open-file limit: \d+", out, re.M)


def test_info_on_the_fallback():
    r = fastka_cmd("info", env=NO_EXT)
    assert r.returncode == 0, r.stderr
    assert "backend: python (pure-Python fallback, forced by FASTKA_NO_EXTENSIONS)" in r.stdout


def _demo_report(out: str, name: str, n: int, timeout_ms: float) -> None:
    """The demo's event table for backend ``name``: every count as planned."""
    part = out.split(f"== backend {name}: {n} connections")[1].split("\n\n")[0]
    tenth, rest = n // 10, n - 3 * (n // 10)
    assert re.search(rf"^RESET\s+{tenth}\s+{tenth}\s", part, re.M), part
    assert re.search(rf"^PEER_CLOSED\s+{tenth}\s+{tenth}\s", part, re.M), part
    m = re.search(rf"^IDLE\s+{rest}\s+{rest}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", part, re.M)
    assert m and 0.9 * timeout_ms <= float(m.group(1)) and float(m.group(3)) < 3 * timeout_ms, part
    assert re.search(rf"^busy \(open\)\s+{tenth}\s+{tenth}\s", part, re.M), part
    assert "OK: counts match" in part


@pytest.fixture(scope="module")
def demo_both():
    """One `fastka demo` run on both backends (200 connections, 0.5 s idle timeout)."""
    return fastka_cmd("demo", "--connections", "200", "--idle-timeout", "0.5")


def test_demo_compares_the_backends(demo_both):
    need("c")
    r = demo_both
    assert r.returncode == 0, r.stdout + r.stderr
    for name in _backends.NAMES:
        _demo_report(r.stdout, name, 200, 500)
    table = r.stdout.split("\n\n")[-1].splitlines()
    assert table[0].split() == ["cost", "c", "python", "python/c"] and set(table[1]) == {"-", " "}
    assert table[-1] == "(per connection; the poll tick per tick)"
    assert [line.split("  ")[0] for line in table[2:-1]] == ["set_keepalive_many", "manager.add", "poll tick (20 ready)"]
    for line in table[2:-1]:
        assert re.search(r"\d\.\d+ us\s+\d+\.\d+ us\s+\d+\.\dx$", line), line
    assert "opening connections [" in r.stderr


@pytest.mark.parametrize("name", _backends.NAMES)
def test_demo_on_one_backend(name):
    need(name)
    r = fastka_cmd("demo", "--connections", "100", "--idle-timeout", "0.3", "--backend", name)
    assert r.returncode == 0, r.stdout + r.stderr
    _demo_report(r.stdout, name, 100, 300)
    assert r.stdout.count("== backend ") == 1
    assert r.stdout.split("\n\n")[-1].split()[:2] == ["cost", name]


def test_demo_honours_no_extensions():
    r = fastka_cmd("demo", "--connections", "100", "--idle-timeout", "0.3", env=NO_EXT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("backend c: skipped (FASTKA_NO_EXTENSIONS=1 forces the python backend)\n")
    assert "== backend c" not in r.stdout
    _demo_report(r.stdout, "python", 100, 300)
    r = fastka_cmd("demo", "--backend", "c", env=NO_EXT)
    assert r.returncode == 2
    assert r.stderr == ("fastka demo: error: argument --backend: c cannot run:"
                        " FASTKA_NO_EXTENSIONS=1 forces the python backend\n")


@pytest.mark.parametrize("args", [["info"], ["demo", "--connections", "100", "--idle-timeout", "0.2"]])
def test_closed_stdout_pipe_ends_quietly(args):
    """The reader of stdout is gone before the first line: the command ends as a Unix tool
    does, by SIGPIPE, without a traceback (the shell shows status 141)."""
    proc = subprocess.Popen([sys.executable, "-m", "fastka", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGPIPE, err
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err


@pytest.mark.parametrize("args,lines", [("info", 1), ("demo --connections 100 --idle-timeout 0.2", 2)])
def test_head_of_the_output(args, lines):
    """`fastka info | head -1`, `fastka demo | head -2` as a user types them."""
    cmd = f"{sys.executable} -m fastka {args} | head -{lines}; echo status ${{PIPESTATUS[0]}}"
    r = subprocess.run(["bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True, timeout=60)
    out = r.stdout.splitlines()
    assert len(out) == lines + 1 and out[-1] in ("status 0", "status 141"), r.stdout
    assert out[0].startswith(("fastka ", "== backend ")), r.stdout  # no blank first line
    assert "Traceback" not in r.stderr and "Broken pipe" not in r.stderr, r.stderr


@pytest.mark.parametrize("error,message", [
    (BrokenPipeError(32, "Broken pipe"), "Broken pipe"),  # a socket's EPIPE, not a closed stdout
    (OSError(99, "Cannot assign requested address"), "Cannot assign requested address"),
    (PermissionError(13, "Permission denied", "/x/bench.json"), "/x/bench.json: Permission denied"),
    (RuntimeError("the peer process did not send"), "the peer process did not send"),
])
def test_a_subcommand_error_is_one_line_exit_1(monkeypatch, capsys, error, message):
    from fastka.cli import info

    def run(args):
        print("partial output")
        raise error

    monkeypatch.setattr(info, "run", run)
    assert cli.main(["info"]) == 1
    out, err = capsys.readouterr()
    assert out == "partial output\n" and err == f"fastka info: error: {message}\n"


def test_ctrl_c_is_status_130(monkeypatch):
    from fastka.cli import info

    def run(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(info, "run", run)
    assert cli.main(["info"]) == 130


@pytest.mark.parametrize("redirect,message", [("> /dev/full", "No space left on device"),
                                              (">&-", "standard output is closed")])
def test_stdout_unwritable(redirect, message):
    """`fastka info > /dev/full`, `fastka info >&-`: one error line, status 1."""
    r = subprocess.run(["bash", "-c", f"{sys.executable} -m fastka info {redirect}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr == f"fastka info: error: {message}\n", r


def test_durations_in_words():
    from fastka.cli.info import _duration

    assert [_duration(s) for s in (30, 240, 350, 3600, 7875)] == ["30 s", "4 min", "5 min 50 s", "1 h", "2 h 11 min"]


def test_integers_sorted_without_repeats():
    from fastka.cli import _args

    assert _args.integers(10, 100)("20,10,20, 10") == [10, 20]


@pytest.mark.parametrize("why,unit,message", [
    ("", "", "5 is out of range; allowed: 10..20"),
    ("", "bytes", "5 is out of range; allowed: 10..20 bytes"),
    ("the open-file limit", "", "5 is out of range; allowed: 10..20 (set by the open-file limit)"),
    ("the open-file limit", "bytes", "5 is out of range; allowed: 10..20 bytes (set by the open-file limit)"),
])
def test_range_message_names_the_unit_and_the_bound(why, unit, message):
    import argparse

    from fastka.cli import _args

    with pytest.raises(argparse.ArgumentTypeError) as info:
        _args.integer(10, 20, why, unit=unit)("5")
    assert str(info.value) == message


def test_a_bound_below_the_least_is_named():
    """A tiny open-file limit: the message says the limit is too low, not "allowed: 10..3"."""
    import argparse

    from fastka.cli import _args

    with pytest.raises(argparse.ArgumentTypeError, match=r"^no value can run here: the open-file limit allows"
                                                         r" at most 3, fewer than 10$"):
        _args.integer(10, 3, "the open-file limit")("20")


def in_small_port_range(*args: str, ports: int = 100) -> subprocess.CompletedProcess:
    """``python args`` in a fresh network namespace whose ephemeral port range holds ``ports``."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare") \
            or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode:
        pytest.skip("needs root, unshare(1) and ip(8) for a network namespace")
    script = (f"ip link set lo up && echo '40000 {40000 + ports - 1}' > /proc/sys/net/ipv4/ip_local_port_range"
              f" && exec {sys.executable} \"$@\"")
    return subprocess.run(["unshare", "-n", "sh", "-c", script, "sh", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("args", [["bench", "--sizes", "200"], ["demo", "--connections", "200"]])
def test_sizes_beyond_the_port_range(args):
    """100 ephemeral ports: asking for 200 connections is a usage error (it was a traceback:
    EADDRNOTAVAIL in demo, a 30 s accept timeout in bench)."""
    r = in_small_port_range("-m", "fastka", *args)
    assert r.returncode == 2, r
    assert r.stderr.splitlines()[-1].endswith(
        "200 is out of range; allowed: 10..90 (set by the ephemeral port range 40000..40099 less a tenth)"), r.stderr


def test_demo_shrinks_to_the_port_range():
    r = in_small_port_range("-m", "fastka", "demo", "--idle-timeout", "0.2", "--backend", "python")
    assert r.returncode == 0, r
    _demo_report(r.stdout, "python", 90, 200)


@pytest.mark.parametrize("code", [
    "from fastka.cli.bench import Pool\nPool(200)",
    "from fastka.cli.demo import _open_pairs\n_open_pairs(200)",
])
def test_running_out_of_ports_is_one_clear_error(code):
    """Connections beyond the port range (ports taken elsewhere): a RuntimeError naming
    the cause at once, not a 30 s wait or a bare OSError."""
    r = in_small_port_range("-c", f"import time\nt = time.monotonic()\ntry:\n    exec({code!r})\n"
                            "except RuntimeError as exc:\n    print(exc, round(time.monotonic() - t))")
    assert r.returncode == 0, r
    assert re.fullmatch(r"(the peer process stopped after 99 of 200 connections: connect failed"
                        r"|loopback connection 100 of 200 failed): Cannot assign requested address \d+\n",
                        r.stdout), r.stdout
    assert int(r.stdout.split()[-1]) < 5, r.stdout


@pytest.mark.parametrize("module", ["bench", "demo"])
def test_subcommand_uses_the_public_api_and_the_backend_registry(module):
    """bench and demo are written as a user would write them: names from ``fastka`` itself,
    plus ``fastka._backends`` to run both backends side by side; no other private module."""
    import ast

    path = os.path.join(os.path.dirname(fastka.__file__), "cli", f"{module}.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    private = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            package = {0: "", 1: "fastka.cli", 2: "fastka"}[node.level]
            where = ".".join(p for p in (package, node.module or "") if p)
            if where == "fastka":
                private += [f"fastka.{a.name}" for a in node.names if a.name.startswith("_") and a.name != "_backends"]
            elif where.startswith("fastka.") and not where.startswith("fastka.cli") and where != "fastka._backends":
                private.append(where)
        elif isinstance(node, ast.Import):
            private += [a.name for a in node.names if a.name.startswith("fastka.") and a.name != "fastka._backends"]
    assert private == [], private


# -- docs/cli.rst quotes what the command prints today -----------------------------------

CLI_PAGE = os.path.join(ROOT, "docs", "cli.rst")


def quoted(first: str) -> list:
    """The lines docs/cli.rst quotes after ``first`` (a ``$ command`` line, or the first line
    of a literal block) to the end of that block or the next ``$`` command, without the
    block's indent."""
    if not os.path.exists(CLI_PAGE):
        pytest.skip("docs/ is not beside the tests (installed-wheel run)")
    with open(CLI_PAGE, encoding="utf-8") as f:
        lines = f.read().splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == first and (
        first.startswith("$ ") or [ln for ln in lines[:i] if ln.strip()][-1].endswith("::"))]
    assert starts, f"docs/cli.rst does not quote {first!r}"
    start = starts[0]
    indent = len(lines[start]) - len(lines[start].lstrip())
    block = []
    for line in lines[start + 1:]:
        if line.strip() and (len(line) - len(line.lstrip()) < indent or line.strip().startswith("$ ")):
            break
        block.append(line[indent:])
    while block and not block[-1].strip():
        block.pop()
    return block


def fastka_at_80_columns(*args: str, env: dict = None) -> subprocess.CompletedProcess:
    """`fastka args` as the page shows it: an 80-column terminal, an open-file limit of 20,000."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))

    return subprocess.run([sys.executable, "-m", "fastka", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, COLUMNS="80", **(env or {})), preexec_fn=limit)


@pytest.mark.parametrize("cmd", ["demo", "bench"])
def test_cli_page_quotes_todays_help(cmd):
    r = fastka_at_80_columns(cmd, "--help")
    first, *rest = r.stdout.splitlines()
    assert quoted(first) == rest


def test_cli_page_quotes_todays_bad_flag_error():
    r = fastka_at_80_columns("demo", "--idle-timeout", "2e9")
    assert r.returncode == 2
    assert quoted("$ fastka demo --idle-timeout 2e9") == r.stderr.splitlines()


def test_cli_page_quotes_todays_info(monkeypatch, capsys):
    """`fastka info` on the machine the page describes: the compiled backend, Linux's
    default keepalive settings (7200, 75, 9), an open-file limit of 20,000."""
    import resource

    from fastka.cli import info

    monkeypatch.setattr(fastka, "IMPLEMENTATION", "c")
    monkeypatch.setattr(fastka, "system_defaults", lambda: fastka.KeepaliveConfig(idle=7200, interval=75, count=9))
    monkeypatch.setattr(resource, "getrlimit", lambda what: (20000, 20000))
    assert info.run(None) == 0
    assert quoted("$ fastka info") == capsys.readouterr().out.splitlines()


def test_cli_page_quotes_todays_info_on_the_fallback():
    r = fastka_cmd("info", env=NO_EXT)
    assert quoted("$ FASTKA_NO_EXTENSIONS=1 fastka info | head -1") == r.stdout.splitlines()[:1]


def test_cli_page_quotes_todays_demo_report(demo_both):
    """The demo report has the page's lines; the figures (any number) are this run's."""
    need("c")
    page = quoted("$ fastka demo 2>/dev/null")
    r = demo_both
    assert r.returncode == 0, r.stderr
    got = r.stdout.splitlines()
    assert len(got) == len(page), (page, got)
    for want, line in zip(page, got):  # any number for a number, any rule's width for a rule
        pattern = r"\s+".join("-+" if set(word) == {"-"} else
                              re.sub(r"\d+(?:\\\.\d+)?", r"\\d+(?:\\.\\d+)?", re.escape(word))
                              for word in want.split())
        assert re.fullmatch(pattern, line.strip()), (want, line)
