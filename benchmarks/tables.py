"""The tables the benchmarks print, in the two forms the docs take: reStructuredText
list-tables (docs/) and Markdown (README.md)."""
from __future__ import annotations

from typing import List, Sequence


def rst(head: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    """A ``list-table`` with a header row."""
    out = [f"{indent}.. list-table::", f"{indent}   :header-rows: 1", ""]
    for row in [head, *rows]:
        for i, cell in enumerate(row):
            out.append(f"{indent}   {'* -' if i == 0 else '  -'} {cell}".rstrip())
    return "\n".join(out)


def markdown(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines: List[str] = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
