"""kd3d: RDD distillation (arXiv 2308.10308) for compact CenterPoint-Voxel 3D detectors on spconv.

Typical use::

    teacher = kd3d.build_detector(kd3d.preset("teacher"))       # train it, or load a trained one
    student = kd3d.build_detector(kd3d.preset("S"))
    kd = kd3d.distill(student, teacher, kd3d.RDDConfig())       # the loss module (adds student.kd3d_adapter)
    ... loss = detection_loss + kd(student(points), kd.teacher(points), targets)[0] through slimkit.train ...
    kd3d.detach(student)                                          # the adapter gone: the plain student again

Importing the sparse parts (``kd3d.detector``, ``kd3d.sparse``) applies the guarded spconv CPU backward fix.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from slimkit.lazy import lazy_exports

if TYPE_CHECKING:  # the names below, for type checkers; at run time they load on first use
    from kd3d.api import attach, detach, distill
    from kd3d.config import DetectorConfig, FeatureKDConfig, LogitKDConfig, RDDConfig, SparseKDConfig, preset
    from kd3d.detector import build_detector

try:
    __version__ = version("kd3d")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without an install
    __version__ = "0.0.0"

__all__ = [
    "DetectorConfig", "FeatureKDConfig", "LogitKDConfig", "RDDConfig", "SparseKDConfig", "__version__", "attach",
    "build_detector", "detach", "distill", "preset",
]  # fmt: skip

# Where each public name lives; loaded on first access (PEP 562) so `kd3d --version` and the configs
# stay light (spconv, cumm and torch's sparse machinery load only once a detector is touched).
_LAZY = {
    "DetectorConfig": "kd3d.config", "FeatureKDConfig": "kd3d.config", "LogitKDConfig": "kd3d.config",
    "RDDConfig": "kd3d.config", "SparseKDConfig": "kd3d.config", "preset": "kd3d.config",
    "attach": "kd3d.api", "detach": "kd3d.api", "distill": "kd3d.api", "build_detector": "kd3d.detector",
}  # fmt: skip


__getattr__ = lazy_exports("kd3d", _LAZY, globals())
