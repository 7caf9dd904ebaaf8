"""The README keeps its test commands (.ci/run greps for two of them), its tour runs as
written (no hidden set-up), and its links into docs/ are absolute (they also work on a
package index page) and point at pages that exist."""
from __future__ import annotations

import doctest
import os
import re
import socket

import pytest
from repo import ROOT

README = os.path.join(ROOT, "README.md")


@pytest.fixture(scope="module")
def readme() -> str:
    if not os.path.exists(README):
        pytest.skip("README.md is not beside the tests (installed-wheel run)")
    with open(README, encoding="utf-8") as f:
        return f.read()


def test_readme_has_the_test_commands(readme):
    assert "pip install . && fastka demo" in readme
    assert "pip install -e '.[test]' && pytest" in readme  # .ci/run's first command
    assert "pytest tests/system" in readme  # .ci/run's second command
    assert 'pytest -m "not slow" tests/library -x -q' in readme  # the edit-test loop


def test_tour_runs_as_written(readme, backend, monkeypatch):
    """Every ```pycon block, in order, as one doctest session on each backend."""
    pytest.importorskip("redis", reason="the tour uses redis-py (pip install -e '.[test]')")
    pytest.importorskip("urllib3", reason="the tour uses urllib3 (pip install -e '.[test]')")
    import fastka

    loaded = backend.load()
    for name in ("set_keepalive", "get_keepalive", "find_dead", "create_server", "KeepaliveManager"):
        if hasattr(loaded, name):
            monkeypatch.setattr(fastka, name, getattr(loaded, name))
    session = "\n".join(re.findall(r"```pycon\n(.*?)```", readme, re.S))
    assert session.count(">>>") > 10
    test = doctest.DocTestParser().get_doctest(session, {}, "README tour", README, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    try:
        runner.run(test, out=lambda text: pytest.fail(text))
    finally:
        for value in list(test.globs.values()):
            if isinstance(value, socket.socket):
                value.close()
    assert runner.failures == 0 and runner.tries == session.count(">>>")


def source_url() -> str:
    """The Source address of pyproject.toml's [project.urls]."""
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        found = re.search(r'^Source = "([^"]+)"', f.read(), re.M)
    assert found, "pyproject.toml has no Source in [project.urls]"
    return found.group(1)


def test_links_into_the_docs_are_absolute_and_exist(readme):
    if not os.path.isdir(os.path.join(ROOT, "docs")):
        pytest.skip("docs/ is not beside the tests (installed-wheel run)")
    assert re.findall(r"\]\((docs/[^)]*)\)", readme) == [], "relative links break on a package index page"
    base = source_url() + "/blob/main/"
    links = re.findall(r"\]\(" + re.escape(base) + r"([^)#]+)\)", readme)
    assert links, "the README links into docs/"
    for link in links:
        assert os.path.exists(os.path.join(ROOT, link)), link
