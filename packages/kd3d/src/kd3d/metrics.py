"""Detection metrics on box arrays: nuScenes-style mAP / TP errors / NDS-lite, and KITTI-style BEV / 3D AP|R40.

nuScenes (``nutonomy/nuscenes-devkit``, ``detection/algo.py``), per class and centre-distance threshold
(0.5, 1, 2, 4 m): predictions sorted by score over all samples take the nearest unmatched ground truth of
their sample by 2D centre distance; precision is interpolated on 101 recall points (``right=0``); AP drops
the recall points <= ``min_recall`` (0.1), subtracts ``min_precision`` (0.1), clips at 0 and divides by 0.9.
TP errors at 2 m: ATE (centre distance, m), ASE (1 - IoU of the boxes aligned in centre and yaw), AOE
(smallest yaw difference, rad), averaged over recall 0.1 .. the highest reached (1 if below 0.1).
**NDS-lite** = ``(5 mAP + sum over ATE, ASE, AOE of (1 - min(1, mTP))) / 8``: nuScenes' NDS without the
velocity and attribute terms (AVE, AAE), which simulated single sweeps do not have.

KITTI (our CPU version of ``kitti_object_eval_python``): rotated BEV or 3D IoU, thresholds 0.7 car /
0.5 pedestrian and cyclist; detections in descending score take the unmatched ground truth of their
scene with the highest IoU above the threshold; AP|R40 is the mean over recall 1/40 .. 1 of the highest
precision reached at that recall or more. One difficulty (no images: no height / truncation filters).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from kd3d.boxes import limit_period, rotated_iou_3d, rotated_iou_bev
from slimkit.errors import BadInputError

__all__ = ["DIST_THS", "KITTI_IOU", "kitti_ap", "nuscenes_metrics"]

DIST_THS = (0.5, 1.0, 2.0, 4.0)
KITTI_IOU = {"Car": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5}
NELEM = 101
TP_METRICS = ("ate", "ase", "aoe")

Array = NDArray[np.float64]
Boxes = Sequence[dict[str, Any]]


def _by_class(items: Boxes, cls: int, with_scores: bool) -> list[tuple[Array, Array]]:
    out = []
    for item in items:
        labels = np.asarray(item["labels"])
        sel = labels == cls
        boxes = np.asarray(item["boxes"], dtype=np.float64).reshape(-1, 7)[sel]
        scores = np.asarray(item["scores"], dtype=np.float64)[sel] if with_scores else np.ones(int(sel.sum()))
        out.append((boxes, scores))
    return out


def _aligned_iou(a: Array, b: Array) -> float:
    """IoU of two (l, w, h) boxes sharing centre and yaw (nuScenes' scale error)."""
    inter = float(np.prod(np.minimum(a, b)))
    return inter / (float(np.prod(a)) + float(np.prod(b)) - inter)


def _accumulate(preds: list[tuple[Array, Array]], gts: list[tuple[Array, Array]], th: float) -> dict[str, Array] | None:
    npos = sum(len(g) for g, _ in gts)
    if npos == 0:
        return None
    flat = [(s, i, j) for i, (_, scores) in enumerate(preds) for j, s in enumerate(scores)]
    flat.sort(key=lambda t: -t[0])
    taken = [np.zeros(len(g), dtype=bool) for g, _ in gts]
    tp, fp, conf = [], [], []
    errs: dict[str, list[float]] = {k: [] for k in TP_METRICS}
    for score, i, j in flat:
        box = preds[i][0][j]
        gt = gts[i][0]
        best, best_d = -1, np.inf
        if len(gt):
            d = np.hypot(gt[:, 0] - box[0], gt[:, 1] - box[1])
            d[taken[i]] = np.inf
            best = int(np.argmin(d))
            best_d = float(d[best])
        if best >= 0 and best_d < th:
            taken[i][best] = True
            tp.append(1.0)
            fp.append(0.0)
            g = gt[best]
            errs["ate"].append(best_d)
            errs["ase"].append(1.0 - _aligned_iou(box[3:6], g[3:6]))
            errs["aoe"].append(abs(float(limit_period(box[6] - g[6]))))
            conf.append(score)
        else:
            tp.append(0.0)
            fp.append(1.0)
    if not conf:
        return None
    tp_c, fp_c = np.cumsum(tp), np.cumsum(fp)
    prec = tp_c / (tp_c + fp_c)
    rec = tp_c / npos
    scores = np.array([s for s, _, _ in flat])
    rec_i = np.linspace(0, 1, NELEM)
    out = {"recall": rec_i, "precision": np.interp(rec_i, rec, prec, right=0),
           "confidence": np.interp(rec_i, rec, scores, right=0), "max_recall": np.array(rec[-1])}  # fmt: skip
    conf_arr = np.array(conf)
    for key, values in errs.items():
        cummean = np.cumsum(values) / np.arange(1, len(values) + 1)
        out[key] = np.interp(out["confidence"][::-1], conf_arr[::-1], cummean[::-1])[::-1]
    return out


def _calc_ap(md: dict[str, Array] | None, min_recall: float, min_precision: float) -> float:
    if md is None:
        return 0.0
    prec = md["precision"][round(100 * min_recall) + 1 :] - min_precision
    return float(np.clip(prec, 0, None).mean() / (1.0 - min_precision))


def _calc_tp(md: dict[str, Array] | None, key: str, min_recall: float) -> float:
    if md is None:
        return 1.0
    first = round(100 * min_recall) + 1
    nonzero = np.nonzero(md["confidence"])[0]
    last = int(nonzero[-1]) if len(nonzero) else 0
    if last < first:
        return 1.0
    return float(np.mean(md[key][first : last + 1]))


def nuscenes_metrics(
    preds: Boxes, gts: Boxes, classes: Sequence[str], dist_ths: Sequence[float] = DIST_THS, dist_th_tp: float = 2.0,
    min_recall: float = 0.1, min_precision: float = 0.1,
) -> dict[str, Any]:  # fmt: skip
    """``preds[i]`` ``{"boxes" [n, 7], "scores", "labels"}`` and ``gts[i]`` ``{"boxes", "labels"}`` of scene ``i``.

    Returns ``mAP``, ``NDS`` (NDS-lite, see the module docstring), ``mATE`` / ``mASE`` / ``mAOE`` and per class
    ``AP`` (mean over thresholds), ``AP@<th>``, the TP errors and ``max_recall`` (at ``dist_th_tp``).
    Classes without ground truth are left out of the means.
    """
    per_class: dict[str, dict[str, float]] = {}
    for c, name in enumerate(classes):
        p, g = _by_class(preds, c, True), _by_class(gts, c, False)
        if sum(len(b) for b, _ in g) == 0:
            continue
        row: dict[str, float] = {}
        aps = []
        for th in dist_ths:
            ap = _calc_ap(_accumulate(p, g, th), min_recall, min_precision)
            row[f"AP@{th:g}"] = ap
            aps.append(ap)
        row["AP"] = float(np.mean(aps))
        md = _accumulate(p, g, dist_th_tp)
        for key in TP_METRICS:
            row[key.upper()] = _calc_tp(md, key, min_recall)
        row["max_recall"] = float(md["max_recall"]) if md is not None else 0.0
        per_class[name] = row
    if not per_class:
        return {"mAP": 0.0, "NDS": 0.0, "mATE": 1.0, "mASE": 1.0, "mAOE": 1.0, "classes": {}}
    m_ap = float(np.mean([r["AP"] for r in per_class.values()]))
    tps = {f"m{k.upper()}": float(np.mean([r[k.upper()] for r in per_class.values()])) for k in TP_METRICS}
    nds = (5 * m_ap + sum(1 - min(1.0, v) for v in tps.values())) / (5 + len(TP_METRICS))
    return {"mAP": m_ap, "NDS": float(nds), **tps, "classes": per_class}


def _ap_r40(tp: Array, scores: Array, npos: int, points: int = 40) -> float:
    if npos == 0 or len(tp) == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp_c = np.cumsum(tp[order])
    prec = tp_c / np.arange(1, len(tp) + 1)
    rec = tp_c / npos
    envelope = np.maximum.accumulate(prec[::-1])[::-1]
    total = 0.0
    for r in np.arange(1, points + 1) / points:
        reach = np.nonzero(rec >= r - 1e-12)[0]
        total += float(envelope[reach[0]]) if len(reach) else 0.0
    return total / points


def kitti_ap(
    preds: Boxes, gts: Boxes, classes: Sequence[str], kind: str = "bev", iou: dict[str, float] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """KITTI-style AP|R40 per class (BEV or 3D IoU) and their mean ``mAP`` over classes with ground truth."""
    if kind not in ("bev", "3d"):
        raise BadInputError(f"kind must be 'bev' or '3d', got {kind!r}")
    thresholds = {**KITTI_IOU, **(iou or {})}
    iou_fn = rotated_iou_bev if kind == "bev" else rotated_iou_3d
    per_class: dict[str, float] = {}
    for c, name in enumerate(classes):
        p, g = _by_class(preds, c, True), _by_class(gts, c, False)
        npos = sum(len(b) for b, _ in g)
        if npos == 0:
            continue
        th = thresholds.get(name, 0.5)
        tps, scores = [], []
        for (pb, ps), (gb, _) in zip(p, g, strict=True):
            overlaps = iou_fn(pb, gb)
            taken = np.zeros(len(gb), dtype=bool)
            for j in np.argsort(-ps, kind="stable"):
                cand = np.where(taken, -1.0, overlaps[j]) if len(gb) else np.zeros(0)
                best = int(np.argmax(cand)) if len(cand) else -1
                hit = best >= 0 and cand[best] >= th
                if hit:
                    taken[best] = True
                tps.append(1.0 if hit else 0.0)
                scores.append(ps[j])
        per_class[name] = _ap_r40(np.array(tps), np.array(scores), npos)
    m_ap = float(np.mean(list(per_class.values()))) if per_class else 0.0
    return {"mAP": m_ap, "kind": kind, "classes": per_class}
