"""KeepaliveConfig.libpq_params(): the config as libpq's connection parameters (strings;
seconds, probes, and tcp_user_timeout in milliseconds only when set). The real server's
view of them is tests/system/test_pools_postgres.py."""
from __future__ import annotations

import fastka


def test_libpq_params():
    cfg = fastka.KeepaliveConfig(idle=30, interval=5, count=4)
    assert cfg.libpq_params() == {
        "keepalives": "1",
        "keepalives_idle": "30",
        "keepalives_interval": "5",
        "keepalives_count": "4",
    }


def test_user_timeout_in_whole_milliseconds():
    assert fastka.KeepaliveConfig(user_timeout=2.007).libpq_params()["tcp_user_timeout"] == "2007"
    assert fastka.KeepaliveConfig(user_timeout=0).libpq_params()["tcp_user_timeout"] == "0"


def test_fractions_round_up_as_the_config_does():
    params = fastka.KeepaliveConfig(idle=1.2, interval=0.5).libpq_params()
    assert (params["keepalives_idle"], params["keepalives_interval"]) == ("2", "1")


def test_within_gives_libpq_what_it_gives_the_socket():
    cfg = fastka.KeepaliveConfig.within(350)
    params = cfg.libpq_params()
    assert [int(params[k]) for k in ("keepalives_idle", "keepalives_interval", "keepalives_count")] == [
        cfg.idle, cfg.interval, cfg.count,
    ]
