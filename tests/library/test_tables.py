"""The compiled manager's options come from fastka/_manager.py's C_OPTIONS through tables.h,
which setup.py writes at build time: a build from another table refuses to start."""
import pytest

from fastka import _backends, _manager


def test_a_compiled_manager_built_from_other_options_refuses_to_start(monkeypatch):
    try:
        manager = _backends.load("c").manager
    except _backends.BackendUnavailable as exc:
        pytest.skip(str(exc))
    if manager.__name__ != "fastka._manager_c":
        pytest.skip("the compiled manager is not built on this platform")
    monkeypatch.setattr(_manager.Settings, "c_options", lambda self: (0,) * 9)
    with pytest.raises(RuntimeError, match=f"takes {len(_manager.C_OPTIONS)} options, fastka._manager gives 9: rebuild it"):
        manager.KeepaliveManager()
