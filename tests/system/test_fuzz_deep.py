"""The fuzz and differential tests at depth: tests/library/test_fuzz.py and
test_manager_differential.py with 1,000 examples per test (the default run uses 100 and 80,
sized for a quick suite). The same properties, on ten times as many inputs."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from repo import ROOT

EXAMPLES = 1000
MODULES = ("tests/library/test_fuzz.py", "tests/library/test_manager_differential.py")


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_fuzz_at_depth(module):
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", module],
                         cwd=ROOT, env=dict(os.environ, FASTKA_FUZZ_EXAMPLES=str(EXAMPLES)),
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    last = run.stdout.splitlines()[-1]
    if " passed" not in last:
        pytest.skip(f"{module}: {last}")  # the compiled backend is not built
