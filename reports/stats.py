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
CHUNK = 64  # points resampled together


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
    return bootstrap_medians_many([samples], [processes], replicates=replicates, rng=rng)[0]


def bootstrap_medians_many(samples: Sequence[Sequence[float]], processes: Sequence[Sequence[int] | None], *,
                           replicates: int = BOOTSTRAP_REPLICATES,
                           rng: np.random.Generator | None = None) -> np.ndarray:
    """Bootstrap medians of many points at once: an array [points, replicates] (NaN for a point without samples).

    The resampling scheme (hierarchical when a point's ``processes`` name more than one process): each
    replicate draws as many processes as the point has, with replacement, then from each drawn process
    as many samples as the largest process has, with replacement, and takes the median of the pooled
    draws (of all samples, with replacement, when there is one process).

    The medians are drawn exactly from that scheme's distribution without materializing the draws: a
    replicate's median is an order statistic of the point's sorted samples, found by a binary search
    over them in which the number of a slot's draws below a split is drawn from its binomial law given
    the draws in the enclosing interval (a multinomial split). That is O(replicates x processes x
    log(samples)) per point instead of O(replicates x samples), for every point in one array operation
    per search step. For an even number of draws the upper middle order statistic follows from the
    smallest draw above the lower one, sampled in closed form.
    """
    rng = rng or _rng()
    count = len(samples)
    if count > CHUNK:  # bounded memory (the work arrays are [points, replicates, processes, samples]), and
        # points of like size together, so that few are padded to a much larger one's sample count
        order = np.argsort([len(v) for v in samples], kind="stable")
        out = np.empty((count, replicates))
        for start in range(0, count, CHUNK):
            chunk = order[start:start + CHUNK]
            out[chunk] = bootstrap_medians_many([samples[i] for i in chunk], [processes[i] for i in chunk],
                                                replicates=replicates, rng=rng)
        return out
    out = np.full((count, replicates), np.nan)
    points = []  # (index, sorted values, group of each sorted value, group sizes)
    for i, (values, ids) in enumerate(zip(samples, processes)):
        values = np.asarray(values, dtype=float)
        if values.size == 0:
            continue
        ids = np.zeros(values.size, dtype=int) if ids is None or len(ids) != values.size else np.asarray(ids)
        _, group = np.unique(ids, return_inverse=True)
        order = np.argsort(values, kind="stable")
        points.append((i, values[order], group.reshape(-1)[order], np.bincount(group.reshape(-1))))
    if not points:
        return out
    n_max = max(len(p[1]) for p in points)
    g_max = max(len(p[3]) for p in points)
    P, R = len(points), replicates
    # per point: cum[p, g, j] = number of group-g values among the j smallest; rank -> position per group
    cum = np.zeros((P, g_max, n_max + 1), dtype=np.int64)
    position = np.zeros((P, g_max, n_max), dtype=np.int64)
    ordered = np.full((P, n_max), np.nan)
    length = np.empty(P, dtype=np.int64)
    groups = np.empty(P, dtype=np.int64)
    per_group = np.empty(P, dtype=np.int64)
    for p, (_, values, group, sizes) in enumerate(points):
        n = len(values)
        onehot = np.zeros((g_max, n), dtype=np.int64)
        onehot[group, np.arange(n)] = 1
        cum[p, :, 1:n + 1] = np.cumsum(onehot, axis=1)
        cum[p, :, n + 1:] = cum[p, :, n:n + 1]
        for g in range(len(sizes)):
            where = np.flatnonzero(group == g)
            position[p, g, :where.size] = where
        ordered[p, :n] = values
        length[p], groups[p], per_group[p] = n, len(sizes), sizes.max() if len(sizes) > 1 else n
    # each replicate's slots: a drawn process each (slots beyond a point's process count draw nothing)
    slot_live = np.arange(g_max)[None, None, :] < groups[:, None, None]  # [P, 1, S]
    chosen = (rng.random((P, R, g_max)) * groups[:, None, None]).astype(np.int64)
    chosen = np.where(slot_live, chosen, 0)
    draws = np.where(slot_live, per_group[:, None, None], 0)  # [P, R, S]
    total = groups * per_group  # draws per replicate
    k_lo, k_hi = (total + 1) // 2, total // 2 + 1  # the middle order statistics (1-based); equal when odd
    flat = (np.arange(P)[:, None, None] * g_max + chosen) * (n_max + 1)  # row of cum for each slot

    def cum_at(j: np.ndarray) -> np.ndarray:  # j: [P, R] split positions -> [P, R, S] counts below them
        return cum.reshape(-1)[flat + j[:, :, None]]

    # binary search for the smallest t with (draws below t) >= k: the k-th smallest draw is at t - 1
    lo = np.zeros((P, R), dtype=np.int64)
    hi = np.broadcast_to(length[:, None], (P, R)).copy()
    below_lo = np.zeros((P, R, g_max), dtype=np.int64)
    below_hi = draws.copy()
    target = k_lo[:, None]
    while True:
        active = hi - lo > 1
        if not active.any():
            break
        mid = np.where(active, (lo + hi) // 2, hi)
        c_lo, c_mid, c_hi = cum_at(lo), cum_at(mid), cum_at(hi)
        width = c_hi - c_lo
        share = np.divide(c_mid - c_lo, width, out=np.zeros(width.shape), where=width > 0)
        inside = rng.binomial(below_hi - below_lo, share)
        below_mid = below_lo + inside
        up = (below_mid.sum(axis=2) >= target) & active  # the k-th draw is below mid
        down = ~up & active
        hi = np.where(up, mid, hi)
        below_hi = np.where(up[:, :, None], below_mid, below_hi)
        lo = np.where(down, mid, lo)
        below_lo = np.where(down[:, :, None], below_mid, below_lo)
    lower = hi - 1  # position of the k_lo-th smallest draw; below_hi: each slot's draws at or below it
    upper = lower.copy()
    need = below_hi.sum(axis=2) < k_hi[:, None]  # the next order statistic lies above: the smallest draw above
    if need.any():
        above = draws - below_hi  # each slot's draws above `lower`, uniform over its group's values above it
        start = cum_at(hi)  # the slot's group: how many of its values are at or below `lower`
        size = cum_at(np.broadcast_to(length[:, None], (P, R))) - start
        u = rng.random(above.shape)
        with np.errstate(divide="ignore"):
            rank = np.floor(size * (1.0 - u ** (1.0 / np.maximum(above, 1)))).astype(np.int64)
        rank = np.minimum(rank, np.maximum(size - 1, 0))
        pos = position.reshape(-1)[(np.arange(P)[:, None, None] * g_max + chosen) * n_max
                                   + np.minimum(start + rank, n_max - 1)]
        pos = np.where(above > 0, pos, np.iinfo(np.int64).max)
        upper = np.where(need, pos.min(axis=2), lower)
    rows = np.arange(P)[:, None]
    medians = (ordered[rows, lower] + ordered[rows, upper]) / 2
    out[[p[0] for p in points]] = medians
    return out


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
