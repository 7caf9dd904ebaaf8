"""Per-worker figures of ``fastka serve`` in shared memory: what /status shows of every
worker, and what the supervisor totals when it stops."""
from __future__ import annotations

import mmap
import struct
from typing import Dict

PUBLISH_PERIOD = 1.0  # seconds: how stale another worker's figures in /status may be


class Stats:
    """One row of counters per worker in anonymous shared memory (created before fork).

    A worker writes its own row (at most once per PUBLISH_PERIOD when it changed, and before
    answering /status); /status reads every row, so the other workers' figures are at most
    PUBLISH_PERIOD old.
    """

    FIELDS = ("pid", "open_connections", "accepted", "requests", "restarts")
    _row = struct.Struct("<" + "q" * len(FIELDS))

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._mem = mmap.mmap(-1, self._row.size * workers)

    def write(self, worker: int, **values: int) -> None:
        """Set some fields of ``worker``'s row (the others keep their values)."""
        row = self.read(worker)
        row.update(values)
        self._row.pack_into(self._mem, worker * self._row.size, *(row[f] for f in self.FIELDS))

    def read(self, worker: int) -> Dict[str, int]:
        return dict(zip(self.FIELDS, self._row.unpack_from(self._mem, worker * self._row.size)))

    def total(self, field: str) -> int:
        return sum(self.read(w)[field] for w in range(self.workers))
