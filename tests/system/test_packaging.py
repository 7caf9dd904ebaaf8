"""The source distribution: what it carries, and that it installs where no compiler works.

Both tests build an sdist (`python -m build --sdist --no-isolation`, so no network) from a
copy of the checkout, never inside it. They need the source checkout beside tests/ and
`build`, setuptools and Cython in the test environment; elsewhere (e.g. the suite run
against an installed wheel) they skip with the reason.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile

import pytest
from repo import ROOT

# Files of the checkout that must reach the sdist: the package (Python, Cython, stubs, at any
# depth: fastka/cli/serve/ too), the C in src/ (the core and serve's src/serve/), the tests,
# the benchmarks and the build configuration.
SHIPPED = re.compile(
    r"(fastka/.+\.(py|pyi|pyx|pxd)|fastka/py\.typed|src/.+\.[ch]|tests/.+\.py"
    r"|benchmarks/.+\.(py|c)|README\.md|pyproject\.toml|setup\.py|MANIFEST\.in)"
)
# Build products, and the C that Cython generates (every .c under fastka/: C written by hand
# lives in src/).
NEVER_SHIPPED = re.compile(r".*\.(so|pyd|o|pyc)|fastka/.+\.c|build/.*|wheelhouse/.*")
# Directories a copy leaves out when the checkout is not a git work tree.
NOT_SOURCE = ("build", "dist", "wheelhouse", "*.egg-info", "__pycache__", ".git", ".pytest_cache",
              ".hypothesis", ".benchmarks", ".mypy_cache", "*.so", "*.pyd", "*.o", "*.pyc")


def _missing_prerequisite() -> str | None:
    if not os.path.exists(os.path.join(ROOT, "setup.py")):
        return "needs the source checkout (no setup.py beside tests/: the suite runs from an installed wheel)"
    if sys.platform == "win32":
        return "the CC=false no-compiler simulation is for Unix compilers"
    missing = [m for m in ("build", "setuptools", "Cython") if importlib.util.find_spec(m) is None]
    if missing:
        return f"building the sdist offline needs {', '.join(missing)} in the test environment"
    return None


_SKIP = _missing_prerequisite()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_SKIP is not None, reason=str(_SKIP))]


def _source_files() -> list[str]:
    """The checkout's files as a clean clone plus local additions has them (relative paths)."""
    if os.path.isdir(os.path.join(ROOT, ".git")) and shutil.which("git"):
        out = subprocess.run(
            ["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            check=True, capture_output=True,
        ).stdout.decode()
        return sorted(p for p in set(out.split("\0")) if p and os.path.isfile(os.path.join(ROOT, p)))
    copy = shutil.ignore_patterns(*NOT_SOURCE)
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        ignored = copy(dirpath, dirnames + filenames)
        dirnames[:] = [d for d in dirnames if d not in ignored]
        found += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in filenames if f not in ignored]
    return sorted(p.replace(os.sep, "/") for p in found)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A copy of the checkout (building an sdist writes egg-info and generated C into it)."""
    dest = tmp_path_factory.mktemp("checkout")
    files = _source_files()
    for rel in files:
        os.makedirs(dest / os.path.dirname(rel), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), dest / rel)
    return dest, files


@pytest.fixture(scope="module")
def sdist(checkout, tmp_path_factory):
    src, _ = checkout
    out = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTKA_")}
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), str(src)],
        check=True, capture_output=True, env=env, timeout=600,
    )
    (path,) = out.glob("fastka-*.tar.gz")
    return path


def test_sdist_carries_the_sources_the_tests_and_no_build_products(checkout, sdist):
    _, files = checkout
    with tarfile.open(sdist) as tf:
        top = tf.getnames()[0].split("/")[0]
        names = {n[len(top) + 1:] for n in tf.getnames() if n.startswith(top + "/")}
    expected = {f for f in files if SHIPPED.fullmatch(f)}
    assert {"fastka/_keepalive_c.pyx", "fastka/_keepalive_c.pxd", "src/sockopt.c", "src/sockopt.h",
            "tests/conftest.py", "setup.py", "pyproject.toml"} <= expected
    assert sorted(expected - names) == []
    assert sorted(n for n in names if NEVER_SHIPPED.fullmatch(n)) == []


def _venv_python(tmp_path):
    venv = tmp_path / "venv"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot create a virtual environment here: {getattr(exc, 'stderr', b'') or exc}")
    python = venv / "bin" / "python"
    # The build backend comes from this test environment (offline, --no-build-isolation):
    # the venv sees the directories holding setuptools and Cython after its own packages,
    # so the (possibly older) setuptools that ensurepip put in the venv must go first.
    subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "setuptools"], capture_output=True, timeout=300)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    dirs = {os.path.dirname(os.path.dirname(importlib.util.find_spec(m).origin)) for m in ("setuptools", "Cython")}
    with open(os.path.join(purelib, "fastka-test-build-deps.pth"), "w") as f:
        f.write("\n".join(sorted(dirs)) + "\n")
    return venv, python


def test_sdist_installs_without_a_compiler_on_the_fallback(sdist, tmp_path):
    venv, python = _venv_python(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTKA_") and k != "PYTHONPATH"}
    # No working compiler or linker: distutils takes CC (and CXX, LDSHARED) from the
    # environment before anything from sysconfig.
    env.update(CC="false", CXX="false", LDSHARED="false")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-v", "--no-build-isolation", "--no-deps", "--no-index", str(sdist)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    warnings = [line.strip() for line in (install.stdout + install.stderr).splitlines()
                if "WARNING: fastka's C extension" in line]
    assert len(warnings) == 1, warnings
    assert "could not be built" in warnings[0] and "pure-Python fallback" in warnings[0]

    env.pop("CC"), env.pop("CXX"), env.pop("LDSHARED")
    probe = subprocess.run(
        [str(python), "-c",
         "import os, socket, fastka\n"
         "pkg = os.path.dirname(fastka.__file__)\n"
         "print(fastka.IMPLEMENTATION)\n"
         "print(pkg)\n"
         "print(sorted(f for f in os.listdir(pkg) if f.endswith(('.so', '.pyd'))))\n"
         "s = socket.socket()\n"
         "fastka.set_keepalive(s, idle=30, interval=4, count=3)\n"
         "st = fastka.get_keepalive(s)\n"
         "s.close()\n"
         "print(st.enabled, st.idle, st.interval, st.count)\n"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    implementation, pkg, compiled, state = probe.stdout.splitlines()
    assert implementation == "python"
    assert pkg.startswith(str(venv))
    assert compiled == "[]"
    assert state == "True 30 4 3"


def test_supported_pythons_agree_across_the_metadata_the_wheels_and_the_version_runs():
    """requires-python, the version classifiers, cibuildwheel's build selector and the
    versions tools/multi-version runs name the same CPythons; Project-URLs are present."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")
    path = os.path.join(ROOT, "pyproject.toml")
    if not os.path.exists(os.path.join(ROOT, "tools", "multi-version")):
        pytest.skip("needs the source checkout")
    with open(path, "rb") as f:
        meta = tomllib.load(f)
    project = meta["project"]
    classified = [c.rsplit(" ", 1)[-1] for c in project["classifiers"]
                  if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    lowest = re.fullmatch(r">=(3\.\d+)", project["requires-python"]).group(1)
    assert classified[0] == lowest
    minors = [int(v.split(".")[1]) for v in classified]
    assert minors == list(range(minors[0], minors[-1] + 1))
    assert meta["tool"]["cibuildwheel"]["build"].split() == [f"cp3{m}-*" for m in minors]
    assert "cp3??t-*" in meta["tool"]["cibuildwheel"]["skip"]
    with open(os.path.join(ROOT, "tools", "multi-version"), encoding="utf-8") as f:
        tool = f.read()
    runs = re.findall(r'"(3\.\d+)"', re.search(r"PYENV_MINORS = \[.*?\]\nCHROOT_MINORS = \[.*?\]", tool, re.S).group(0))
    assert runs == classified
    assert any(r.startswith("Cython>=3.1") for r in meta["build-system"]["requires"])
    assert set(project["urls"]) >= {"Homepage", "Documentation", "Source", "Issues"}
