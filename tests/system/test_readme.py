"""The README keeps the two set-up commands (.ci/run greps for the test command), its tour
runs as written, and its links into docs/ point at pages that exist."""
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


def test_readme_has_the_two_setup_commands(readme):
    assert "pip install . && fastka demo" in readme
    assert "pip install -e '.[test]' && pytest" in readme


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
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sock = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
        client = socket.create_connection(listener.getsockname())
        conn, _ = listener.accept()
        try:
            test = doctest.DocTestParser().get_doctest(session, {"sock": sock, "peer": peer, "conn": conn},
                                                        "README tour", README, 0)
            runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
            runner.run(test, out=lambda text: pytest.fail(text))
            assert runner.failures == 0 and runner.tries == session.count(">>>")
        finally:
            for s in (sock, peer, client, conn):
                s.close()


def test_links_into_the_docs_exist(readme):
    if not os.path.isdir(os.path.join(ROOT, "docs")):
        pytest.skip("docs/ is not beside the tests (installed-wheel run)")
    links = re.findall(r"\]\((docs/[^)#]+)\)", readme)
    assert links, "the README links into docs/"
    for link in links:
        assert os.path.exists(os.path.join(ROOT, link)), link
