"""The metrics against the research notes' hand-computed vectors and their invariances."""

from __future__ import annotations

import numpy as np
import pytest

from slimkit.errors import BadInputError
from unidg.metrics import bcubed, contingency, match_timelines, merge_intervals, nmi, pairwise, score, timeline_iou, wcp

# (truth, pred, pairwise P/R/F, BCubed P/R/F, NMI): section 4 of the notes (P of the last row is 0/0 there).
VECTORS = [
    ([0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0], (0.4, 1.0, 0.5714), (0.5, 1.0, 0.6667), 0.0),
    ([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 1, 2], (0.5, 0.5, 0.5), (0.7778, 0.7778, 0.7778), 0.6853),
    ([0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 2, 2], (1.0, 0.4286, 0.6), (1.0, 0.6667, 0.8), 0.7337),
    ([0, 0, 1, 1], [0, 1, 2, 3], (1.0, 0.0, 0.0), (1.0, 0.5, 0.6667), 0.6667),
]


@pytest.mark.parametrize(("y", "p", "pw", "bc", "mi"), VECTORS)
def test_hand_vectors(y: list[int], p: list[int], pw: tuple[float, ...], bc: tuple[float, ...], mi: float) -> None:
    assert pairwise(y, p) == pytest.approx(pw, abs=1e-4)
    assert bcubed(y, p) == pytest.approx(bc, abs=1e-4)
    assert nmi(y, p) == pytest.approx(mi, abs=1e-4)


def test_perfect_clustering_scores_one_even_all_singletons() -> None:
    for y in ([0, 0, 1, 1, 2], [0, 1, 2, 3], [5, 5, 5]):
        s = score(y, [10 + v for v in y])
        assert (s.pairwise_f, s.bcubed_f, s.nmi, s.wcp) == (1.0, 1.0, 1.0, 1.0)


def test_wcp_by_hand() -> None:
    # clusters {0,0,1} and {1,2}: majorities 2 + 1 of 5
    assert wcp([0, 0, 1, 1, 2], [0, 0, 0, 1, 1]) == pytest.approx(3 / 5)


def test_relabelling_and_swapping() -> None:
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 200), rng.integers(0, 7, 200)
    perm = rng.permutation(20)
    assert pairwise(y, p) == pytest.approx(pairwise(perm[y], perm[p]))
    assert bcubed(y, p) == pytest.approx(bcubed(perm[y] + 3, perm[p]))
    pp, pr, pf = pairwise(y, p)
    assert pairwise(p, y) == pytest.approx((pr, pp, pf))
    bp, br, bf = bcubed(y, p)
    assert bcubed(p, y) == pytest.approx((br, bp, bf))
    assert nmi(y, p) == pytest.approx(nmi(p, y))


def test_bcubed_matches_per_item_definition() -> None:
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 4, 60), rng.integers(0, 5, 60)
    prec = np.mean([np.sum((p == p[i]) & (y == y[i])) / np.sum(p == p[i]) for i in range(60)])
    rec = np.mean([np.sum((p == p[i]) & (y == y[i])) / np.sum(y == y[i]) for i in range(60)])
    assert bcubed(y, p)[:2] == pytest.approx((prec, rec))


def test_unassigned_are_singletons() -> None:
    assert contingency([0, 0, 1], [-1, -1, 0]).shape == (2, 3)
    assert pairwise([0, 0], [-1, -1])[1] == 0.0  # two unassigned items are not put together


def test_bad_inputs() -> None:
    with pytest.raises(BadInputError, match="3 labels but pred has 2"):
        pairwise([0, 1, 2], [0, 1])
    with pytest.raises(BadInputError, match="empty"):
        bcubed([], [])
    with pytest.raises(BadInputError, match="integer"):
        score([0.5, 1.0], [0, 1])


def test_timeline_iou_by_hand() -> None:
    assert merge_intervals([(3, 4), (0, 1), (0.5, 2), (5, 5)]) == [(0.0, 2.0), (3.0, 4.0)]
    truth = {0: [(0, 10)], 1: [(20, 30)]}
    pred = {7: [(5, 15)], 8: [(20, 25), (28, 30)], 9: [(40, 41)]}
    iou, match = match_timelines(truth, pred)
    assert iou == pytest.approx({0: 5 / 15, 1: 7 / 10})
    assert match == {7: 0, 8: 1}
    assert timeline_iou({0: [(0, 1)], 1: [(2, 3)]}, {3: [(0, 1)]}) == {0: 1.0, 1: 0.0}
