"""Configurations: the detector (:class:`DetectorConfig` and its presets) and the distillation methods.

Every field is JSON-typed and validated on construction (BadInputError), so a config equals itself
after a ``slimkit.io.config_to_dict`` / ``REGISTRY.config_from_dict`` round trip.

The presets follow SparseKD's CP-Voxel students (the widths RDD reuses): the teacher, and the S / XS
/ XXS students scale {3D encoder, BEV backbone + neck, head} by {1, 1/2, 1/2}, {3/4, 1/2, 1/2} and
{1/2, 1/4, 1/4}; depths are the same for all four.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from slimkit.errors import BadInputError

CLASSES = ["Car", "Pedestrian", "Cyclist"]
PRESETS = ("teacher", "S", "XS", "XXS")
#: {encoder, BEV backbone / neck, head} width multipliers per preset (SparseKD Table / RDD Sec. 4).
PRESET_WIDTHS = {"teacher": (1.0, 1.0, 1.0), "S": (1.0, 0.5, 0.5), "XS": (0.75, 0.5, 0.5), "XXS": (0.5, 0.25, 0.25)}
TEACHER_ENCODER = [16, 16, 32, 64, 128, 128]
TEACHER_BEV = [128, 256]
TEACHER_UP = [256, 256]
TEACHER_HEAD = 64
#: Regression channels of the CenterHead, in order: centre offset (2), z (1), log size l/w/h (3), cos/sin yaw (2).
REG_CHANNELS = 8
WIDTH_FIELDS = ("encoder_channels", "bev_channels", "up_channels", "head_channels")


def _ints(name: str, value: Any, n: int | None = None, low: int = 1) -> list[int]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise BadInputError(f"{name} must be a list of integers, got {value!r}")
    if n is not None and len(value) != n:
        raise BadInputError(f"{name} must have {n} entries, got {len(value)}")
    if any(v < low for v in value):
        raise BadInputError(f"{name} entries must be >= {low}, got {list(value)}")
    return list(value)


def _floats(name: str, value: Any, n: int) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != n or not all(isinstance(v, (int, float)) for v in value):
        raise BadInputError(f"{name} must be a list of {n} numbers, got {value!r}")
    return [float(v) for v in value]


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise BadInputError(f"{name} must be > 0, got {value!r}")


def _in_range(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise BadInputError(f"{name} must be in [{low:g}, {high:g}], got {value!r}")


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise BadInputError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def encoder_depth_out(depth: int) -> int:
    """Height cells left after the encoder's three stride-2 convs (pads 1, 1, 0) and ``conv_out`` (k3, s2, p0)."""
    d = depth + 1  # OpenPCDet pads the z axis by one cell (41 for 40)
    for pad in (1, 1, 0):
        d = (d + 2 * pad - 3) // 2 + 1
    return (d - 3) // 2 + 1


@dataclass
class DetectorConfig:
    """CenterPoint-Voxel: mean-feature voxels, a sparse 3D encoder (stride 8), height compression, BEV backbone
    and neck, CenterHead (one task group with a heatmap per class).

    - ``point_range`` ``[x0, y0, z0, x1, y1, z1]`` (m) and ``voxel_size`` ``[vx, vy, vz]``: the grid; x / y
      cells must be a multiple of 8 and the z cells must survive the encoder's strides (>= 1 BEV level).
      ``max_voxels``: the most voxels kept per sample (the first in key order).
    - ``encoder_channels``: conv_input, conv1..conv4, conv_out (6); ``encoder_layers``: convs per stage
      (stages 2-4 count their strided conv).
    - ``bev_channels`` / ``bev_layers`` / ``up_channels``: the two BEV blocks (strides 1, 2) and their
      deblocks back to stride 8; the neck output is their concatenation (RDD's "neck feature").
    - ``head_channels``: the shared 3x3 conv of the CenterHead and every separate head's hidden width.
    - ``loc_weight`` and ``code_weights`` (8: offset 2, z, log l/w/h, cos, sin): the box L1 weights.
    - ``top_k`` / ``score_threshold`` / ``nms_iou`` (``None``: no NMS, RDD's nuScenes rule) for decoding.
    """

    classes: list[str] = field(default_factory=lambda: list(CLASSES))
    point_features: int = 4
    point_range: list[float] = field(default_factory=lambda: [-25.6, -25.6, -3.0, 25.6, 25.6, 1.0])
    voxel_size: list[float] = field(default_factory=lambda: [0.2, 0.2, 0.1])
    max_voxels: int = 40000
    encoder_channels: list[int] = field(default_factory=lambda: list(TEACHER_ENCODER))
    encoder_layers: list[int] = field(default_factory=lambda: [1, 1, 3, 3, 3, 1])
    bev_channels: list[int] = field(default_factory=lambda: list(TEACHER_BEV))
    bev_layers: list[int] = field(default_factory=lambda: [5, 5])
    up_channels: list[int] = field(default_factory=lambda: list(TEACHER_UP))
    head_channels: int = TEACHER_HEAD
    loc_weight: float = 0.25
    code_weights: list[float] = field(default_factory=lambda: [1.0] * REG_CHANNELS)
    min_radius: int = 2
    max_objects: int = 128
    top_k: int = 100
    score_threshold: float = 0.1
    nms_iou: float | None = None
    preset: str = "custom"

    def __post_init__(self) -> None:
        if not isinstance(self.classes, list) or not self.classes or not all(isinstance(c, str) for c in self.classes):
            raise BadInputError(f"classes must be a non-empty list of names, got {self.classes!r}")
        if isinstance(self.point_features, bool) or not isinstance(self.point_features, int) or self.point_features < 3:
            raise BadInputError(f"point_features must be an integer >= 3 (x, y, z, ...), got {self.point_features!r}")
        self.point_range = _floats("point_range", self.point_range, 6)
        self.voxel_size = _floats("voxel_size", self.voxel_size, 3)
        for v in self.voxel_size:
            _positive("voxel_size", v)
        self.encoder_channels = _ints("encoder_channels", self.encoder_channels, 6)
        self.encoder_layers = _ints("encoder_layers", self.encoder_layers, 6)
        self.bev_channels = _ints("bev_channels", self.bev_channels, 2)
        self.bev_layers = _ints("bev_layers", self.bev_layers, 2, low=0)
        self.up_channels = _ints("up_channels", self.up_channels, 2)
        self.code_weights = _floats("code_weights", self.code_weights, REG_CHANNELS)
        for name in ("head_channels", "max_voxels", "max_objects", "top_k", "min_radius"):
            _ints(name, [getattr(self, name)])
        _positive("loc_weight", self.loc_weight)
        _in_range("score_threshold", self.score_threshold, 0.0, 1.0)
        if self.nms_iou is not None:
            _in_range("nms_iou", self.nms_iou, 0.0, 1.0)
        nx, ny, nz = self.grid_size
        if min(nx, ny, nz) < 1:
            raise BadInputError(f"point_range {self.point_range} is empty for voxel_size {self.voxel_size}")
        if nx % 8 or ny % 8:
            raise BadInputError(f"the x / y grid ({nx} x {ny} cells) must be a multiple of 8 (the encoder's stride)")
        if encoder_depth_out(nz) < 1:
            raise BadInputError(f"the z grid has {nz} cells; the encoder needs at least {_min_depth()} "
                                "(raise point_range z or lower voxel_size z)")  # fmt: skip

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Cells along x, y, z."""
        r, v = self.point_range, self.voxel_size
        return tuple(round((r[i + 3] - r[i]) / v[i]) for i in range(3))  # type: ignore[return-value]

    @property
    def bev_shape(self) -> tuple[int, int]:
        """The neck / head grid ``(H, W)`` = (y cells, x cells) / 8."""
        nx, ny, _ = self.grid_size
        return ny // 8, nx // 8

    @property
    def bev_cell(self) -> tuple[float, float]:
        """Metres per BEV cell along x and y."""
        return self.voxel_size[0] * 8, self.voxel_size[1] * 8

    @property
    def neck_channels(self) -> int:
        return sum(self.up_channels)

    @property
    def bev_in_channels(self) -> int:
        return self.encoder_channels[5] * encoder_depth_out(self.grid_size[2])


def _min_depth() -> int:
    return next(d for d in range(1, 200) if encoder_depth_out(d) >= 1)


def _scaled(values: list[int], mult: float) -> list[int]:
    return [max(1, round(v * mult)) for v in values]


def preset(name: str, **overrides: Any) -> DetectorConfig:
    """The teacher or an S / XS / XXS student (widths of the research notes), with field overrides."""
    _one_of("preset", name, PRESETS)
    enc, bev, head = PRESET_WIDTHS[name]
    unknown = sorted(set(overrides) - {f.name for f in fields(DetectorConfig)})
    if unknown:
        raise BadInputError(f"unknown detector fields: {', '.join(unknown)}")
    base = {
        "encoder_channels": _scaled(TEACHER_ENCODER, enc), "bev_channels": _scaled(TEACHER_BEV, bev),
        "up_channels": _scaled(TEACHER_UP, bev), "head_channels": _scaled([TEACHER_HEAD], head)[0], "preset": name,
    }  # fmt: skip
    return DetectorConfig(**{**base, **overrides})


def check_student_fits(student: DetectorConfig, teacher: DetectorConfig) -> None:
    """A student must be no wider than its teacher anywhere, and see the same grid and classes."""
    for name in WIDTH_FIELDS:
        s, t = getattr(student, name), getattr(teacher, name)
        s_list, t_list = (s, t) if isinstance(s, list) else ([s], [t])
        if any(a > b for a, b in zip(s_list, t_list, strict=True)):
            raise BadInputError(f"the student ({student.preset}) is wider than its teacher ({teacher.preset}): "
                                f"{name} {s} > {t}")  # fmt: skip
    for name in ("classes", "point_range", "voxel_size", "point_features"):
        if getattr(student, name) != getattr(teacher, name):
            raise BadInputError(f"student and teacher differ in {name}: {getattr(student, name)} vs {getattr(teacher, name)}")


def with_depth(config: DetectorConfig, encoder_layers: list[int], bev_layers: list[int]) -> DetectorConfig:
    """The same widths at other depths (the CPU-sized runs of the README)."""
    return replace(config, encoder_layers=list(encoder_layers), bev_layers=list(bev_layers))


# --------------------------------------------------------------------------- distillation methods

PROPOSAL_SOURCES = ("both", "teacher", "student")
WEIGHTINGS = ("hard", "soft", "none")
NORMALISATIONS = ("max", "minmax")
ESTIMATORS = ("l2", "gaussian")
REDUCTIONS = ("sum", "mean")
ADAPTERS = ("conv", "identity")


@dataclass
class RDDConfig:
    """RDD (arXiv 2308.10308): bilateral region pairs, disparity weights, feature L2 plus heatmap-logit L1.

    - ``proposals``: ``"both"`` (the paper: M teacher + N student proposals, each cropped from both BEV maps),
      ``"teacher"`` or ``"student"`` (the unilateral ablations). ``num_proposals`` peaks per sample and
      source after 3x3 max-pool NMS, kept when their score is >= ``score_threshold`` (paper silent: top-100 as
      its inference rule, OpenPCDet's 0.1). ``roi_size``: the S x S RoI sampled per box; ``roi_scale``
      enlarges the decoded box (1.0 = the box), ``min_roi_cells`` its smallest side in BEV cells.
    - ``tau``: the channel-softmax temperature (4). ``lam``: the L1 sparsity of the disparity weights (0.1):
      ``weighting="hard"`` gives ``m_i = 1[d_i > lam]``, ``"soft"`` gives ``clip(d_i - lam, 0, 1)``,
      ``"none"`` distils every pair equally; ``d_i`` is the pair's disparity normalised by ``normalise``
      (``"max"``: d / max d; ``"minmax"``). ``mi_estimator``: ``"l2"`` (disparity = the loss's L2 distance)
      or ``"gaussian"`` (``1 - I_i / max I`` with the joint-Gaussian MI ``-1/2 log(1 - rho^2)``).
    - ``alpha_feat`` / ``alpha_logit``: alpha1 = alpha2 = 0.2. ``logit_reduction``: the L1 between a pair's
      sampled heatmap patches (``roi_size`` x ``roi_size`` x classes) as a ``"mean"`` per element (default) or
      a ``"sum"``. The paper's Eq. 9 is the L1 norm of one region's class-probability vector, with no spatial
      extent; summing it over a 7 x 7 patch makes the term 49 x (x classes) larger than any per-region
      reading, and on the README's CPU comparison the sum made RDD the worst method (37.1 mAP, below
      training from scratch on every seed) while the mean puts it level with the best baselines.
    - ``adapter``: psi, ``"conv"`` (1x1 conv + BN + ReLU to ``teacher_channels``, as GID / FG and the paper) or
      ``"identity"`` (same widths only). ``teacher_channels``: ``None`` takes the teacher's (or, without one,
      the student's own) neck width.
    """

    num_proposals: int = 100
    score_threshold: float = 0.1
    proposals: str = "both"
    roi_size: int = 7
    roi_scale: float = 1.0
    min_roi_cells: float = 1.0
    tau: float = 4.0
    lam: float = 0.1
    weighting: str = "hard"
    normalise: str = "max"
    mi_estimator: str = "l2"
    alpha_feat: float = 0.2
    alpha_logit: float = 0.2
    logit_reduction: str = "mean"
    adapter: str = "conv"
    teacher_channels: int | None = None

    def __post_init__(self) -> None:
        _ints("num_proposals", [self.num_proposals])
        _ints("roi_size", [self.roi_size])
        _in_range("score_threshold", self.score_threshold, 0.0, 1.0)
        _one_of("proposals", self.proposals, PROPOSAL_SOURCES)
        _positive("roi_scale", self.roi_scale)
        _positive("min_roi_cells", self.min_roi_cells)
        _positive("tau", self.tau)
        _in_range("lam", self.lam, 0.0, 1.0)
        _one_of("weighting", self.weighting, WEIGHTINGS)
        _one_of("normalise", self.normalise, NORMALISATIONS)
        _one_of("mi_estimator", self.mi_estimator, ESTIMATORS)
        _in_range("alpha_feat", self.alpha_feat, 0.0, 1e6)
        _in_range("alpha_logit", self.alpha_logit, 0.0, 1e6)
        _one_of("logit_reduction", self.logit_reduction, REDUCTIONS)
        _one_of("adapter", self.adapter, ADAPTERS)
        if self.teacher_channels is not None:
            _ints("teacher_channels", [self.teacher_channels])


@dataclass
class LogitKDConfig:
    """Heatmap-logit KD: ``weight * mean((sigmoid(hm_S) - sigmoid(hm_T))^2)`` over the whole BEV map."""

    weight: float = 1.0

    def __post_init__(self) -> None:
        _in_range("weight", self.weight, 0.0, 1e6)


@dataclass
class FeatureKDConfig:
    """FitNet-style feature KD: ``weight * mean((psi(neck_S) - neck_T)^2)`` over the whole neck map, psi a
    1x1 conv + BN + ReLU adapter to the teacher's channels (RDD's Table 1 "Hint" row)."""

    weight: float = 1.0
    adapter: str = "conv"
    teacher_channels: int | None = None

    def __post_init__(self) -> None:
        _in_range("weight", self.weight, 0.0, 1e6)
        _one_of("adapter", self.adapter, ADAPTERS)
        if self.teacher_channels is not None:
            _ints("teacher_channels", [self.teacher_channels])


@dataclass
class SparseKDConfig:
    """SparseKD-style pivotal-position logit KD: MSE of sigmoid heatmaps masked by the teacher's max-class
    confidence times a foreground mask (GT heatmap > ``fg_threshold``), weight ``cls_weight`` (10 for S),
    plus L1 on the regression maps at the GT centres against the teacher's, weight ``reg_weight`` (0.2)."""

    cls_weight: float = 10.0
    reg_weight: float = 0.2
    fg_threshold: float = 0.0

    def __post_init__(self) -> None:
        _in_range("cls_weight", self.cls_weight, 0.0, 1e6)
        _in_range("reg_weight", self.reg_weight, 0.0, 1e6)
        _in_range("fg_threshold", self.fg_threshold, 0.0, 1.0)


KDConfig = RDDConfig | LogitKDConfig | FeatureKDConfig | SparseKDConfig
KD_METHODS = {"rdd": RDDConfig, "logit": LogitKDConfig, "feature": FeatureKDConfig, "sparsekd": SparseKDConfig}
