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
from typing import List, Optional, Tuple

from .. import __version__

COMMANDS = (
    ("info", "fastka.cli.info", "show the backend, the kernel's keepalive defaults and the open-file limit"),
    ("demo", "fastka.cli.demo", "open thousands of loopback connections and watch the manager sort them"),
    ("serve", "fastka.cli.serve", "run the HTTP/1.x keep-alive reference server"),
    ("bench", "fastka.cli.bench", "benchmark both backends against the bare system calls"),
)


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


PORT_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"


def loopback_room(fds_each: int, reserved_fds: int) -> Tuple[int, str]:
    """The most loopback connections to one listener a subcommand can open, each using
    ``fds_each`` fds of this process, and what sets that bound (for error messages).

    Two bounds: the open-file limit less ``reserved_fds``, and the ephemeral port range
    (each connection from 127.0.0.1 to one listener takes a port of it) less a tenth,
    left to other programs' listeners in the range."""
    limit = raise_fd_limit()
    room = max(0, (limit - reserved_fds) // fds_each)
    why = f"the open-file limit {limit} less {reserved_fds} fds" + (f", {fds_each} fds each" if fds_each > 1 else "")
    try:
        with open(PORT_RANGE) as f:
            low, high = map(int, f.read().split())
    except (OSError, ValueError):  # not Linux: the open-file limit alone
        return room, why
    ports = (high - low + 1) * 9 // 10
    if ports < room:
        return ports, f"the ephemeral port range {low}..{high} less a tenth"
    return room, why


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


def _error_text(exc: BaseException) -> str:
    """An exception as one line: the OS's words for an OSError ("No space left on device")."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


def _flush_or_drop() -> None:
    """Flush stdout; when that fails (the disk is full), drop what it holds so that the
    interpreter's last flush stays quiet."""
    try:
        sys.stdout.flush()
    except OSError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        try:
            sys.stdout.flush()
        except OSError:
            pass


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line ``argv``; returns the exit status: the subcommand's (0 with the
    help on stdout when ``argv`` is empty), 2 for bad arguments, 1 with one ``fastka CMD: error: ...`` line when the system refused (an
    OSError, e.g. stdout on a full disk) or a run's check failed (RuntimeError), 130 on
    Ctrl-C; killed by SIGPIPE when stdout's reader went away."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    prog = f"fastka {command}" if command else "fastka"
    if sys.stdout is None:  # started with fd 1 closed: a socket opened now would take it
        print(f"{prog}: error: standard output is closed", file=sys.stderr)
        return 1
    try:
        parser = build_parser(argv)
        if not argv:  # `fastka` alone: the help, as `fastka --help` prints it
            parser.print_help()
            status = 0
        else:
            args = parser.parse_args(argv)
            status = importlib.import_module(args._module).run(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return status
    except BrokenPipeError as exc:
        if _stdout_closed():
            return _closed_pipe()
        error: BaseException = exc  # EPIPE from a socket of the subcommand
    except (OSError, RuntimeError) as exc:
        error = exc
    except KeyboardInterrupt:
        return 130
    _flush_or_drop()
    print(f"{prog}: error: {_error_text(error)}", file=sys.stderr)
    return 1
