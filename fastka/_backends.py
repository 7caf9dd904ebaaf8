"""Which backend a process uses: the one registry every caller asks.

Two backends, named ``"c"`` (the compiled core, Cython over src/) and ``"python"`` (the
pure-Python fallback, the readable specification). The package, the tests, the CLI
(demo, bench, serve) and the benchmarks all go through :func:`load` and :func:`default`;
no other module imports a backend's modules by name.

``FASTKA_NO_EXTENSIONS`` set to a non-empty value other than ``"0"`` makes
:func:`default` return the fallback and :func:`available` (what demo and bench compare) offer
only the fallback; :func:`load` still gives either backend by name (the tests compare them
side by side).
"""
from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import _keepalive

NAMES: Tuple[str, ...] = ("c", "python")
"""Backend names, preferred first."""

ENV_NO_EXTENSIONS = "FASTKA_NO_EXTENSIONS"

# The modules of each backend: (keepalive primitives, manager). The compiled manager is
# built on epoll and so only on Linux; elsewhere the compiled core pairs with the
# selectors manager.
_MANAGER_C = "fastka._manager_c" if sys.platform.startswith("linux") else "fastka._manager_py"
_MODULES: Dict[str, Tuple[str, str]] = {
    "c": ("fastka._keepalive_c", _MANAGER_C),
    "python": ("fastka._keepalive_py", "fastka._manager_py"),
}


class BackendUnavailable(ImportError):
    """The named backend cannot be loaded in this process (the message says why)."""


class Backend(_keepalive.Keepalive):
    """One backend: ``.name``, its ``.keepalive`` (primitives) and ``.manager`` modules,
    and the public API: ``backend.KeepaliveManager`` and the methods of
    fastka._keepalive.Keepalive over this backend's primitives (``backend.set_keepalive``,
    ...). ``fastka.set_keepalive`` is the default backend's."""

    def __init__(self, name: str, keepalive: ModuleType, manager: ModuleType) -> None:
        super().__init__(keepalive)
        self.name = name
        self.keepalive = keepalive
        self.manager = manager
        self.KeepaliveManager = manager.KeepaliveManager

    def __repr__(self) -> str:
        return f"<fastka backend {self.name!r}>"

    def __reduce__(self) -> Tuple[Any, Tuple[str]]:
        """Pickled by name, so that ``pickle.dumps(fastka.set_keepalive)`` works as it does
        for a module-level function."""
        return load, (self.name,)


_loaded: Dict[str, Backend] = {}


def extensions_disabled() -> bool:
    """Whether FASTKA_NO_EXTENSIONS asks for the fallback."""
    return os.environ.get(ENV_NO_EXTENSIONS, "") not in ("", "0")


def load(name: str) -> Backend:
    """The backend called ``name`` ("c" or "python").

    Raises ValueError for another name and BackendUnavailable when its modules do not
    import (the compiled one is not built, or failed to load).
    """
    if name not in _MODULES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, NAMES))}, not {name!r}")
    backend = _loaded.get(name)
    if backend is None:
        try:
            modules = [importlib.import_module(m) for m in _MODULES[name]]
        except ImportError as exc:
            raise BackendUnavailable(f"the {name!r} backend is not available: {exc}") from exc
        backend = _loaded[name] = Backend(name, *modules)
    return backend


def unavailable_reason(name: str) -> Optional[str]:
    """None when :func:`load` gives backend ``name``, else why it cannot."""
    try:
        load(name)
    except BackendUnavailable as exc:
        return str(exc)
    return None


def available(names: Sequence[str] = NAMES) -> Tuple[List[Backend], Dict[str, str]]:
    """The backends of ``names`` that can run here, in the order given, and why each of
    the others cannot (``{name: reason}``): not built, or FASTKA_NO_EXTENSIONS forbids
    every backend but "python". What the CLI and the benchmarks compare side by side."""
    chosen: List[Backend] = []
    reasons: Dict[str, str] = {}
    for name in names:
        if name != "python" and extensions_disabled():
            reasons[name] = f"{ENV_NO_EXTENSIONS}={os.environ[ENV_NO_EXTENSIONS]} forces the python backend"
            continue
        try:
            chosen.append(load(name))
        except BackendUnavailable as exc:
            reasons[name] = str(exc)
    return chosen, reasons


def default() -> Backend:
    """The backend this process uses: the compiled one when it loads and
    FASTKA_NO_EXTENSIONS does not forbid it, else the fallback."""
    if not extensions_disabled():
        try:
            return load("c")
        except BackendUnavailable:
            pass
    return load("python")
