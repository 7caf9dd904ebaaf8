"""fastka.pools against real servers (nginx, uvicorn, gunicorn, fastka serve) with a 2 s
keep-alive timeout, behind benchmarks/reuse_race.py's delaying relay: a short run of the
benchmark, in which no request through a fastka pool may fail. (The plain pools' failures
are the benchmark's to count: in a short run they may by chance be none.) A server that
cannot start here is skipped by the script, and the test skips when none started."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from repo import ROOT

RACE = os.path.join(ROOT, "benchmarks", "reuse_race.py")
ROW = re.compile(r"^(.+?)\s+(urllib3|requests|aiohttp)\s+(\d+)/(\d+) failed\s+(\d+)/(\d+) failed$", re.M)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(RACE), reason="benchmarks/ is not beside the tests (installed-wheel run)")
def test_no_request_through_a_fastka_pool_fails():
    for module in ("urllib3", "requests", "aiohttp"):
        pytest.importorskip(module)
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, RACE, "--requests", "8", "--no-checkout"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = ROW.findall(done.stdout)
    if not rows:
        pytest.skip(f"no server could start here: {done.stdout}")
    print("\n" + done.stdout)
    for server, client, _plain, n, fast, n2 in rows:
        assert (int(fast), n, n2) == (0, "8", "8"), f"{server} {client}: {fast}/{n2} failed through fastka.pools"
