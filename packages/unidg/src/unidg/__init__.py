"""unidg: temporal character grouping (who appears when) from face, body and voice tracks.

A reconstruction of UniDG (arXiv 2308.14105; only its abstract is public): a unified
representation network, dynamic graph clustering with per-node neighbour counts, and
progressive association of the per-modality clusters into per-character timelines.

Typical use::

    labels = unidg.cluster(features, unidg.ClusterConfig()).labels      # one modality's tracks
    video = unidg.simulate(seed=0)                                      # a synthetic video
    result = unidg.associate(video.tracks, per_modality_labels)        # characters + timelines
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from slimkit.lazy import lazy_exports

if TYPE_CHECKING:  # the names below, for type checkers; at run time they load on first use
    from unidg.api import attach, detach
    from unidg.associate import associate
    from unidg.config import AssociationConfig, ClusterConfig
    from unidg.graph import cluster
    from unidg.metrics import score, timeline_iou
    from unidg.synth import SynthConfig, simulate

try:
    __version__ = version("unidg")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without an install
    __version__ = "0.0.0"

__all__ = [
    "AssociationConfig", "ClusterConfig", "SynthConfig", "__version__", "associate", "attach", "cluster",
    "detach", "score", "simulate", "timeline_iou",
]  # fmt: skip

# Where each public name lives; loaded on first access (PEP 562) so ``unidg --version`` stays light.
_LAZY = {
    "AssociationConfig": "unidg.config", "ClusterConfig": "unidg.config", "SynthConfig": "unidg.synth",
    "associate": "unidg.associate", "attach": "unidg.api", "cluster": "unidg.graph", "detach": "unidg.api",
    "score": "unidg.metrics", "simulate": "unidg.synth", "timeline_iou": "unidg.metrics",
}  # fmt: skip


__getattr__ = lazy_exports("unidg", _LAZY, globals())
