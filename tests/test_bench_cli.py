"""`fastka bench --quick`: runs every scenario on both backends and writes its figures.

Times are not asserted (speed goals live in benchmarks/); the test checks that the run
completes, measures what it says it measures and reports bad arguments clearly.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the benchmark scenarios use Linux socket options")

# `fastka bench` through the CLI when it has the subcommand, else through _bench's own
# parser (add_arguments + run), which the CLI wraps.
DIRECT = """
import argparse, sys
from fastka import _bench
parser = argparse.ArgumentParser(prog="fastka bench")
_bench.add_arguments(parser)
sys.exit(_bench.run(parser.parse_args(sys.argv[1:])))
"""


def _has_bench_subcommand() -> bool:
    path = os.path.join(ROOT, "fastka", "cli.py")
    return os.path.exists(path) and "_bench" in open(path).read()


def bench(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    if _has_bench_subcommand():
        cmd = [sys.executable, "-m", "fastka.cli", "bench", *args]
    else:
        cmd = [sys.executable, "-c", DIRECT, *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _imports(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return hasattr(sys.modules[name], "KeepaliveManager") or "keepalive" in name


@pytest.mark.slow
def test_quick_run_writes_json_and_table(tmp_path):
    out = tmp_path / "bench.json"
    png = tmp_path / "bench.png"
    args = ["--quick", "--json", str(out)]
    try:
        import matplotlib  # noqa: F401

        args += ["--plot", str(png)]
    except ImportError:
        png = None
    proc = bench(*args)
    assert proc.returncode == 0, proc.stderr
    header = proc.stdout.splitlines()[0].split()
    assert header == ["scenario", "N", "compiled", "fallback", "speed-up", "compiled/floor"]

    data = json.loads(out.read_text())
    rows = data["rows"]
    assert data["machine"]["cpus"] >= 1 and "io_uring" in data["machine"]
    by = {(r["scenario"], r["n"]): r["times"] for r in rows}
    for name in ("set_keepalive", "get_keepalive", "tcp_info"):
        assert set(by[(name, 1)]) >= {"compiled", "fallback"}
    expected = ["set_keepalive_many", "find_dead"]
    if _imports("fastka._manager_c") and _imports("fastka._manager_py"):
        expected += ["manager add", "manager touch", "manager expiry", "manager poll tick"]
        for n in (100, 500):
            assert "floor" in by[("manager poll tick", n)]
    for name in expected:
        for n in (100, 500):
            times = by[(name, n)]
            assert set(times) >= {"compiled", "fallback"}, (name, n, times)
            assert all(t > 0 for t in times.values())
    if "floor" not in data["skipped"]:
        assert "floor" in by[("set_keepalive_many", 500)] and "floor" in by[("find_dead", 500)]
    assert "fallback is_alive loop" in by[("find_dead", 500)]
    # the printed table has the JSON's lines
    printed = proc.stdout.splitlines()[2:2 + len(data["table"])]
    assert [line.split()[0] for line in printed] == [r[0].split()[0] for r in data["table"]]
    if png is not None:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sizes", "0"], "--sizes must be positive numbers, not '0'"),
        (["--sizes", "ten"], "--sizes takes numbers separated by commas, not 'ten'"),
        (["--repeat", "-1"], "--repeat must be a positive integer, not '-1'"),
        (["--sizes", "99999999"], "--sizes 99999999 exceeds what the open-file limit allows"),
    ],
)
def test_bad_arguments(args, message):
    proc = bench(*args, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr
