"""Scale benchmark: generate N clustered embeddings, cluster them end to end, report time and peak memory.

Peak memory is the process's peak resident set (``VmHWM``), read after the run; it includes
the features themselves. ``compare_exact`` also runs the exact faiss search on the same
features and reports both graphs' BCubed F (the approximate graph should be within a point).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from slimkit.bench import env_header
from unidg.config import ClusterConfig
from unidg.graph import cluster
from unidg.knn import knn
from unidg.metrics import bcubed, pairwise
from unidg.synth import embedding_clusters

__all__ = ["peak_rss_mib", "scale_run"]


def peak_rss_mib() -> float:
    """The process's peak resident set so far, MiB (Linux ``/proc/self/status`` VmHWM)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return float("nan")


def _one(features: np.ndarray, labels: np.ndarray, cfg: ClusterConfig, backend: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    lists = knn(features, cfg, backend=backend)
    t_knn = time.perf_counter() - t0
    res = cluster(features, cfg, knn_lists=lists)
    total = time.perf_counter() - t0
    _, _, fp = pairwise(labels, res.labels)
    _, _, fb = bcubed(labels, res.labels)
    return {"backend": backend, "knn_s": round(t_knn, 1), "total_s": round(total, 1), "pairwise_f": fp,
            "bcubed_f": fb, "clusters": res.clusters, "mean_degree": res.mean_degree, "seconds": res.seconds}  # fmt: skip


def scale_run(
    n: int, identities: int, dim: int = 256, config: ClusterConfig | None = None, compare_exact: bool = False,
    seed: int = 0, sigma: float = 0.75,
) -> dict[str, Any]:
    """Cluster ``n`` synthetic embeddings with the approximate backend (``config.ann``), optionally the exact one too."""
    cfg = config or ClusterConfig()
    t0 = time.perf_counter()
    x, y = embedding_clusters(n, identities, dim, sigma=sigma, seed=seed)
    gen_s = time.perf_counter() - t0
    approx = _one(x, y, cfg, f"faiss-{cfg.ann}")
    out: dict[str, Any] = {"n": n, "dim": dim, "identities": identities, "generate_s": round(gen_s, 1),
                           "config": {**cfg.__dict__}, "approx": approx}  # fmt: skip
    if compare_exact:
        out["exact"] = _one(x, y, replace(cfg), "faiss-flat")
        out["bcubed_gap"] = out["exact"]["bcubed_f"] - approx["bcubed_f"]
    out["peak_rss_mib"] = round(peak_rss_mib(), 1)
    out["env"] = env_header(("torch", "numpy", "faiss-cpu", "scipy"))
    return out
