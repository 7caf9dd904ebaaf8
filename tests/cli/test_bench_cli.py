"""`fastka bench` at tiny sizes: every scenario on each backend and its floor, the table and
the JSON agree, FASTKA_NO_EXTENSIONS leaves only the python backend, and it runs from the
package alone (as installed from a wheel: no benchmarks/, no compiler needed).

Times are not asserted (speed goals are ratios in the benchmark output, not test
conditions); bad arguments are in test_cli.py.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

import fastka
from fastka import _backends
from fastka.cli.bench import FLOORS

from test_cli import need
from repo import ROOT

PACKAGE = os.path.dirname(fastka.__file__)  # the checkout's, or the installed wheel's

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the scenarios use Linux's epoll")


def bench(*args, env=None, cwd=ROOT, pythonpath=None):
    full_env = dict(os.environ, **(env or {}))
    if pythonpath:
        full_env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-m", "fastka", "bench", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=120)


def check_run(proc, data, names, sizes):
    assert proc.returncode == 0, proc.stderr
    head = ["scenario", "N", *names, "floor", *([f"{names[1]}/{names[0]}"] if len(names) > 1 else []),
            f"{names[0]}/floor"]
    assert data["columns"] == head and data["backends"] == names
    rows = {(r["scenario"], r["n"]): r["times"] for r in data["rows"]}
    assert set(rows) == {(s, n) for s in FLOORS for n in sizes}
    for times in rows.values():
        assert set(times) == {*names, "floor"} and all(t > 0 for t in times.values())
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == head)
    printed = [line.split("  ")[0] for line in lines[start + 2:start + 2 + len(rows)]]
    assert printed == [r[0] for r in data["table"]] == [s for s in FLOORS for _ in sizes]


@pytest.mark.slow
def test_both_backends_and_floors(tmp_path):
    need("c")
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    plot = ["--plot", str(png)] if importlib.util.find_spec("matplotlib") else []
    proc = bench("--sizes", "20,100", "--repeat", "1", "--json", str(out), *plot)
    check_run(proc, json.loads(out.read_text()), ["c", "python"], [20, 100])
    assert "skipped" not in proc.stdout
    if plot:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(tmp_path):
    """--plot where matplotlib does not import: one error line before any measuring."""
    blocker = tmp_path / "matplotlib.py"
    blocker.write_text("raise ImportError('no matplotlib here')\n")
    proc = bench("--sizes", "20", "--plot", str(tmp_path / "x.png"), pythonpath=str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr == "fastka bench: error: --plot needs matplotlib (pip install 'fastka[plot]')\n"


def test_no_extensions_runs_only_python(tmp_path):
    out = tmp_path / "bench.json"
    proc = bench("--sizes", "20", "--repeat", "1", "--json", str(out), env={_backends.ENV_NO_EXTENSIONS: "1"})
    data = json.loads(out.read_text())
    check_run(proc, data, ["python"], [20])
    assert proc.stdout.startswith("backend c: skipped (FASTKA_NO_EXTENSIONS=1 forces the python backend)\n")
    assert data["skipped"] == {"c": "FASTKA_NO_EXTENSIONS=1 forces the python backend"}


@pytest.mark.slow
def test_runs_from_the_package_alone(tmp_path):
    """The package directory as a wheel installs it (its modules and built extensions,
    nothing else of the checkout), imported from elsewhere: bench needs nothing more."""
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "fastka", ignore=shutil.ignore_patterns("__pycache__", "*.c", "*.pyx", "*.pxd"))
    work = tmp_path / "work"
    work.mkdir()
    out = work / "bench.json"
    proc = bench("--sizes", "20", "--repeat", "1", "--json", str(out), cwd=str(work), pythonpath=str(site))
    data = json.loads(out.read_text())
    names = [b.name for b in _backends.available()[0]]
    check_run(proc, data, names, [20])
    probe = subprocess.run([sys.executable, "-c", "import fastka.cli.bench as b; print(b.__file__)"], cwd=str(work),
                           env=dict(os.environ, PYTHONPATH=str(site)), capture_output=True, text=True)
    assert probe.stdout.startswith(str(site)), probe  # the copy ran, not the checkout


def test_a_run_that_fails_leaves_the_json_file_alone(tmp_path):
    """--json is opened when the figures are ready: a run that stops early (here --plot
    without matplotlib) leaves an existing file as it was."""
    blocker = tmp_path / "matplotlib.py"
    blocker.write_text("raise ImportError('no matplotlib here')\n")
    out = tmp_path / "bench.json"
    out.write_text("earlier figures\n")
    proc = bench("--sizes", "20", "--json", str(out), "--plot", str(tmp_path / "x.png"), pythonpath=str(tmp_path))
    assert proc.returncode == 2 and out.read_text() == "earlier figures\n"


@pytest.mark.slow
def test_plot_format_checked_before_the_run(tmp_path):
    pytest.importorskip("matplotlib")
    proc = bench("--sizes", "20", "--plot", str(tmp_path / "bench.nosuchformat"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("fastka bench: error: argument --plot: ") and "png" in proc.stderr


@pytest.mark.parametrize("flag,value", [("--duration", "nan"), ("--duration", "inf"), ("--report-every", "nan"),
                                        ("--rss-tolerance", "nan"), ("--concurrency", "0")])
def test_soak_refuses_bad_numbers(capsys, monkeypatch, flag, value):
    """benchmarks/soak.py: nan would run forever or turn a check off."""
    path = os.path.join(ROOT, "benchmarks", "soak.py")
    if not os.path.exists(path):
        pytest.skip("benchmarks/ is not beside the tests (installed-wheel run)")
    monkeypatch.syspath_prepend(os.path.dirname(path))  # as when run as a script: its sibling modules
    spec = importlib.util.spec_from_file_location("soak", path)
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    with pytest.raises(SystemExit) as exited:
        soak.main([flag, value])
    stderr = capsys.readouterr().err
    assert exited.value.code == 2 and f"error: argument {flag}: {value} is out of range" in stderr, stderr
