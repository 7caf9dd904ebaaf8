"""gunicorn: ``gunicorn -c gunicorn_conf.py app:app`` configures the listeners once, in the
arbiter, before the workers start; accepted connections inherit it (Linux)."""
from gunicorn.arbiter import Arbiter

import fastka

CONFIG = fastka.KeepaliveConfig(idle=60, interval=10, count=5, user_timeout=110)


def when_ready(server: Arbiter) -> None:
    for listener in server.LISTENERS:
        fastka.set_keepalive(listener, CONFIG)
