"""Client pools that never hand out a pooled connection that is dead or that the server is
about to close: urllib3 (:class:`PoolManager`, :class:`ProxyManager`), requests
(:class:`HTTPAdapter`) and aiohttp (:class:`TCPConnector`).

Each class imports its client library when it is first used (``import fastka.pools``
imports none of them); a missing library is an ImportError naming the extra to install
(``pip install 'fastka[urllib3]'``, ``'fastka[requests]'``, ``'fastka[aiohttp]'``).
The checkout rule they share is described in the docs (docs/pools.rst).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._aiohttp import TCPConnector as TCPConnector
    from ._requests import HTTPAdapter as HTTPAdapter
    from ._urllib3 import HTTPConnectionPool as HTTPConnectionPool
    from ._urllib3 import HTTPSConnectionPool as HTTPSConnectionPool
    from ._urllib3 import PoolManager as PoolManager
    from ._urllib3 import ProxyManager as ProxyManager

_MODULES = {
    "PoolManager": "_urllib3",
    "ProxyManager": "_urllib3",
    "HTTPConnectionPool": "_urllib3",
    "HTTPSConnectionPool": "_urllib3",
    "HTTPAdapter": "_requests",
    "TCPConnector": "_aiohttp",
}

__all__ = sorted(_MODULES)


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'fastka.pools' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULES))
