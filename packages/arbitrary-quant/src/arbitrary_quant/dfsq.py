"""DFSQ: distribution-flexible subset quantization, post-training, for super-resolution (arXiv 2305.05888).

What it does to a model (``dfsq(model, calibration_batches, config)``):

1. **Wrap** the selected convs in :class:`DFSQConv` (``apply_dfsq``, the registry handler). The
   default selection is the two 3x3 convs of every residual block (head, the body's last conv,
   upsampler and tail stay FP, as in the official code and PAMS/DDTB). Residual blocks are found
   *structurally* (:func:`residual_block_convs`): a module whose convs are exactly two 3x3
   ``nn.Conv2d`` with ``in == out`` channels, registered in the order conv -> activation -> conv
   (EDSR's ``ResBlock``, SRResNet's block; the outer module and its ``body`` Sequential both
   match and name the same two convs). ``include`` replaces this default by name globs over all
   convs, ``exclude`` then drops names.
2. **Calibrate** (:func:`calibrate_dfsq`). A fresh wrapper is in ``"collect"`` mode: its forward is
   the FP conv and it keeps a copy of its input. Quantized mode is reachable only through
   :meth:`DFSQConv.finish_calibration` (``set_mode("quant")`` before it raises), so a layer can
   never run "quantized" with no points. Finishing selects, per input channel, ``2^bits`` points
   of the universal set by K-means (:func:`kmeans_subset`).
3. **Run**: the input is normalized per sample and per channel at run time, mapped to the nearest
   point of its channel, de-normalized (:func:`arbitrary_quant.reference.dfsq_quantize_reference`);
   the weight is per-output-channel MinMax at ``weight_bits``.

``post_relu`` (which normalization a layer uses): from the structure for block convs (the first
conv reads the signed residual stream: ``False``; the second reads a ``ReLU``/``ReLU6`` output:
``True``; after another activation, e.g. PReLU, it is left undecided), and for every undecided
layer from the calibration data's sign (``True`` iff no calibration input is negative).

Baselines (``activation="minmax"`` / ``"percentile"``): static **per-tensor** asymmetric uniform
activation quantizers on the same layers with the same weight quantizer; the range (widened to
contain 0) is the calibration min/max, or the ``100 - p`` / ``p`` percentiles. Per tensor, because
that is what a static integer activation quantizer runs with; DFSQ's per-(sample, channel)
dynamic normalization is the thing being compared against it.

Undo: :func:`unwrap_dfsq` (or ``slimkit.wrappers.unwrap_modules``) puts each ``base_layer`` back.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from arbitrary_quant.config import DFSQConfig
from arbitrary_quant.ops import dfsq_quantize
from arbitrary_quant.reference import (
    dfsq_nearest_rows,
    dfsq_normalize,
    dfsq_universal_set,
    minmax_weight_quantize_reference,
)
from arbitrary_quant.registry import REGISTRY
from slimkit.errors import BadInputError
from slimkit.quant import fake_quantize_affine
from slimkit.report import ReportMixin
from slimkit.surgery import REASON_NOT_INCLUDED, explain_selection, set_module
from slimkit.wrappers import WrapperModule, unwrap_modules, wrapped_modules

__all__ = [
    "DFSQConv",
    "DFSQReport",
    "apply_dfsq",
    "calibrate_dfsq",
    "dfsq",
    "exhaustive_subset",
    "kmeans_subset",
    "quantization_sse",
    "residual_block_convs",
    "unwrap_dfsq",
]

MODES = ("collect", "quant")
REASON_NOT_IN_BLOCK = "not a residual-block conv"
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.PReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU)
_RELUS = (nn.ReLU, nn.ReLU6)
_MAX_EXHAUSTIVE = 2_000_000  # subsets; beyond this brute force is pointless on a CPU
_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------- subset selection


def _as_rows(values: Tensor) -> Tensor:
    if values.dim() == 1:
        values = values.unsqueeze(0)
    if values.dim() != 2 or values.shape[1] == 0:
        raise BadInputError(f"calibration values must be [n] or [C, n] with n >= 1, got shape {tuple(values.shape)}")
    return values.float()


def quantization_sse(values: Tensor, points: Tensor) -> Tensor:
    """Per row, ``sum_x min_q (x - q)^2`` of ``values [C, n]`` (or ``[n]``) on sorted ``points [C, K]`` (or ``[K]``)."""
    rows = _as_rows(values)
    return (rows - dfsq_nearest_rows(rows, points)).pow(2).sum(dim=1)


def _dedupe_rows(points: Tensor) -> Tensor:
    """Sorted rows with repeats replaced by 0 (always in the set: the pinned centre), re-sorted."""
    ordered = points.sort(dim=1).values
    repeat = torch.zeros_like(ordered, dtype=torch.bool)
    repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    return torch.where(repeat, torch.zeros_like(ordered), ordered).sort(dim=1).values


def _kmeans_pinned(sorted_rows: Tensor, centres: Tensor, iters: int, tol: float) -> Tensor:
    """1-D K-means on every row at once, centre 0 of each row pinned at 0; a row stops once no centre moves >= tol.

    In 1-D a cluster is a run of the sorted values between two midpoints, so each iteration is a
    ``searchsorted`` of the ``K - 1`` midpoints into the sorted row plus prefix sums:
    ``O(C K log n)`` per iteration instead of ``O(C n)``. A value exactly on a midpoint joins the
    lower centre (the rule of :func:`dfsq_nearest_rows`).
    """
    c, n = sorted_rows.shape
    prefix = torch.zeros(c, n + 1, dtype=torch.float64, device=sorted_rows.device)
    prefix[:, 1:] = sorted_rows.double().cumsum(dim=1)
    first = torch.zeros(c, 1, dtype=torch.long, device=sorted_rows.device)
    last = torch.full((c, 1), n, dtype=torch.long, device=sorted_rows.device)
    active = torch.ones(c, dtype=torch.bool, device=sorted_rows.device)
    for _ in range(iters):
        ordered, order = centres.sort(dim=1)
        mids = (ordered[:, 1:] + ordered[:, :-1]) / 2
        cuts = torch.searchsorted(sorted_rows, mids.contiguous(), right=True)
        starts, ends = torch.cat([first, cuts], dim=1), torch.cat([cuts, last], dim=1)
        counts = ends - starts
        sums = prefix.gather(1, ends) - prefix.gather(1, starts)
        means = torch.where(counts > 0, sums / counts.clamp(min=1), ordered.double()).float()  # empty: stays
        updated = torch.empty_like(centres).scatter_(1, order, means)
        updated[:, 0] = 0.0
        updated = torch.where(active.unsqueeze(1), updated, centres)
        moved = (updated - centres).abs().amax(dim=1)
        centres = updated
        active &= moved >= tol
        if not bool(active.any()):
            break
    return centres


def kmeans_subset(
    values: Tensor,
    universal: Tensor,
    k: int,
    *,
    iters: int = 100,
    tol: float = 1e-3,
    restarts: int = 5,
    seed: int = 0,
) -> Tensor:
    """DFSQ's fast subset selection: per row of ``values [C, n]`` (or ``[n]``), ``k`` points of ``universal``.

    Per restart: K-means with ``k`` centres, one pinned at 0, the other ``k - 1`` initialised to
    distinct random samples of the row (zeros drawn last, since the pinned centre already covers
    them; post-ReLU rows are often half zeros), at most ``iters`` iterations; each centre is then
    snapped to its nearest value of ``universal`` and repeats are dropped. The restart with the
    lowest quantization SSE on the row wins (per row). Returns ``[C, k]`` sorted rows, a row with
    fewer distinct points padded with repeated zeros (which :func:`dfsq_nearest_rows` accepts).
    Deterministic for a given ``seed`` (random draws come from a CPU generator).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise BadInputError(f"k must be a positive integer, got {k!r}")
    rows = _as_rows(values)
    c, n = rows.shape
    u = universal.to(device=rows.device, dtype=torch.float32).sort().values
    gen = torch.Generator().manual_seed(seed)
    best = torch.zeros(c, k, device=rows.device)
    best_sse = torch.full((c,), math.inf, device=rows.device)
    draws = min(k - 1, n)
    sorted_rows = rows.sort(dim=1).values.contiguous()
    for _ in range(restarts):
        keys = torch.rand(c, n, generator=gen).to(rows.device) + (rows == 0).float()
        picked = rows.gather(1, keys.topk(draws, dim=1, largest=False).indices)
        if draws < k - 1:  # fewer samples than centres: repeat the first one (it ends as an empty cluster)
            picked = torch.cat([picked, picked[:, :1].expand(c, k - 1 - draws)], dim=1)
        centres = torch.cat([torch.zeros(c, 1, device=rows.device), picked], dim=1)
        centres = _kmeans_pinned(sorted_rows, centres, iters, tol)
        points = _dedupe_rows(dfsq_nearest_rows(centres, u))
        sse = quantization_sse(rows, points)
        better = sse < best_sse
        best = torch.where(better.unsqueeze(1), points, best)
        best_sse = torch.where(better, sse, best_sse)
    return best


def exhaustive_subset(values: Tensor, universal: Tensor, k: int, include_zero: bool = False) -> tuple[Tensor, float]:
    """The exact best ``k``-point subset of a small ``universal`` set for 1-D ``values``, by brute force.

    Tries every ``C(|U|, k)`` subset (only those holding 0 with ``include_zero``) and returns
    ``(sorted points [k], SSE)``. The reference the K-means selection is measured against; refused
    (BadInputError) beyond 2,000,000 subsets.
    """
    rows = _as_rows(values)
    if rows.shape[0] != 1:
        raise BadInputError(f"exhaustive_subset takes one channel's values, got {rows.shape[0]} rows")
    u = universal.to(device=rows.device, dtype=torch.float32).unique()
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(u):
        raise BadInputError(f"k must be in 1..{len(u)} (the universal set's size), got {k!r}")
    total = math.comb(len(u), k)
    if total > _MAX_EXHAUSTIVE:
        raise BadInputError(f"C({len(u)}, {k}) = {total} subsets is too many for an exhaustive search")
    zero = torch.nonzero(u == 0).flatten().tolist()
    if include_zero and not zero:
        raise BadInputError("include_zero needs 0 in the universal set")
    combos = itertools.combinations(range(len(u)), k)
    chunk = max(1, _CHUNK_ELEMENTS // rows.shape[1])
    best_sse, best_idx = math.inf, None
    while batch := list(itertools.islice(combos, chunk)):
        idx = torch.tensor(batch, device=rows.device)
        if include_zero:
            idx = idx[(idx == zero[0]).any(dim=1)]
            if len(idx) == 0:
                continue
        sse = quantization_sse(rows.expand(len(idx), -1), u[idx])
        low, where = sse.min(dim=0)
        if float(low) < best_sse:
            best_sse, best_idx = float(low), idx[int(where)]
    assert best_idx is not None
    return u[best_idx], best_sse


# --------------------------------------------------------------------------- the wrapper


def _uniform_qparams(lo: Tensor, hi: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Asymmetric uniform ``(scale, zero_point)`` on ``[0, 2^b - 1]`` for a range widened to contain 0."""
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    qmax = 2**bits - 1
    scale = ((hi - lo) / qmax).clamp(min=torch.finfo(torch.float32).eps)
    return scale, torch.clamp(-torch.round(lo / scale), 0, qmax)


def _kth_values(flat: Tensor, percentile: float) -> tuple[Tensor, Tensor]:
    """The ``100 - p`` and ``p`` percentiles of a 1-D tensor (nearest rank; p = 100 gives min and max)."""
    n = flat.numel()
    k_hi = min(n, max(1, math.ceil(percentile / 100.0 * n)))
    k_lo = n + 1 - k_hi
    return flat.kthvalue(k_lo).values, flat.kthvalue(k_hi).values


class DFSQConv(WrapperModule):
    """A conv whose input is DFSQ-quantized per channel (or by a static uniform baseline) and whose
    weight is per-output-channel MinMax.

    Modes: ``"collect"`` (fresh; FP forward, records the input) and ``"quant"`` (after
    :meth:`finish_calibration`). Calibrated state: the ``points`` buffer ``[C_in, 2^bits]`` (sorted
    rows, repeats padded with 0) for ``"subset"``, ``act_range`` ``[lo, hi]`` for the baselines.
    """

    def __init__(
        self,
        base_layer: nn.Conv2d,
        *,
        bits: int = 4,
        weight_bits: int = 4,
        post_relu: bool | None = None,
        activation: str = "subset",
        percentile: float = 99.99,
        words: int = 4,
        restarts: int = 5,
        kmeans_iters: int = 100,
        kmeans_tol: float = 1e-3,
        max_samples: int = 0,
        seed: int = 0,
        name: str = "",
    ) -> None:
        if not isinstance(base_layer, nn.Conv2d):
            raise BadInputError(f"DFSQConv wraps an nn.Conv2d, got {type(base_layer).__name__}")
        super().__init__(base_layer)
        if activation not in DFSQConfig.ACTIVATIONS:
            raise BadInputError(f"activation must be one of {', '.join(DFSQConfig.ACTIVATIONS)}; got {activation!r}")
        self.bits, self.weight_bits, self.post_relu = bits, weight_bits, post_relu
        self.activation, self.percentile, self.words = activation, percentile, words
        self.restarts, self.kmeans_iters, self.kmeans_tol = restarts, kmeans_iters, kmeans_tol
        self.max_samples, self.seed, self.name = max_samples, seed, name
        self.mode = "collect"
        self._inputs: list[Tensor] = []
        self.points: Tensor | None
        self.act_range: Tensor | None
        self.register_buffer("points", None)
        self.register_buffer("act_range", None)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode}, activation={self.activation}, bits={self.bits}, "
            f"weight_bits={self.weight_bits}, post_relu={self.post_relu}"
        )

    @property
    def conv(self) -> nn.Conv2d:
        base = self.base_layer
        assert isinstance(base, nn.Conv2d)
        return base

    @property
    def calibrated(self) -> bool:
        return (self.points if self.activation == "subset" else self.act_range) is not None

    def set_mode(self, mode: str) -> None:
        """Switch between ``"collect"`` and ``"quant"``; quantized mode needs a finished calibration."""
        if mode not in MODES:
            raise BadInputError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if mode == "quant" and not self.calibrated:
            raise BadInputError(f"DFSQ layer {self.name or '?'} is not calibrated: run calibrate_dfsq first")
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "collect":
            self._inputs.append(x.detach().clone())
            return self.conv(x)
        if not self.calibrated:  # mode was forced by assignment; refuse rather than run unquantized
            raise BadInputError(f"DFSQ layer {self.name or '?'} is not calibrated: run calibrate_dfsq first")
        conv = self.conv
        weight = minmax_weight_quantize_reference(conv.weight, self.weight_bits)
        return conv._conv_forward(self.quantize_input(x), weight, conv.bias)

    def quantize_input(self, x: Tensor) -> Tensor:
        """The activation fake-quant this layer applies (needs a finished calibration)."""
        if self.activation == "subset":
            assert self.points is not None and self.post_relu is not None
            return dfsq_quantize(x, self.points, self.post_relu)  # reference on CPU, fused Triton kernel on CUDA
        assert self.act_range is not None
        scale, zero_point = _uniform_qparams(self.act_range[0], self.act_range[1], self.bits)
        return fake_quantize_affine(x, scale, zero_point, 0, 2**self.bits - 1)

    def finish_calibration(self) -> None:
        """Fit the activation quantizer on the inputs seen in ``"collect"`` mode, drop them, switch to ``"quant"``."""
        if not self._inputs:
            raise BadInputError(f"DFSQ layer {self.name or '?'} saw no calibration input")
        inputs, self._inputs = self._inputs, []
        if self.post_relu is None:
            self.post_relu = all(bool((x >= 0).all()) for x in inputs)
        if self.activation == "subset":
            rows = torch.cat(
                [dfsq_normalize(x, self.post_relu)[0].transpose(0, 1).reshape(x.shape[1], -1) for x in inputs], dim=1
            )
            if 0 < self.max_samples < rows.shape[1]:
                gen = torch.Generator().manual_seed(self.seed)
                keep = torch.randperm(rows.shape[1], generator=gen)[: self.max_samples].to(rows.device)
                rows = rows[:, keep]
            universal = dfsq_universal_set(self.words).to(rows.device)
            self.points = kmeans_subset(
                rows,
                universal,
                2**self.bits,
                iters=self.kmeans_iters,
                tol=self.kmeans_tol,
                restarts=self.restarts,
                seed=self.seed,
            )
        else:
            flat = torch.cat([x.float().flatten() for x in inputs])
            pct = 100.0 if self.activation == "minmax" else self.percentile
            lo, hi = _kth_values(flat, pct)
            self.act_range = torch.stack([lo, hi])
        self.mode = "quant"

    def point_sets(self) -> list[Tensor]:
        """Each input channel's distinct points (sorted), for inspection."""
        if self.points is None:
            raise BadInputError(f"DFSQ layer {self.name or '?'} is not calibrated")
        return [row.unique() for row in self.points]


# --------------------------------------------------------------------------- selection, handler, calibration


def _leaves(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if n and not any(True for _ in m.children())]


def residual_block_convs(model: nn.Module) -> dict[str, bool | None]:
    """The convs of every residual block, by qualified name, with their ``post_relu`` (see the module doc).

    A block is a module whose ``nn.Conv2d`` leaves are exactly two 3x3 convs with equal in/out
    channels and an activation leaf registered between them.
    """
    found: dict[str, bool | None] = {}
    for prefix, module in model.named_modules():
        leaves = _leaves(module)
        convs = [(i, n, m) for i, (n, m) in enumerate(leaves) if isinstance(m, nn.Conv2d)]
        if len(convs) != 2:
            continue
        (i1, n1, c1), (i2, n2, c2) = convs
        shapes_ok = all(c.kernel_size == (3, 3) and c.in_channels == c.out_channels == c1.in_channels for c in (c1, c2))
        between = [m for _, m in leaves[i1 + 1 : i2] if isinstance(m, _ACTIVATIONS)]
        if not shapes_ok or not between:
            continue
        dot = f"{prefix}." if prefix else ""
        found[dot + n1] = False
        found[dot + n2] = True if isinstance(between[-1], _RELUS) else None
    return found


@dataclass
class DFSQReport(ReportMixin):
    """What :func:`apply_dfsq` did: the wrapped convs (with their ``post_relu``) and the skipped ones with why."""

    wrapped: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    post_relu: dict[str, bool | None] = field(default_factory=dict)
    activation: str = "subset"
    bits: int = 4
    weight_bits: int = 4


@REGISTRY.register(DFSQConfig)
def apply_dfsq(model: nn.Module, config: DFSQConfig) -> DFSQReport:
    """Wrap the selected convs of ``model`` in place in :class:`DFSQConv` (``"collect"`` mode); no calibration."""
    if isinstance(model, DFSQConv) or wrapped_modules(model, DFSQConv):
        raise BadInputError("the model already holds DFSQ layers; unwrap_dfsq(model) first")
    blocks = residual_block_convs(model)
    include = config.include if config.include is not None else list(blocks)
    report = DFSQReport(activation=config.activation, bits=config.bits, weight_bits=config.weight_bits)
    chosen: list[tuple[str, nn.Module]] = []
    for name, module, reason in explain_selection(model, (nn.Conv2d,), include, config.exclude):
        if reason is None:
            chosen.append((name, module))
        else:
            default_miss = config.include is None and reason == REASON_NOT_INCLUDED
            report.skipped.append((name, REASON_NOT_IN_BLOCK if default_miss else reason))
    if not chosen:
        hint = "no residual block was found; name the convs with include" if not blocks else "check include/exclude"
        raise BadInputError(f"DFSQ selected no conv to quantize ({hint})")
    for index, (name, module) in enumerate(chosen):
        assert isinstance(module, nn.Conv2d)
        post_relu = blocks.get(name)  # None outside a block: decided by the calibration data's sign
        wrapper = DFSQConv(
            module,
            bits=config.bits,
            weight_bits=config.weight_bits,
            post_relu=post_relu,
            activation=config.activation,
            percentile=config.percentile,
            words=config.words,
            restarts=config.restarts,
            kmeans_iters=config.kmeans_iters,
            kmeans_tol=config.kmeans_tol,
            max_samples=config.max_samples,
            seed=config.seed + index,
            name=name,
        )
        set_module(model, name, wrapper)
        report.wrapped.append(name)
        report.post_relu[name] = post_relu
    return report


def _batch_input(batch: object) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise BadInputError(f"a calibration batch must be a tensor or a (input, ...) tuple, got {type(batch).__name__}")


def calibrate_dfsq(model: nn.Module, calibration_batches: Iterable[object]) -> int:
    """Run the calibration batches through ``model`` (eval, no grad), then fit every collecting DFSQ layer.

    Batches are LR tensors ``[N, C, H, W]`` or ``(lr, hr, ...)`` tuples. Returns the number of batches.
    """
    layers = [layer for _, layer in wrapped_modules(model, DFSQConv) if isinstance(layer, DFSQConv)]
    if not layers:
        raise BadInputError("the model holds no DFSQ layer: apply_dfsq(model, config) first")
    for layer in layers:
        layer._inputs.clear()  # inputs left by an earlier calibration that failed part-way
        layer.set_mode("collect")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    count = 0
    try:
        with torch.no_grad():
            for batch in calibration_batches:
                model(_batch_input(batch).to(device))
                count += 1
    finally:
        model.train(was_training)
    if count == 0:
        for layer in layers:
            layer._inputs.clear()
        raise BadInputError("no calibration batches were given")
    for layer in layers:
        layer.finish_calibration()
    return count


def dfsq(model: nn.Module, calibration_batches: Iterable[object], config: DFSQConfig) -> nn.Module:
    """Wrap and calibrate in one call (in place); returns ``model``, ready to run quantized."""
    apply_dfsq(model, config)
    calibrate_dfsq(model, calibration_batches)
    return model


def unwrap_dfsq(model: nn.Module) -> int:
    """Put every DFSQ layer's original conv back; returns how many were unwrapped."""
    return unwrap_modules(model, DFSQConv)
