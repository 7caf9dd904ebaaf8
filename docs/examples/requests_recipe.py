"""requests: a transport adapter that hands fastka's socket options to urllib3's pool."""
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection

import fastka


class KeepaliveAdapter(HTTPAdapter):
    def __init__(self, cfg: fastka.KeepaliveConfig, **kwargs: Any) -> None:
        # urllib3's defaults (TCP_NODELAY) and fastka's options, in one list of (level, option, value)
        self.socket_options: list[tuple[int, int, int | bytes]] = [
            *HTTPConnection.default_socket_options, *cfg.socket_options()]
        super().__init__(**kwargs)  # calls init_poolmanager

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, socket_options=self.socket_options, **pool_kwargs)


def session(cfg: fastka.KeepaliveConfig) -> requests.Session:
    s = requests.Session()
    adapter = KeepaliveAdapter(cfg)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s
