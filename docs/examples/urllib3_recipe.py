"""urllib3: fastka's keepalive on every pooled connection, beside urllib3's own TCP_NODELAY."""
import urllib3
from urllib3.connection import HTTPConnection

import fastka


def pool_manager(cfg: fastka.KeepaliveConfig) -> urllib3.PoolManager:
    # socket_options replaces urllib3's defaults: add to them to keep TCP_NODELAY.
    return urllib3.PoolManager(socket_options=HTTPConnection.default_socket_options + cfg.socket_options())
