"""PNG figures: per-character timelines (predicted against ground truth) and degree distributions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from slimkit.plot import save_png

__all__ = ["degree_png", "timeline_png"]


def timeline_png(
    path: str | Path, predicted: Mapping[int, Sequence[tuple[float, float]]], duration: float,
    truth: Mapping[int, Sequence[tuple[float, float]]] | None = None, match: Mapping[int, int] | None = None,
    title: str = "",
) -> Path:
    """One row per character: predicted intervals (blue) over the matched true character's (grey)."""
    from matplotlib.figure import Figure

    rows = sorted(predicted, key=lambda p: -sum(e - s for s, e in predicted[p]))
    fig = Figure(figsize=(10, 0.35 * max(3, len(rows)) + 1.0))
    ax = fig.add_subplot(1, 1, 1)
    for r, p in enumerate(rows):
        y = len(rows) - 1 - r
        true_id = match.get(p) if match else None
        if truth is not None and true_id is not None and true_id in truth:
            ax.broken_barh([(s, e - s) for s, e in truth[true_id]], (y - 0.4, 0.8), color="0.8")
        ax.broken_barh([(s, e - s) for s, e in predicted[p]], (y - 0.25, 0.5), color="tab:blue")
    labels = [f"P{p}" + (f" = C{match[p]}" if match and p in match else "") for p in rows]
    ax.set_yticks(range(len(rows) - 1, -1, -1), labels, fontsize=7)
    ax.set_xlim(0, duration)
    ax.set_xlabel("time (s)")
    ax.set_title(title or "characters: predicted (blue) over matched ground truth (grey)", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


def degree_png(path: str | Path, histograms: Mapping[str, Mapping[int, int]], title: str = "") -> Path:
    """Neighbour-count histograms of several graphs (one line each), log-scaled counts."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    for name, hist in histograms.items():
        xs = sorted(hist)
        ax.plot(xs, [hist[x] for x in xs], marker=".", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("kept neighbours per node")
    ax.set_ylabel("nodes")
    ax.legend(fontsize=7)
    ax.set_title(title or "degree distribution", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
