"""The soak (benchmarks/soak.py) as a test: its checks work and a short run passes them on
each backend. A real soak is the same script with a long --duration
(``python benchmarks/soak.py --duration 600``); the mechanism, the client's behaviours
and the checks on fds, the manager's count, RSS and the events are the same at any length."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from repo import ROOT


SOAK = os.path.join(ROOT, "benchmarks", "soak.py")
SECONDS = 4  # long enough for every behaviour but the slow one to end (MAX_LIFETIME is 1.5 s)


@pytest.mark.slow
def test_churn_leaves_fds_count_and_memory_flat(backend):
    backend.KeepaliveManager  # skips (or fails in CI) where the backend is not built
    if not os.path.exists(SOAK):
        pytest.skip("benchmarks/ is not beside the tests (installed-wheel run)")
    run = subprocess.run(
        [sys.executable, SOAK, "--duration", str(SECONDS), "--backend", backend.name, "--report-every", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    line = [ln for ln in run.stdout.splitlines() if ln.startswith("SOAK-SUMMARY ")][-1]
    summary = json.loads(line[len("SOAK-SUMMARY "):])
    assert summary["failures"] == []
    assert summary["final_fds"] == summary["baseline_fds"]
    assert summary["connections"] > 100
    assert summary["terminal_events"] == summary["connections"]
    # The client's behaviours produced their events. MAX_LIFETIME is not required: on a
    # loaded machine a starved client lets its slow connections reach IDLE first.
    for kind in ("READABLE", "IDLE", "PEER_CLOSED", "RESET", "MAX_REQUESTS"):
        assert summary["events"].get(kind, 0) > 0, (kind, summary["events"])
