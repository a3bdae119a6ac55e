"""Clustering and timeline metrics, exactly as the research notes define them.

With ``n_gc`` the items of true class g in predicted cluster c, class sizes ``a_g`` and cluster sizes ``b_c``:

- pairwise: ``TP = sum C(n_gc, 2)``, ``P = TP / sum C(b_c, 2)``, ``R = TP / sum C(a_g, 2)``;
- BCubed: ``P = (1/N) sum n_gc^2 / b_c``, ``R = (1/N) sum n_gc^2 / a_g`` (per-item means, self included);
- NMI: scikit-learn's, ``average_method="arithmetic"`` pinned;
- WCP (weighted clustering purity): ``(1/N) sum_c max_g n_gc``;
- F is ``2PR / (P + R)`` of the averages.

Conventions that change numbers, chosen and documented: a predicted label ``-1`` (unassigned) is
its own singleton cluster; an empty pair denominator (no pair put together, or none truly
together) makes that side 1 (nothing claimed, nothing wrong), so a perfect clustering scores 1
even when every item is alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import normalized_mutual_info_score

from slimkit.errors import BadInputError
from slimkit.report import ReportMixin

__all__ = [
    "ClusterScores", "bcubed", "contingency", "interval_length", "match_timelines", "merge_intervals", "nmi", "pairwise",
    "score", "timeline_iou", "wcp",
]  # fmt: skip


def _labels(y: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise BadInputError(f"{name} must be a 1-D label array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise BadInputError(f"{name} must hold integer labels, got {arr.dtype}")
    return arr.astype(np.int64)


def singletons_for_unassigned(pred: np.ndarray) -> np.ndarray:
    """``-1`` labels become new singleton clusters (learn-to-cluster's convention)."""
    out = pred.copy()
    neg = out < 0
    if neg.any():
        start = int(out.max(initial=-1)) + 1
        out[neg] = start + np.arange(int(neg.sum()))
    return out


def _cells(truth: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-zero cells of the contingency table: ``(class index, cluster index, n_gc)``.

    Sparse, so a million items in a million clusters need O(N) memory, not classes x clusters.
    """
    y, p = _labels(truth, "truth"), _labels(pred, "pred")
    if y.shape != p.shape:
        raise BadInputError(f"truth has {y.size} labels but pred has {p.size}")
    if y.size == 0:
        raise BadInputError("cannot score an empty clustering")
    p = singletons_for_unassigned(p)
    _, yi = np.unique(y, return_inverse=True)
    _, pi = np.unique(p, return_inverse=True)
    codes, counts = np.unique(yi.astype(np.int64) * (int(pi.max()) + 1) + pi, return_counts=True)
    width = int(pi.max()) + 1
    return codes // width, codes % width, counts.astype(np.int64)


def contingency(truth: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray) -> np.ndarray:
    """Dense ``n_gc`` table (classes x clusters) after the ``-1`` -> singleton rule (small inputs)."""
    g, c, n = _cells(truth, pred)
    table = np.zeros((int(g.max()) + 1, int(c.max()) + 1), dtype=np.int64)
    table[g, c] = n
    return table


def _f(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def pairwise(truth: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray) -> tuple[float, float, float]:
    """Pairwise ``(precision, recall, F)`` over unordered pairs."""
    g, c, cnt = _cells(truth, pred)
    n = cnt.astype(np.float64)
    tp = float((n * (n - 1) / 2).sum())
    b, a = np.bincount(c, weights=n), np.bincount(g, weights=n)
    pred_pairs, true_pairs = float((b * (b - 1) / 2).sum()), float((a * (a - 1) / 2).sum())
    p = tp / pred_pairs if pred_pairs else 1.0
    r = tp / true_pairs if true_pairs else 1.0
    return p, r, _f(p, r)


def bcubed(truth: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray) -> tuple[float, float, float]:
    """BCubed ``(precision, recall, F)``: per-item precision / recall averaged, then their harmonic mean."""
    g, c, cnt = _cells(truth, pred)
    n = cnt.astype(np.float64)
    total = n.sum()
    b, a = np.bincount(c, weights=n), np.bincount(g, weights=n)
    p = float((n**2 / b[c]).sum() / total)
    r = float((n**2 / a[g]).sum() / total)
    return p, r, _f(p, r)


def nmi(truth: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray) -> float:
    """Normalised mutual information, arithmetic mean of the two entropies (pinned)."""
    y, p = _labels(truth, "truth"), _labels(pred, "pred")
    _cells(y, p)  # the same checks
    return float(normalized_mutual_info_score(y, singletons_for_unassigned(p), average_method="arithmetic"))


def wcp(truth: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray) -> float:
    """Weighted clustering purity ``(1/N) sum_c max_g n_gc`` (tends to 1 with many clusters: report NMI too)."""
    _, c, n = _cells(truth, pred)
    best = np.zeros(int(c.max()) + 1, np.int64)
    np.maximum.at(best, c, n)
    return float(best.sum() / n.sum())


@dataclass
class ClusterScores(ReportMixin):
    """Every clustering metric of one labelling, plus the cluster counts."""

    pairwise_p: float
    pairwise_r: float
    pairwise_f: float
    bcubed_p: float
    bcubed_r: float
    bcubed_f: float
    nmi: float
    wcp: float
    clusters: int
    classes: int
    items: int


def score(truth: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray) -> ClusterScores:
    """All metrics at once."""
    g, c, n = _cells(truth, pred)
    pp, pr, pf = pairwise(truth, pred)
    bp, br, bf = bcubed(truth, pred)
    return ClusterScores(pp, pr, pf, bp, br, bf, nmi(truth, pred), wcp(truth, pred),
                         clusters=int(c.max()) + 1, classes=int(g.max()) + 1, items=int(n.sum()))  # fmt: skip


# --------------------------------------------------------------------------- timelines

Intervals = list[tuple[float, float]]


def merge_intervals(intervals: Sequence[tuple[float, float]]) -> Intervals:
    """Sorted, disjoint union of closed intervals (touching ones merge); empty intervals are dropped."""
    spans = sorted((float(s), float(e)) for s, e in intervals if e > s)
    out: Intervals = []
    for s, e in spans:
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def interval_length(intervals: Sequence[tuple[float, float]]) -> float:
    """Total length of the union of ``intervals``."""
    return sum(e - s for s, e in merge_intervals(intervals))


def _intersection(a: Intervals, b: Intervals) -> float:
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def match_timelines(
    truth: Mapping[int, Sequence[tuple[float, float]]], pred: Mapping[int, Sequence[tuple[float, float]]]
) -> tuple[dict[int, float], dict[int, int]]:
    """``(IoU per true character, predicted -> true match)``; see :func:`timeline_iou`."""
    t_ids, p_ids = sorted(truth), sorted(pred)
    t_sets = [merge_intervals(truth[k]) for k in t_ids]
    p_sets = [merge_intervals(pred[k]) for k in p_ids]
    iou = np.zeros((len(t_ids), len(p_ids)))
    for a, ta in enumerate(t_sets):
        la = sum(e - s for s, e in ta)
        for b, pb in enumerate(p_sets):
            inter = _intersection(ta, pb)
            union = la + sum(e - s for s, e in pb) - inter
            iou[a, b] = inter / union if union > 0 else 0.0
    result = dict.fromkeys(t_ids, 0.0)
    match: dict[int, int] = {}
    if iou.size:
        rows, cols = linear_sum_assignment(-iou)
        for r, c in zip(rows, cols, strict=True):
            result[t_ids[r]] = float(iou[r, c])
            if iou[r, c] > 0:
                match[p_ids[c]] = t_ids[r]
    return result, match


def timeline_iou(
    truth: Mapping[int, Sequence[tuple[float, float]]], pred: Mapping[int, Sequence[tuple[float, float]]]
) -> dict[int, float]:
    """Per true character: the temporal IoU with the predicted character matched to it.

    Predicted characters are matched one-to-one to true ones by the Hungarian assignment that
    maximises the summed IoU; a true character left without a match scores 0.
    """
    return match_timelines(truth, pred)[0]
