"""aiohttp client: a socket factory that configures each socket before it connects."""
import socket
from typing import Callable

import aiohttp

import fastka


def socket_factory(cfg: fastka.KeepaliveConfig) -> Callable[[aiohttp.AddrInfoType], socket.socket]:
    def make(addr_info: aiohttp.AddrInfoType) -> socket.socket:
        family, type_, proto, _, _ = addr_info
        sock = socket.socket(family, type_, proto)
        try:
            fastka.set_keepalive(sock, cfg)
        except BaseException:
            sock.close()
            raise
        return sock

    return make


def session(cfg: fastka.KeepaliveConfig) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(socket_factory=socket_factory(cfg)))
