"""Every public name of fastka as readers, help() and type checkers see it. fastka has no
stub: type checkers read fastka/__init__.py, whose functions are the methods of
fastka/_keepalive.py's Keepalive and whose manager is typed as fastka/_manager_py.py's;
here both backends give those signatures at run time, and help() shows each callable's
signature and docstring."""
from __future__ import annotations

import inspect
import os
import pydoc
import re
from typing import Any, List, Tuple

import fastka
from fastka import _keepalive, _manager, _manager_py


def _flat(text: str) -> str:
    """``text`` without white space, pydoc's margins, quotes or trailing commas: pydoc 3.13
    and later break a long signature over lines, and 3.14 shows string annotations unquoted."""
    return re.sub(r"\s+|\||'", "", text).replace(",)", ")")


def _check_help(obj: Any, name: str) -> None:
    text = pydoc.render_doc(obj, renderer=pydoc.plaintext)
    assert _flat(str(inspect.signature(obj))) in _flat(text), f"help({name}) does not show its signature"
    first = inspect.getdoc(obj).splitlines()[0]
    assert first and first in text, f"help({name}) does not show its docstring"


def _params(obj: Any) -> List[Tuple[str, Any, Any]]:
    """(name, kind, default) of each parameter: the compiled methods carry no annotations."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(obj).parameters.values()]


def test_every_public_function_is_the_keepalive_method_on_both_backends(backend):
    assert set(_keepalive.PUBLIC) <= set(fastka.__all__)
    for name in _keepalive.PUBLIC:
        fn = getattr(backend, name)
        method = list(inspect.signature(getattr(_keepalive.Keepalive, name)).parameters.values())
        assert list(inspect.signature(fn).parameters.values()) == method[1:], name
        _check_help(fn, name)
        assert inspect.getsourcefile(fn).endswith(os.path.join("fastka", "_keepalive.py")), name  # go to definition


def test_every_public_class_and_function_of_other_modules_has_a_signature_and_help():
    for name in fastka.__all__:
        obj = getattr(fastka, name)
        if name in ("IMPLEMENTATION", "KeepaliveManager", "SocketLike") or not callable(obj):
            continue
        inspect.signature(obj)
        _check_help(obj, name)


def test_the_manager_is_the_typed_one_on_both_backends(backend):
    """Both classes take the constructor of fastka._manager.settings and have the methods
    of the pure-Python class that type checkers read (names, kinds, defaults)."""
    cls = backend.KeepaliveManager
    assert inspect.signature(cls) == _manager.SIGNATURE
    _check_help(cls, "KeepaliveManager")
    for name, method in vars(_manager_py.KeepaliveManager).items():
        if callable(method) and not name.startswith("_"):
            assert _params(getattr(cls, name)) == _params(method), f"KeepaliveManager.{name}"


def test_public_functions_pickle_by_name(backend):
    import pickle

    for name in ("set_keepalive", "find_dead"):
        fn = getattr(backend, name)
        assert pickle.loads(pickle.dumps(fn)) == fn
