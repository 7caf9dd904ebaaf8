"""httpx: the transports take socket options, sync and async alike."""
import httpx

import fastka


def client(cfg: fastka.KeepaliveConfig) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(socket_options=cfg.socket_options()))


def async_client(cfg: fastka.KeepaliveConfig) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(socket_options=cfg.socket_options()))
