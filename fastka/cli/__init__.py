"""The ``fastka`` command (also ``python -m fastka``): ``info``, ``demo``, ``serve``, ``bench``.

Each subcommand is a module of this package with ``add_arguments(parser)`` and
``run(args) -> int``; a module is imported only when its subcommand runs.
"""
from __future__ import annotations

import argparse
import importlib
import os
import select
import signal
import sys
from typing import Dict, List, Optional, Tuple

from .. import __version__, _compat

COMMANDS = (
    ("info", "fastka.cli.info", "show the backend, the kernel's keepalive defaults and the open-file limit"),
    ("demo", "fastka.cli.demo", "open thousands of loopback connections and watch the manager sort them"),
    ("serve", "fastka.cli.serve", "run the HTTP/1.x keep-alive reference server"),
    ("bench", "fastka.cli.bench", "benchmark both backends against the bare system calls"),
)


def backends() -> Tuple[List[_compat.Backend], Dict[str, str]]:
    """The backends a subcommand compares (in ``_compat.NAMES`` order), and why each one
    left out is: FASTKA_NO_EXTENSIONS leaves only "python"."""
    chosen: List[_compat.Backend] = []
    skipped: Dict[str, str] = {}
    for name in _compat.NAMES:
        if name != "python" and _compat.extensions_disabled():
            value = os.environ[_compat.ENV_NO_EXTENSIONS]
            skipped[name] = f"{_compat.ENV_NO_EXTENSIONS}={value} forces the python backend"
            continue
        try:
            chosen.append(_compat.load(name))
        except _compat.BackendUnavailable as exc:
            skipped[name] = str(exc)
    return chosen, skipped


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one where allowed; returns the soft
    limit now in force (1 << 20 for unlimited, 512 where there is no such limit)."""
    try:
        import resource
    except ImportError:  # Windows
        return 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def build_parser(argv: List[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastka",
        description="TCP keepalive configuration and keep-alive connection management.",
    )
    parser.add_argument("--version", action="version", version=f"fastka {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, modname, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        p.set_defaults(_module=modname)
        if name == wanted:
            importlib.import_module(modname).add_arguments(p)
    return parser


def _stdout_closed() -> bool:
    """Whether stdout's reader has gone away (a pipe or socket whose other end closed)."""
    if not hasattr(select, "poll"):
        return True  # no poll (Windows): a BrokenPipeError there is stdout's
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))


def _closed_pipe() -> int:
    """End as a Unix tool does when its reader went away (``fastka info | head -1``):
    killed by SIGPIPE without a word (status 141 in the shell); 1 where there is no
    SIGPIPE. stdout goes to devnull first so that the final flush stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGPIPE)
    return 1


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(argv).parse_args(argv)
        status = importlib.import_module(args._module).run(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return status
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # EPIPE from a socket of the subcommand: a bug, not a closed pipe
        return _closed_pipe()
    except KeyboardInterrupt:
        return 130
