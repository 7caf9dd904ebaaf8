"""fastka pools for requests: an HTTPAdapter whose urllib3 pools are fastka's."""
from __future__ import annotations

from typing import Any

try:
    import requests.adapters
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(f"fastka.pools.HTTPAdapter needs requests ({exc}): pip install 'fastka[requests]'") from exc

from ._rule import RuleOptions
from ._urllib3 import PoolManager, ProxyManager

__all__ = ["HTTPAdapter"]


class HTTPAdapter(RuleOptions, requests.adapters.HTTPAdapter):
    """A ``requests.adapters.HTTPAdapter`` on fastka's urllib3 pools (direct and through
    HTTP/HTTPS proxies; SOCKS proxies keep urllib3's own pools).

    Mount it for the schemes it should serve::

        session.mount("https://", HTTPAdapter(keepalive=cfg, idle_timeout=30, max_age=300))

    The keyword arguments are those of :class:`fastka.pools.PoolManager`; the rest
    (pool_connections, pool_maxsize, max_retries, pool_block) go to requests' adapter.
    """

    __attrs__ = [*requests.adapters.HTTPAdapter.__attrs__, "fastka_rule"]

    # requests' __init__ calls init_poolmanager: RuleOptions sets fastka_rule before it

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        self._pool_connections = connections
        self._pool_maxsize = maxsize
        self._pool_block = block
        self.poolmanager = PoolManager(
            num_pools=connections, maxsize=maxsize, block=block, keepalive=self.fastka_rule.keepalive, **pool_kwargs
        )
        self.poolmanager.fastka_rule = self.fastka_rule

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        if proxy in self.proxy_manager or proxy.lower().startswith("socks"):
            return super().proxy_manager_for(proxy, **proxy_kwargs)
        manager = ProxyManager(
            proxy,
            proxy_headers=self.proxy_headers(proxy),
            num_pools=self._pool_connections,
            maxsize=self._pool_maxsize,
            block=self._pool_block,
            keepalive=self.fastka_rule.keepalive,
            **proxy_kwargs,
        )
        manager.fastka_rule = self.fastka_rule
        self.proxy_manager[proxy] = manager
        return manager
