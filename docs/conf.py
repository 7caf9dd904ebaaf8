"""Sphinx configuration for fastka's documentation (``sphinx-build -W docs docs/_build``).

The API reference is generated from the pure-Python backend, the readable specification
whose functions carry real signatures (the compiled backend's functions have the same
signatures and behaviour, but compiled functions do not expose them to introspection).
The platform table and the library-defaults table are generated at build time (see
``_ext/fastka_tables.py``), so they cannot drift from the code and from the tested CSV.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the fastka package of this checkout
sys.path.insert(0, os.path.join(HERE, "_ext"))
# The pure-Python backend unless the caller chose (tests/test_docs.py runs the doctests with
# FASTKA_NO_EXTENSIONS=0 too, on the compiled backend).
os.environ.setdefault("FASTKA_NO_EXTENSIONS", "1")

import fastka  # noqa: E402

project = "fastka"
author = "fastka developers"
copyright = "fastka developers"
release = version = fastka.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.doctest", "fastka_tables"]
exclude_patterns = ["_build"]
templates_path = []
html_theme = "alabaster"
html_static_path = []
html_title = f"fastka {release}"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
nitpicky = False

# No hidden set-up: every page's examples import what they use and open their own sockets,
# so they run as pasted into a fresh interpreter. Afterwards the sockets a page left open
# are closed (the doctest builder runs every page in one process).
doctest_global_setup = ""
doctest_global_cleanup = """
import socket as _socket
for _s in [_v for _v in list(globals().values()) if isinstance(_v, _socket.socket)]:
    _s.close()
"""
