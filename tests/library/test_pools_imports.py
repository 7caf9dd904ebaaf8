"""The client libraries stay optional: ``import fastka`` (and ``import fastka.pools``)
imports none of them, and a pool class whose library is missing is an ImportError naming
the extra to install. Each case runs in a fresh interpreter."""
from __future__ import annotations

import subprocess
import sys

import pytest
from repo import ROOT

LIBRARIES = ("urllib3", "requests", "aiohttp", "psycopg", "psycopg2", "psycopg_pool", "asyncpg", "sqlalchemy", "botocore")


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_import_fastka_imports_no_client_library():
    code = (
        "import sys, fastka, fastka.pools\n"
        f"print(sorted(m for m in {LIBRARIES!r} if m in sys.modules))\n"
    )
    done = python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "name, blocked, extra",
    [
        ("PoolManager", "urllib3", "fastka[urllib3]"),
        ("ProxyManager", "urllib3", "fastka[urllib3]"),
        ("HTTPAdapter", "requests", "fastka[requests]"),
        ("TCPConnector", "aiohttp", "fastka[aiohttp]"),
    ],
)
def test_missing_library_names_the_extra(name, blocked, extra):
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "import fastka.pools\n"
        "try:\n"
        f"    fastka.pools.{name}\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('imported')\n"
    )
    done = python(code)
    assert done.returncode == 0, done.stderr
    assert extra in done.stdout and blocked in done.stdout and f"fastka.pools." in done.stdout


def test_unknown_name_is_an_attribute_error():
    import fastka.pools

    with pytest.raises(AttributeError, match="Pool"):
        fastka.pools.Pool  # noqa: B018
