"""How well one score ranks architectures against another: rank correlations (no scipy) and
where a score's favourite lands in the true ranking."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"need two 1-D sequences of one length, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("rank correlations need finite values")
    return a, b


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    r"""Kendall's tau-b (Kendall, 1945), which accounts for ties in either sequence.

    .. math::
        \tau_b = \frac{n_c - n_d}{\sqrt{(n_0 - n_1)(n_0 - n_2)}}

    over the :math:`n_0 = n(n-1)/2` pairs: :math:`n_c` concordant, :math:`n_d` discordant,
    :math:`n_1` (:math:`n_2`) tied in ``x`` (``y``). In ``[-1, 1]``; ``nan`` when either
    sequence is constant or shorter than 2. O(n^2) time, O(n * 512) memory.
    """
    a, b = _pair(x, y)
    n = len(a)
    if n < 2:
        return math.nan
    s = ties_x = ties_y = 0
    for start in range(0, n, 512):  # rows in blocks bound the memory of the sign matrices
        rows = slice(start, min(start + 512, n))
        dx = np.sign(a[rows, None] - a[None, :])  # (rows, n)
        dy = np.sign(b[rows, None] - b[None, :])
        s += int((dx * dy).sum())
        ties_x += int((dx == 0).sum())
        ties_y += int((dy == 0).sum())
    # Every unordered pair was counted twice, and the diagonal (n self-pairs) counts as ties.
    n0 = n * (n - 1) // 2
    n1, n2 = (ties_x - n) // 2, (ties_y - n) // 2
    denom = math.sqrt((n0 - n1) * (n0 - n2))
    return math.nan if denom == 0 else (s / 2) / denom


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span (``[1, 2.5, 2.5, 4]``)."""
    a = np.asarray(x, dtype=np.float64)
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based rank of each distinct value's first copy
    return (first + (counts + 1) / 2)[inverse.reshape(-1)]


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks (ties handled).

    In ``[-1, 1]``; ``nan`` when either sequence is constant or shorter than 2.
    """
    a, b = _pair(x, y)
    if len(a) < 2:
        return math.nan
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return math.nan if denom == 0 else float((ra * rb).sum()) / denom


def _finite_or_none(v: float) -> float | None:
    return None if math.isnan(v) else v


def compare_scores(truth: Sequence[float], score: Sequence[float]) -> dict[str, Any]:
    """Agreement of one score with the ground truth: ``kendall_tau``, ``spearman_rho`` (``None``
    when undefined, e.g. a constant score), and ``top1_rank``: the 1-based rank by ground truth
    (1 = best trained; tied accuracies share the better rank) of the architecture the score
    puts first (the first in order among ``top1_ties`` architectures sharing the best score),
    its ``top1_trained_accuracy``, and ``top1_regret`` (best trained accuracy minus it)."""
    t = np.asarray(truth, dtype=np.float64)
    s = np.asarray(score, dtype=np.float64)
    top = int(np.argmax(s))
    return {"kendall_tau": _finite_or_none(kendall_tau(s, t)),
            "spearman_rho": _finite_or_none(spearman_rho(s, t)),
            "top1_rank": 1 + int((t > t[top]).sum()),
            "top1_ties": int((s == s[top]).sum()),
            "top1_trained_accuracy": float(t[top]),
            "top1_regret": float(t.max() - t[top])}
