"""botocore / boto3: fastka's pools under a client. botocore builds its urllib3 pools in
URLLib3Session and has no public hook for another session class, so the recipe swaps the
session of a client that exists (``client._endpoint.http_session``, botocore's private
attribute) for one that keeps every setting of the old one (timeouts, pool size, TLS,
proxies, socket options) and puts fastka's checkout rule on botocore's own connection
classes."""
from typing import Any, Dict, Optional, Type

import botocore.awsrequest  # type: ignore[import-untyped]
import botocore.httpsession  # type: ignore[import-untyped]
import urllib3

import fastka
import fastka.pools


class AWSHTTPConnectionPool(fastka.pools.HTTPConnectionPool):
    ConnectionCls = botocore.awsrequest.AWSHTTPConnection


class AWSHTTPSConnectionPool(fastka.pools.HTTPSConnectionPool):
    ConnectionCls = botocore.awsrequest.AWSHTTPSConnection


POOL_CLASSES: Dict[str, Type[fastka.pools.HTTPConnectionPool]] = {"http": AWSHTTPConnectionPool, "https": AWSHTTPSConnectionPool}


class FastkaSession(botocore.httpsession.URLLib3Session):  # type: ignore[misc]
    """URLLib3Session on fastka.pools; ``fastka_kwargs`` holds PoolManager's keyword arguments
    (keepalive, idle_timeout, max_age, jitter, margin)."""

    _manager: Any

    def __init__(self, fastka_kwargs: Dict[str, Any], **session_kwargs: Any) -> None:
        self._fastka_kwargs = fastka_kwargs
        super().__init__(**session_kwargs)
        self._manager.clear()
        self._manager = fastka.pools.PoolManager(**fastka_kwargs, **self._get_pool_manager_kwargs())
        self._manager.pool_classes_by_scheme = POOL_CLASSES

    def _get_proxy_manager(self, proxy_url: str) -> Any:
        if proxy_url not in self._proxy_managers:
            kwargs = self._get_pool_manager_kwargs(proxy_headers=self._proxy_config.proxy_headers_for(proxy_url))
            kwargs.update(self._proxies_kwargs(proxy_ssl_context=self._setup_proxy_ssl_context(proxy_url)))
            manager = fastka.pools.ProxyManager(proxy_url, **self._fastka_kwargs, **kwargs)
            manager.pool_classes_by_scheme = POOL_CLASSES
            self._proxy_managers[proxy_url] = manager
        return self._proxy_managers[proxy_url]


def use_fastka_pools(
    client: Any,
    *,
    keepalive: Optional[fastka.KeepaliveConfig] = None,
    idle_timeout: Optional[float] = None,
    max_age: Optional[float] = None,
    jitter: float = 0.1,
    margin: float = 1.0,
) -> Any:
    """Put ``client`` (boto3.client(...) or botocore's) on fastka's pools; returns it."""
    old = client._endpoint.http_session
    proxies = old._proxy_config
    client_cert = (old._cert_file, old._key_file) if old._key_file else old._cert_file
    timeout = old._timeout  # a number, or the urllib3.Timeout botocore made of a pair
    if isinstance(timeout, urllib3.Timeout):
        timeout = (timeout.connect_timeout, timeout.read_timeout)
    client._endpoint.http_session = FastkaSession(
        {"keepalive": keepalive, "idle_timeout": idle_timeout, "max_age": max_age, "jitter": jitter, "margin": margin},
        verify=old._verify,
        proxies=proxies._proxies,
        timeout=timeout,
        max_pool_connections=old._max_pool_connections,
        socket_options=old._socket_options,
        client_cert=client_cert,
        proxies_config=proxies._proxies_settings,
    )
    old.close()
    return client
