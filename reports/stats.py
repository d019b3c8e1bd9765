"""Uncertainty from raw timing samples: bootstrap intervals for medians, per-layer slopes and ratios.

Every interval here is a percentile bootstrap over the raw samples a point kept (``samples_s``). Where a
point was measured in several worker processes (``budget.processes``), the bootstrap is hierarchical:
each replicate first draws processes with replacement, then samples within each drawn process, so the
interval carries the spread between processes as well as the spread within one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_REPLICATES = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval."""

    value: float
    lo: float
    hi: float

    def excludes(self, threshold: float) -> int:
        """+1 if the whole interval lies above ``threshold``, -1 if below, 0 if it contains it."""
        if self.lo > threshold:
            return 1
        if self.hi < threshold:
            return -1
        return 0

    def __format__(self, spec: str) -> str:
        spec = spec or ".3g"
        return f"{self.value:{spec}} [{self.lo:{spec}}, {self.hi:{spec}}]"


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def bootstrap_medians(samples: Sequence[float], processes: Sequence[int] | None = None, *,
                      replicates: int = BOOTSTRAP_REPLICATES, rng: np.random.Generator | None = None) -> np.ndarray:
    """``replicates`` bootstrap medians of one point's samples (hierarchical over processes when given)."""
    rng = rng or _rng()
    values = np.asarray(samples, dtype=float)
    if values.size == 0:
        return np.full(replicates, np.nan)
    ids = np.zeros(values.size, dtype=int) if processes is None or len(processes) != values.size else np.asarray(
        processes)
    groups = [values[ids == p] for p in np.unique(ids)]
    if len(groups) == 1:
        draws = rng.integers(0, values.size, size=(replicates, values.size))
        return np.median(values[draws], axis=1)
    per_group = max(len(g) for g in groups)
    chosen = rng.integers(0, len(groups), size=(replicates, len(groups)))
    pooled = np.empty((replicates, len(groups) * per_group))
    for slot in range(len(groups)):
        for g, group in enumerate(groups):
            rows = np.flatnonzero(chosen[:, slot] == g)
            if rows.size:
                pooled[rows, slot * per_group:(slot + 1) * per_group] = rng.choice(group, size=(rows.size, per_group))
    return np.median(pooled, axis=1)


def interval(value: float, replicates: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """The percentile interval of bootstrap replicates around a point estimate (NaN replicates ignored;
    infinite ones kept, so an interval can be unbounded)."""
    known = replicates[~np.isnan(replicates)]  # an infinite replicate (an unbounded ratio) counts, at its end
    if known.size == 0:
        return Interval(value, np.nan, np.nan)
    tail = (1 - confidence) / 2 * 100
    lo = np.percentile(known, tail, method="lower")  # no interpolation: an infinite end stays infinite
    hi = np.percentile(known, 100 - tail, method="higher")
    return Interval(value, float(lo), float(hi))


def slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of y against x, for y of shape [points] or [replicates, points]."""
    x = np.asarray(x, dtype=float)
    xc = x - x.mean()
    y = np.atleast_2d(y)
    return (y - y.mean(axis=1, keepdims=True)) @ xc / (xc @ xc)
