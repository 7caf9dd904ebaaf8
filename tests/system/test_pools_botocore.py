"""docs/examples/botocore_recipe.py: a boto3 S3 client on fastka's pools, against a small
loopback server that answers ListBuckets with ``Keep-Alive: timeout=5``, on both
backends: the client's session is fastka's, keepalive reaches the socket, botocore's own
connection classes stay, and a connection is not reused past the hint minus the margin
(fake clock); a plain client reuses it."""
from __future__ import annotations

import os

import pytest
from conftest import FakeClock
from integrations import EXAMPLES, load_recipe
from pool_servers import pool_test_server

import fastka

pytestmark = pytest.mark.skipif(not os.path.isdir(EXAMPLES), reason="docs/examples/ is not beside the tests")
boto3 = pytest.importorskip("boto3", reason="boto3 is not installed (pip install -e '.[test]')")
pools_urllib3 = pytest.importorskip("fastka.pools._urllib3")

LIST_BUCKETS = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<ListAllMyBucketsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    b"<Owner><ID>fastka</ID></Owner><Buckets></Buckets></ListAllMyBucketsResult>"
)


def s3(url: str):
    return boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1",
        aws_access_key_id="fastka", aws_secret_access_key="fastka",
    )


@pytest.mark.parametrize("recipe_on", [True, False], ids=["fastka", "plain"])
def test_boto3_client_on_fastka_pools(on_backend, monkeypatch, recipe_on):
    recipe = load_recipe("botocore_recipe")
    clock = FakeClock()
    monkeypatch.setattr(pools_urllib3, "monotonic", clock)
    cfg = fastka.KeepaliveConfig(idle=19, interval=3, count=2)
    with pool_test_server() as srv:
        srv.body, srv.keep_alive = LIST_BUCKETS, 5
        client = s3(srv.url)
        try:
            if recipe_on:
                recipe.use_fastka_pools(client, keepalive=cfg, margin=1.0)
                session = client._endpoint.http_session
                assert isinstance(session, recipe.FastkaSession)
                assert isinstance(session._manager, fastka.pools.PoolManager)
            assert client.list_buckets()["Buckets"] == []
            assert client.list_buckets()["Buckets"] == []
            assert srv.accepted == 1
            if recipe_on:
                (key,) = session._manager.pools.keys()
                pool = session._manager.pools[key]
                assert isinstance(pool, recipe.AWSHTTPConnectionPool)
                (conn,) = [c for c in pool.pool.queue if c is not None and c.sock is not None]
                assert type(conn).__name__ == "AWSHTTPConnection"
                assert fastka.get_keepalive(conn.sock).idle == 19
            clock.now += 4.0  # the hint (5 s) minus the margin (1 s)
            assert client.list_buckets()["Buckets"] == []
            assert srv.accepted == (2 if recipe_on else 1)
        finally:
            client.close()
