"""Ratios from paired rounds: the one way the benchmarks compare contenders.

Contenders run in turns within each round (so load from elsewhere hits them alike); a
ratio is taken within each round, and the figure is the median of those per-round ratios
with their range. Dividing two separately taken medians is not done anywhere: it can land
above every ratio actually measured.
"""
from __future__ import annotations

import math
import statistics
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence


class Ratio(NamedTuple):
    """The median of per-round ratios and their range (``low``..``high``) over ``rounds``."""

    median: float
    low: float
    high: float
    rounds: int

    def __str__(self) -> str:
        if self.rounds == 0:
            return "-"
        if self.rounds == 1 or f"{self.low:.2f}" == f"{self.high:.2f}":
            return f"{self.median:.2f}×"
        return f"{self.median:.2f}× ({self.low:.2f}–{self.high:.2f})"


def ratio(values: Sequence[Optional[float]], ref: Sequence[Optional[float]]) -> Ratio:
    """values[i] / ref[i] for every round i where both were measured (None: not measured;
    a zero reference is skipped), summarized as a Ratio."""
    per = [v / r for v, r in zip(values, ref) if v is not None and r is not None and r != 0]
    if not per:
        return Ratio(math.nan, math.nan, math.nan, 0)
    return Ratio(statistics.median(per), min(per), max(per), len(per))


def ratios(rounds: Mapping[str, Sequence[Optional[float]]], ref: str) -> Dict[str, Ratio]:
    """For each contender of ``rounds`` (name -> one value per round, in round order), its
    Ratio to contender ``ref``."""
    return {name: ratio(values, rounds[ref]) for name, values in rounds.items()}


def median(values: Sequence[Optional[float]]) -> float:
    """The median of the measured values (None skipped); nan when there are none."""
    got: List[float] = [v for v in values if v is not None]
    return statistics.median(got) if got else math.nan
