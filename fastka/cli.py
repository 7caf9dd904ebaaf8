"""The ``fastka`` command: ``info``, ``demo``, ``serve``, ``bench``.

Each subcommand lives in its own module with ``add_arguments(parser)`` and ``run(args)``;
modules are imported only when their subcommand runs.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

COMMANDS = (
    ("info", "fastka._info", "show the backend, kernel keepalive defaults, io_uring and fd limit"),
    ("demo", "fastka._demo", "open thousands of loopback connections and watch the manager sort them"),
    ("serve", "fastka._serve", "run the HTTP/1.x keep-alive reference server"),
    ("bench", "fastka._bench", "benchmark both backends against the bare system calls"),
)



def build_parser(argv: List[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastka",
        description="TCP keepalive configuration and keep-alive connection management.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, modname, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        p.set_defaults(_module=modname)
        if name == wanted:
            importlib.import_module(modname).add_arguments(p)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return importlib.import_module(args._module).run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
