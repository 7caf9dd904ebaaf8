"""The documentation site in docs/ builds with warnings as errors, its examples run (Sphinx's
doctest builder, on both backends), the platform table is the code's, and every public name
has an API entry. Skips where Sphinx is not installed."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

import fastka
from fastka import _platform
from repo import ROOT

DOCS = os.path.join(ROOT, "docs")
pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(DOCS, "conf.py")),
                                reason="docs/ is not beside the tests (installed-wheel run)")


def sphinx(builder: str, out, env=None) -> float:
    """Run ``sphinx-build -W -b builder docs out``; returns the seconds it took."""
    pytest.importorskip("sphinx", reason="Sphinx is not installed (pip install -e '.[test]')")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", builder,
                           "-d", str(out / "doctrees"), DOCS, str(out / builder)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return time.monotonic() - start


def pages():
    return sorted(f for f in os.listdir(DOCS) if f.endswith(".rst"))


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    out = tmp_path_factory.mktemp("docs")
    took = sphinx("html", out)
    print(f"html build: {took:.1f} s")
    return out / "html"


def test_html_builds_without_warnings(html):
    for page in pages():
        assert (html / page.replace(".rst", ".html")).exists(), page


def test_doctests_pass(backend, tmp_path):
    backend.load()  # skips (or fails under FASTKA_REQUIRE_EXTENSION) where the backend is missing
    env = dict(os.environ, FASTKA_NO_EXTENSIONS="1" if backend.name == "python" else "0")
    sphinx("doctest", tmp_path, env)


CODE_BLOCK = re.compile(r"^\s*\.\. (?:code-block|code|sourcecode)::[ \t]*(\S*)", re.M)


def test_python_examples_are_tested():
    """Python in the docs is a doctest/testcode block (run by the doctest builder) or a
    literalinclude of a file a test runs: a plain code block may only hold shell commands or
    program output."""
    for page in pages():
        with open(os.path.join(DOCS, page), encoding="utf-8") as f:
            languages = CODE_BLOCK.findall(f.read())
        assert set(languages) <= {"sh", "console", "text"}, f"{page}: code blocks in {languages}"


def test_platform_table_is_generated_from_the_code(html):
    """platforms.rst has no hand-written table: the directive renders fastka._platform.PLATFORMS."""
    with open(os.path.join(DOCS, "platforms.rst"), encoding="utf-8") as f:
        source = f.read()
    assert ".. fastka-platform-table::" in source and "| idle" not in source
    page = (html / "platforms.html").read_text(encoding="utf-8")
    rows = [[re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", page, re.S)]
    table = {row[0]: row[1:] for row in rows if row}
    columns = table["field"]
    for platform in _platform.PLATFORMS.values():
        title = "Windows 10 1709+" if platform is _platform.WINDOWS else platform.title
        col = columns.index(title)
        for field in ("idle", "interval", "count", "user_timeout"):
            option = getattr(platform, field)
            want = "none: ValueError" if option is None else f"{option.name} ({option.number:#x}, {option.unit})"
            assert table[field][col] == want, (title, field)
        for field, limits in (("idle range (s)", platform.limits.idle), ("interval range (s)", platform.limits.interval),
                              ("count range", platform.limits.count)):
            assert table[field][col] == "{}..{}".format(*limits), (title, field)


def test_api_reference_covers_every_public_name():
    with open(os.path.join(DOCS, "api.rst"), encoding="utf-8") as f:
        documented = set(re.findall(r"^\.\. (?:auto\w+|data|class|function):: (\w+)", f.read(), re.M))
    assert set(fastka.__all__) <= documented, sorted(set(fastka.__all__) - documented)


def test_the_api_page_documents_every_event(html):
    """Each Event member is on the API page with its value: autodoc lists the members that
    have a docstring in fastka/_types.py (:members: without :undoc-members:)."""
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", (html / "api.html").read_text(encoding="utf-8")))
    for event in fastka.Event:
        assert f"{event.name} = {event.value}" in text, event


def test_api_page_shows_no_internals(html):
    """The API reference speaks to users: no source paths of the C core or the package's
    private modules, no test files, no private parameters."""
    text = re.sub(r"<[^>]+>", "", (html / "api.html").read_text(encoding="utf-8"))
    found = re.findall(r"src/\w+|tests?/\w+|test_\w+\.py|fastka/_\w+|\b_backend\b|[Dd]efects? fixed", text)
    assert found == []


def test_layout_table_matches_the_tracked_files():
    """docs/development.rst names every file git tracks under fastka/, src/, benchmarks/ and
    tools/ by its path, and every such path it names is tracked, so the layout table can
    neither fall behind the tree nor keep a file that is gone."""
    git = shutil.which("git")
    if git is None or not os.path.exists(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout")
    tracked = set(subprocess.run([git, "ls-files", "fastka", "src", "benchmarks", "tools"], cwd=ROOT,
                                 capture_output=True, text=True, check=True).stdout.split())
    assert tracked
    with open(os.path.join(DOCS, "development.rst"), encoding="utf-8") as f:
        named = set(re.findall(r"``([^`\s]+)``", f.read()))
    assert sorted(tracked - named) == [], "tracked but not in the layout table"
    files = {n for n in named if re.match(r"(fastka|src|benchmarks|tools)/", n) and not n.endswith("/")}
    assert sorted(files - tracked) == [], "in the layout table but not tracked"
