"""The README's examples are the code the tests run: the asyncio example must appear in the
README exactly as tests/test_manager_asyncio.py executes it."""
from __future__ import annotations

import os

import pytest
from test_manager_asyncio import EXAMPLE

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


@pytest.fixture(scope="module")
def readme() -> str:
    if not os.path.exists(README):
        pytest.skip("README.md is not beside the tests (installed-wheel run)")
    with open(README, encoding="utf-8") as f:
        return f.read()


def test_asyncio_example_is_the_tested_code(readme):
    assert EXAMPLE.strip() in readme


def test_readme_has_the_two_setup_commands(readme):
    assert "pip install . && fastka demo" in readme
    assert "pip install -e '.[test]' && pytest" in readme
