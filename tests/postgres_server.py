"""A throw-away PostgreSQL server for the database recipe tests: initdb + pg_ctl from
Debian's /usr/lib/postgresql/*/bin, run as the ``postgres`` user (the server refuses to
run as root) in a temporary directory, trust authentication, on a free loopback port.
``postgres_server()`` skips the test with the reason when that cannot be done."""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from typing import Iterator, List, Optional

from integrations import free_port


def _bin() -> Optional[str]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return os.path.dirname(found[-1]) if found else None


def skip_reason() -> Optional[str]:
    if _bin() is None:
        return "PostgreSQL is not installed (apt-get install postgresql; .ci/run does)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "there is no 'postgres' user to run the server as"
    if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != "postgres":
        return "starting PostgreSQL as 'postgres' needs root (or running as postgres)"
    return None


def _as_postgres(argv: List[str]) -> List[str]:
    if pwd.getpwuid(os.geteuid()).pw_name == "postgres":
        return argv
    runuser = shutil.which("runuser")
    return [runuser, "-u", "postgres", "--", *argv] if runuser else ["su", "postgres", "-c", " ".join(argv)]


class PostgresServer:
    def __init__(self, port: int, directory: str) -> None:
        self.port = port
        self.directory = directory
        self.conninfo = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    import pytest

    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    bindir = _bin()
    assert bindir is not None
    top = tempfile.mkdtemp(prefix="fastka-pg-")
    os.chmod(top, 0o755)
    data = os.path.join(top, "data")
    postgres = pwd.getpwnam("postgres")
    os.chown(top, postgres.pw_uid, postgres.pw_gid)
    ctl = os.path.join(bindir, "pg_ctl")
    log = os.path.join(top, "log")
    try:
        init = subprocess.run(
            _as_postgres([os.path.join(bindir, "initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"]),
            capture_output=True, text=True, timeout=120,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stdout}{init.stderr}")
        for attempt in range(3):  # a free port can be taken by someone else before the server binds it
            port = free_port()
            start = subprocess.run(
                _as_postgres([ctl, "-D", data, "-l", log, "-w", "-t", "60", "-o",
                              f"-p {port} -k {top} -c listen_addresses=127.0.0.1 -c fsync=off", "start"]),
                capture_output=True, text=True, timeout=90,
            )
            if start.returncode == 0:
                break
            why = ""
            if os.path.exists(log):
                with open(log, errors="replace") as f:
                    why = f.read()
            if "already in use" not in why or attempt == 2:
                raise RuntimeError(f"PostgreSQL did not start: {start.stdout}{start.stderr}\n{why[-2000:]}")
        yield PostgresServer(port, top)
    finally:
        subprocess.run(_as_postgres([ctl, "-D", data, "-m", "immediate", "-w", "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(top, ignore_errors=True)
