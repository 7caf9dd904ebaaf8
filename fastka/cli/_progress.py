"""A tiny progress bar on stderr, for the command line (no dependency).

``Progress(total, label)`` draws ``label [#####     ] n/total`` and redraws at most every
0.1 s; ``update(n=1)`` advances it; as a context manager it finishes the line on exit.
When stderr is not a terminal, only the final line is written.
"""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

WIDTH = 30


class Progress:
    def __init__(self, total: int, label: str = "", stream: Optional[TextIO] = None) -> None:
        if total < 0:
            raise ValueError(f"Progress total must be >= 0, got {total!r}")
        self.total = total
        self.label = label
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._last = 0.0
        self._closed = False

    def _line(self) -> str:
        frac = 1.0 if self.total == 0 else min(self.done / self.total, 1.0)
        filled = int(frac * WIDTH)
        return f"{self.label} [{'#' * filled}{' ' * (WIDTH - filled)}] {self.done}/{self.total}"

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` steps."""
        self.done += n
        if self._tty:
            now = time.monotonic()
            if now - self._last >= 0.1 or self.done >= self.total:
                self._last = now
                self._stream.write("\r" + self._line())
                self._stream.flush()

    def close(self) -> None:
        """Finish the line (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stream.write(("\r" if self._tty else "") + self._line() + "\n")
        self._stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
