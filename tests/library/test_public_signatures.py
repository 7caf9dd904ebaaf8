"""Every public name of fastka as readers, help() and type checkers see it: the stubs of
fastka/__init__.pyi are the signatures ``inspect.signature`` gives at run time on both
backends, and help() shows each callable's signature and docstring."""
from __future__ import annotations

import ast
import inspect
import os
import pydoc
import re
from typing import Any, Dict, List, Tuple

import pytest

import fastka
from fastka import _keepalive
STUB = os.path.join(os.path.dirname(fastka.__file__), "__init__.pyi")  # the one the package ships

NO_DEFAULT = inspect.Parameter.empty
ANY_DEFAULT = object()  # the stub says "= ...": some default, not named there


def _stub() -> Tuple[ast.Module, Dict[str, List[ast.AST]]]:
    """The parsed stub and its top-level definitions by name (an overloaded function
    has several)."""
    with open(STUB) as f:
        tree = ast.parse(f.read())
    defs: Dict[str, List[ast.AST]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defs.setdefault(node.name, []).append(node)
    return tree, defs


def _stub_all(tree: ast.Module) -> List[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["__all__"]:
            return ast.literal_eval(node.value)
    raise AssertionError("the stub has no __all__")


def _stub_params(fn: ast.FunctionDef, skip_self: bool) -> List[Tuple[str, Any, Any, str]]:
    """(name, kind, default, annotation) of each parameter of a stub ``def``, as
    inspect.Parameter spells them (default ANY_DEFAULT for ``...``)."""
    a = fn.args
    positional = a.posonlyargs + a.args
    defaults: List[Any] = [NO_DEFAULT] * (len(positional) - len(a.defaults)) + list(a.defaults)
    kinds = [inspect.Parameter.POSITIONAL_ONLY] * len(a.posonlyargs) + [inspect.Parameter.POSITIONAL_OR_KEYWORD] * len(a.args)
    rows = list(zip(positional, kinds, defaults))
    if a.vararg:
        rows.append((a.vararg, inspect.Parameter.VAR_POSITIONAL, NO_DEFAULT))
    rows += [(arg, inspect.Parameter.KEYWORD_ONLY, d if d is not None else NO_DEFAULT) for arg, d in zip(a.kwonlyargs, a.kw_defaults)]
    if a.kwarg:
        rows.append((a.kwarg, inspect.Parameter.VAR_KEYWORD, NO_DEFAULT))
    if skip_self:
        rows = rows[1:]
    out = []
    for arg, kind, default in rows:
        if isinstance(default, ast.AST):
            default = ANY_DEFAULT if isinstance(default, ast.Constant) and default.value is ... else ast.literal_eval(default)
        out.append((arg.arg, kind, default, ast.unparse(arg.annotation) if arg.annotation else NO_DEFAULT))
    return out


def _runtime_params(obj: Any) -> List[Tuple[str, Any, Any, Any]]:
    return [(p.name, p.kind, p.default, p.annotation) for p in inspect.signature(obj).parameters.values()]


def _check(obj: Any, defs: List[ast.FunctionDef], what: str, skip_self: bool = False, annotations: bool = True) -> None:
    """The run-time signature of ``obj`` is the stub's ``defs`` (one, or the overloads of
    one function: then names, kinds and defaults are checked, not the annotations; nor
    with ``annotations=False``, for methods compiled without them)."""
    annotations = annotations and len(defs) == 1
    runtime = _runtime_params(obj)
    for fn in defs:
        stub = _stub_params(fn, skip_self)
        assert [(n, k) for n, k, _, _ in runtime] == [(n, k) for n, k, _, _ in stub], f"{what}: parameters differ"
        for (name, _, default, annotation), (_, _, stub_default, stub_annotation) in zip(runtime, stub):
            if stub_default is ANY_DEFAULT:
                assert default is not NO_DEFAULT, f"{what}({name}): the stub gives a default, the code none"
            elif len(defs) == 1 or stub_default is not NO_DEFAULT:
                assert default == stub_default, f"{what}({name}): default {default!r} in the code, {stub_default!r} in the stub"
            if annotations:
                assert annotation == stub_annotation, f"{what}({name}): annotation {annotation!r} in the code, {stub_annotation!r} in the stub"
        if annotations and not isinstance(obj, type):  # a class's signature has no return
            returns = inspect.signature(obj).return_annotation
            assert returns == ast.unparse(fn.returns), f"{what}: returns {returns!r} in the code, {ast.unparse(fn.returns)!r} in the stub"


def _flat(text: str) -> str:
    """``text`` without white space, pydoc's margins, quotes or trailing commas: pydoc 3.13
    and later break a long signature over lines, and 3.14 shows string annotations unquoted."""
    return re.sub(r"\s+|\||'", "", text).replace(",)", ")")


def _check_help(obj: Any, name: str) -> None:
    text = pydoc.render_doc(obj, renderer=pydoc.plaintext)
    assert _flat(str(inspect.signature(obj))) in _flat(text), f"help({name}) does not show its signature"
    first = inspect.getdoc(obj).splitlines()[0]
    assert first and first in text, f"help({name}) does not show its docstring"


def test_the_stub_names_every_public_name():
    tree, defs = _stub()
    assert _stub_all(tree) == fastka.__all__
    imported = {alias.asname for node in tree.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    annotated = {node.target.id for node in tree.body if isinstance(node, ast.AnnAssign)}
    for name in fastka.__all__:
        assert name in defs or name in imported or name in annotated, f"fastka.{name} is not in the stub"
    for name in imported & set(fastka.__all__):  # re-exported: the stub points at the very object
        node = next(n for n in tree.body if isinstance(n, ast.ImportFrom) and name in {a.asname for a in n.names})
        module = __import__(f"fastka.{node.module}", fromlist=[name])
        assert getattr(fastka, name) is getattr(module, name)


def test_every_public_function_is_the_stub_on_both_backends(backend):
    _, defs = _stub()
    functions = [name for name, d in defs.items() if isinstance(d[0], ast.FunctionDef)]
    assert sorted(functions) == sorted(_keepalive.PUBLIC)
    for name in functions:
        fn = getattr(backend, name)
        _check(fn, defs[name], name)
        _check_help(fn, name)
        assert inspect.getsourcefile(fn).endswith(os.path.join("fastka", "_keepalive.py")), name  # go to definition
    for method in ("add", "remove", "discard", "touch", "poll", "fileno", "next_deadline", "close"):
        inspect.signature(getattr(backend.KeepaliveManager, method))  # compiled too (binding=True)


def test_every_public_class_and_function_of_other_modules_has_a_signature_and_help():
    for name in fastka.__all__:
        obj = getattr(fastka, name)
        if name in ("IMPLEMENTATION", "KeepaliveManager", "SocketLike") or not callable(obj):
            continue
        inspect.signature(obj)
        _check_help(obj, name)


def test_the_manager_is_the_stub_on_both_backends(backend):
    _, defs = _stub()
    cls = backend.KeepaliveManager
    methods = {m.name: m for m in defs["KeepaliveManager"][0].body if isinstance(m, ast.FunctionDef)}
    _check(cls, [methods.pop("__init__")], "KeepaliveManager", skip_self=True)
    _check_help(cls, "KeepaliveManager")
    for name, fn in methods.items():  # the compiled class's methods carry no annotations
        if not name.startswith("__"):  # slot wrappers (__len__, ...) are positional-only in C
            _check(getattr(cls, name), [fn], f"KeepaliveManager.{name}", annotations=False)


def test_public_functions_pickle_by_name(backend):
    import pickle

    for name in ("set_keepalive", "find_dead"):
        fn = getattr(backend, name)
        assert pickle.loads(pickle.dumps(fn)) == fn


def test_the_check_catches_a_stub_that_differs():
    """The comparison itself: a stub with another default, kind or annotation fails."""
    def code(sock: SocketLike, config: Optional[KeepaliveConfig] = None, *, idle: Optional[Seconds] = None) -> KeepaliveConfig:  # noqa: F821
        ...
    for stub in ("def f(sock: SocketLike, config: Optional[KeepaliveConfig] = 1, *, idle: Optional[Seconds] = None) -> KeepaliveConfig: ...",
                 "def f(sock: SocketLike, config: Optional[KeepaliveConfig] = None, idle: Optional[Seconds] = None) -> KeepaliveConfig: ...",
                 "def f(sock: int, config: Optional[KeepaliveConfig] = None, *, idle: Optional[Seconds] = None) -> KeepaliveConfig: ...",
                 "def f(sock: SocketLike, config: Optional[KeepaliveConfig] = None, *, idle: Optional[Seconds] = None) -> None: ..."):
        with pytest.raises(AssertionError):
            _check(code, [ast.parse(stub).body[0]], "f")
    _check(code, [ast.parse("def f(sock: SocketLike, config: Optional[KeepaliveConfig] = None, *, "
                            "idle: Optional[Seconds] = ...) -> KeepaliveConfig: ...").body[0]], "f")
