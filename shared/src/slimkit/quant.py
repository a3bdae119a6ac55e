"""Fake-quantization primitives with straight-through gradients, shared by the quantization packages.

Why one module: arbitrary-bit, detection and 3-D packages all train with the same handful of
quantizers, and the formulas (rounding, clipping, which gradient leaks through where) decide
whether a result reproduces a paper. Each quantizer here writes its backward out explicitly
(an ``autograd.Function``) or builds it from :mod:`slimkit.ste`, so the gradient is the
paper's, not an accident of autograd.

What is here:

- Integer grid: :func:`quant_range` (signed ``[-2^(b-1), 2^(b-1)-1]``, unsigned ``[0, 2^b-1]``).
- Granularity (:class:`QuantSpec` fields ``granularity``/``axis``/``group_size``):
  ``"tensor"`` (one step), ``"channel"`` (one per index of ``axis``), ``"group"`` (one per run of
  ``group_size`` consecutive elements of each ``x[i]``, i.e. of the tensor viewed as
  ``(shape[0], -1)``; a 1-D tensor is one row). For a 2-D weight, and whenever the last dim is a
  multiple of ``group_size``, this is torchao's ``PerGroup`` (block ``(1, ..., 1, group_size)``);
  for a conv weight ``(O, I, kh, kw)`` the groups run over ``I*kh*kw``.
  :func:`granular_view` gives the view in which a step of :func:`granular_param_shape` broadcasts.
- Affine fake-quant, torchao's formula: ``q = clamp(round(x * (1/scale)) + zero_point, qmin, qmax)``,
  ``x_fq = (q - zero_point) * scale`` (:func:`fake_quantize_affine`, :func:`fake_quantize`,
  :func:`minmax_qparams`: torchao's / ``torch.ao`` min-max qparams).
- LSQ / LSQ+ (:func:`lsq_fake_quant`, :class:`LSQQuantizer`), MultiQuant's learned interval
  (:func:`interval_quantize`, :class:`IntervalQuantizer`), DoReFa (:func:`dorefa_weight`,
  :func:`dorefa_activation` and modules) and sign binarizers (:func:`sign_binarize`,
  :class:`SignBinarizer`; ``sign(0) = +1``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from slimkit.errors import BadInputError
from slimkit.ste import round_ste

__all__ = [
    "GRANULARITIES",
    "SIGN_STES",
    "DoReFaActivationQuantizer",
    "DoReFaWeightQuantizer",
    "IntervalQuantizer",
    "LSQQuantizer",
    "QuantSpec",
    "SignBinarizer",
    "dequantize_affine",
    "dorefa_activation",
    "dorefa_quantize_unit",
    "dorefa_weight",
    "fake_quantize",
    "fake_quantize_affine",
    "granular_param_shape",
    "granular_view",
    "interval_codes",
    "interval_quantize",
    "lsq_fake_quant",
    "lsq_grad_scale",
    "minmax_qparams",
    "quant_range",
    "quantize_affine",
    "sign_binarize",
]

GRANULARITIES = ("tensor", "channel", "group")
SIGN_STES = ("plain", "clipped", "approx_sign")
_MAX_BITS = 16
FP_BITS = 32  # a bit-width of 32 means "leave in floating point" where a quantizer accepts it


def _check_bits(bits: Any, what: str = "bits", allow_fp: bool = False) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise BadInputError(f"{what} must be an integer, got {bits!r}")
    if allow_fp and bits == FP_BITS:
        return bits
    if not 1 <= bits <= _MAX_BITS:
        extra = f" (or {FP_BITS} for floating point)" if allow_fp else ""
        raise BadInputError(f"{what} must be in 1..{_MAX_BITS}{extra}, got {bits}")
    return bits


def quant_range(bits: int, signed: bool) -> tuple[int, int]:
    """``(qmin, qmax)`` of the integer grid: signed ``[-2^(b-1), 2^(b-1)-1]``, unsigned ``[0, 2^b-1]``.

    In LSQ's notation ``Q_N = -qmin`` and ``Q_P = qmax``.
    """
    _check_bits(bits)
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


# --------------------------------------------------------------------------- granularity


@dataclass(frozen=True)
class _Gran:
    kind: str
    axis: int
    group_size: int

    def __post_init__(self) -> None:
        if self.kind not in GRANULARITIES:
            raise BadInputError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.kind!r}")
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise BadInputError(f"axis must be an integer, got {self.axis!r}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int):
            raise BadInputError(f"group_size must be an integer, got {self.group_size!r}")
        if self.kind == "group" and self.group_size < 1:
            raise BadInputError(f"granularity 'group' needs group_size >= 1, got {self.group_size}")
        if self.kind != "group" and self.group_size != 0:
            raise BadInputError(f"group_size is only used with granularity 'group' (got {self.kind!r})")

    def _axis(self, ndim: int) -> int:
        if not -ndim <= self.axis < ndim:
            raise BadInputError(f"channel axis {self.axis} is out of range for a {ndim}-d tensor")
        return self.axis % ndim

    def view(self, x: Tensor) -> Tensor:
        if self.kind == "group":
            rows = x.shape[0] if x.dim() >= 2 else 1
            cols = x.numel() // rows if rows else 0
            if cols % self.group_size:
                raise BadInputError(
                    f"group_size {self.group_size} does not divide the {cols} elements per row of a tensor of shape {tuple(x.shape)}"
                )
            return x.reshape(rows, cols // self.group_size, self.group_size)
        if self.kind == "channel":
            if x.dim() == 0:
                raise BadInputError("per-channel granularity needs a tensor with at least one dimension")
            self._axis(x.dim())
        return x

    def param_shape(self, v: Tensor) -> tuple[int, ...]:
        """Shape of one parameter per step for the *view* ``v``."""
        if self.kind == "tensor":
            return ()
        if self.kind == "group":
            return (v.shape[0], v.shape[1], 1)
        ax = self._axis(v.dim())
        return tuple(v.shape[ax] if i == ax else 1 for i in range(v.dim()))

    def reduce(self, v: Tensor, op: str) -> Tensor:
        """``op`` in amin/amax/mean/std over the elements that share a step, shaped as :meth:`param_shape`."""
        pshape = self.param_shape(v)
        if self.kind == "tensor":
            flat = v.reshape(-1)
            out = getattr(torch, op)(flat, dim=0)
        else:
            if self.kind == "group":
                dims: tuple[int, ...] = (2,)
            else:
                ax = self._axis(v.dim())
                dims = tuple(i for i in range(v.dim()) if i != ax)
            if not dims:  # a 1-d tensor per channel: each element is its own group
                v, dims = v.unsqueeze(-1), (v.dim(),)
            out = getattr(torch, op)(v, dim=dims, keepdim=True)
        assert isinstance(out, Tensor)
        return out.reshape(pshape)


def granular_view(x: Tensor, granularity: str = "tensor", axis: int = 0, group_size: int = 0) -> Tensor:
    """``x`` reshaped so that a step of :func:`granular_param_shape` broadcasts against it.

    ``"tensor"`` and ``"channel"``: ``x`` itself; ``"group"``: ``(rows, n_groups, group_size)`` with
    ``rows = x.shape[0]`` (1 for a 1-D tensor). Reshape back with ``.reshape(x.shape)``.
    """
    return _Gran(granularity, axis, group_size).view(x)


def granular_param_shape(
    shape: Sequence[int], granularity: str = "tensor", axis: int = 0, group_size: int = 0
) -> tuple[int, ...]:
    """Shape of a step / zero point for a tensor of ``shape``: ``()``, ``(1, .., C, .., 1)`` or ``(rows, n_groups, 1)``."""
    g = _Gran(granularity, axis, group_size)
    return g.param_shape(g.view(torch.empty(tuple(shape), device="meta")))


@dataclass
class QuantSpec:
    """What grid a quantizer uses; a JSON-typed dataclass (``slimkit.io.config_to_dict`` / ``save_config``).

    - ``bits``: 1..16.
    - ``signed``: integer grid ``[-2^(b-1), 2^(b-1)-1]`` (weights) or ``[0, 2^b-1]`` (post-ReLU activations).
    - ``symmetric``: no offset. ``False`` adds a zero point (affine) / LSQ+'s learnable offset ``beta``.
    - ``granularity``: ``"tensor"``, ``"channel"`` (one step per index of ``axis``) or ``"group"``
      (``group_size`` consecutive elements of each ``x[i]``); see the module docstring.
    """

    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    granularity: str = "tensor"
    axis: int = 0
    group_size: int = 0

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        for name in ("signed", "symmetric"):
            if not isinstance(getattr(self, name), bool):
                raise BadInputError(f"QuantSpec.{name} must be true or false, got {getattr(self, name)!r}")
        _Gran(self.granularity, self.axis, self.group_size)

    @property
    def qmin(self) -> int:
        """Lowest integer of the grid (``-Q_N``)."""
        return quant_range(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        """Highest integer of the grid (``Q_P``)."""
        return quant_range(self.bits, self.signed)[1]

    def view(self, x: Tensor) -> Tensor:
        """:func:`granular_view` with this spec's granularity."""
        return _Gran(self.granularity, self.axis, self.group_size).view(x)

    def param_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """:func:`granular_param_shape` with this spec's granularity."""
        return granular_param_shape(shape, self.granularity, self.axis, self.group_size)


def _gran(spec: QuantSpec) -> _Gran:
    return _Gran(spec.granularity, spec.axis, spec.group_size)


# --------------------------------------------------------------------------- affine (torchao formula)


def _as_tensor(value: Tensor | float | None, like: Tensor) -> Tensor:
    if value is None:
        return torch.zeros((), dtype=like.dtype, device=like.device)
    if isinstance(value, Tensor):
        return value.to(like.device)
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def _affine_codes(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> tuple[Tensor, Tensor]:
    """Unclamped and clamped codes, exactly torchao's ``round(x * (1/scale)) + zero_point``."""
    raw = torch.round(x * (1.0 / scale)) + zero_point
    return raw, torch.clamp(raw, qmin, qmax)


class _AffineFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
        raw, q = _affine_codes(x, scale, zero_point, qmin, qmax)
        ctx.save_for_backward((raw >= qmin) & (raw <= qmax))
        return ((q - zero_point) * scale).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:
        (mask,) = ctx.saved_tensors
        return grad * mask.to(grad.dtype), None, None, None, None


def fake_quantize_affine(
    x: Tensor, scale: Tensor | float, zero_point: Tensor | float | None, qmin: int, qmax: int
) -> Tensor:
    """torchao's affine fake-quant with a straight-through gradient; ``scale``/``zero_point`` broadcast to ``x``.

    Forward: ``q = clamp(round(x * (1/scale)) + zero_point, qmin, qmax)``, ``(q - zero_point) * scale``
    (``round`` is half-to-even, as in torch and torchao). Backward: the gradient passes where the
    unclamped code ``round(x/scale) + zero_point`` lies in ``[qmin, qmax]`` and is 0 elsewhere (the
    mask of ``torch.fake_quantize_per_tensor_affine``); ``scale`` and ``zero_point`` get no gradient
    (learn them with :class:`LSQQuantizer`). For per-group parameters pass :func:`granular_view` of ``x``.
    """
    s = _as_tensor(scale, x)
    zp = _as_tensor(zero_point, x)
    out = _AffineFakeQuant.apply(x, s.detach(), zp.detach(), int(qmin), int(qmax))
    assert isinstance(out, Tensor)
    return out


def quantize_affine(
    x: Tensor,
    scale: Tensor | float,
    zero_point: Tensor | float | None,
    qmin: int,
    qmax: int,
    dtype: torch.dtype = torch.int32,
) -> Tensor:
    """The integer codes ``clamp(round(x * (1/scale)) + zero_point, qmin, qmax)`` as ``dtype`` (no gradient)."""
    _, q = _affine_codes(
        x.detach(), _as_tensor(scale, x).detach(), _as_tensor(zero_point, x).detach(), int(qmin), int(qmax)
    )
    return q.to(dtype)


def dequantize_affine(
    q: Tensor, scale: Tensor | float, zero_point: Tensor | float | None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``(q - zero_point) * scale`` in ``dtype``."""
    ref = torch.empty((), dtype=dtype, device=q.device)
    return ((q.to(dtype) - _as_tensor(zero_point, ref)) * _as_tensor(scale, ref)).to(dtype)


def minmax_qparams(x: Tensor, spec: QuantSpec, eps: float | None = None) -> tuple[Tensor, Tensor]:
    """Min-max ``(scale, zero_point)`` per step of ``spec`` (shapes of ``spec.param_shape(x.shape)``).

    The range always contains 0: ``lo = min(min(x), 0)``, ``hi = max(max(x), 0)`` (torchao and
    ``torch.ao`` observers). Scales are floored at ``eps`` (default ``finfo(float32).eps``).

    - symmetric, signed: ``scale = max(-lo, hi) / ((qmax - qmin) / 2)``, ``zero_point = 0``
      (torchao's ``MappingType.SYMMETRIC``);
    - symmetric, unsigned: ``scale = hi / qmax``, ``zero_point = 0`` (negative values clip to 0);
    - asymmetric: ``scale = (hi - lo) / (qmax - qmin)``, ``zero_point = clamp(qmin - round(lo / scale), qmin, qmax)``
      (torchao's ``MappingType.ASYMMETRIC``).

    ``zero_point`` is returned in ``x``'s float dtype, holding integers.
    """
    g = _gran(spec)
    v = g.view(x.detach())
    floor = torch.finfo(torch.float32).eps if eps is None else eps
    lo = torch.clamp(g.reduce(v, "amin"), max=0)
    hi = torch.clamp(g.reduce(v, "amax"), min=0)
    qmin, qmax = spec.qmin, spec.qmax
    if spec.symmetric:
        scale = torch.maximum(-lo, hi) / ((qmax - qmin) / 2) if spec.signed else hi / qmax
        return torch.clamp(scale, min=floor), torch.zeros_like(scale)
    scale = torch.clamp((hi - lo) / float(qmax - qmin), min=floor)
    zero_point = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
    return scale, zero_point


def fake_quantize(x: Tensor, spec: QuantSpec, scale: Tensor | None = None, zero_point: Tensor | None = None) -> Tensor:
    """:func:`fake_quantize_affine` on ``spec``'s grid and granularity; ``scale=None`` uses :func:`minmax_qparams` of ``x``.

    Dynamic (per call) min-max quantization when no ``scale`` is given, as torchao's dynamic
    activation configs do. ``scale``/``zero_point`` given must have ``spec.param_shape(x.shape)``
    (or broadcast to it).
    """
    v = spec.view(x)
    if scale is None:
        scale, auto_zp = minmax_qparams(x, spec)
        zero_point = auto_zp if zero_point is None else zero_point
    return fake_quantize_affine(v, scale, zero_point, spec.qmin, spec.qmax).reshape(x.shape)


# --------------------------------------------------------------------------- LSQ / LSQ+


def lsq_grad_scale(num_elements: int, qmax: int) -> float:
    """LSQ's step-size gradient scale ``g = 1 / sqrt(N * Q_P)`` (``N`` elements share the step)."""
    if num_elements < 1 or qmax < 1:
        raise BadInputError(f"LSQ gradient scale needs N >= 1 and Q_P >= 1, got N={num_elements}, Q_P={qmax}")
    return 1.0 / math.sqrt(num_elements * qmax)


class _LSQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, step: Tensor, offset: Tensor | None, qmin: int, qmax: int, g: float) -> Tensor:
        a = (x - offset) * (1.0 / step) if offset is not None else x * (1.0 / step)
        q = torch.round(torch.clamp(a, qmin, qmax))
        out = q * step + offset if offset is not None else q * step
        ctx.save_for_backward(a, q)
        ctx.shapes = (step.shape, None if offset is None else offset.shape)
        ctx.qrange = (qmin, qmax)
        ctx.g = g
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:
        a, q = ctx.saved_tensors
        qmin, qmax = ctx.qrange
        below = a <= qmin
        above = a >= qmax
        inside = ~(below | above)
        gx = gs = go = None
        if ctx.needs_input_grad[0]:
            gx = grad * inside.to(grad.dtype)
        if ctx.needs_input_grad[1]:
            local = torch.where(inside, q - a, torch.where(below, float(qmin), float(qmax)))
            gs = (grad * local).sum_to_size(ctx.shapes[0]) * ctx.g
        if ctx.shapes[1] is not None and ctx.needs_input_grad[2]:
            go = (grad * (~inside).to(grad.dtype)).sum_to_size(ctx.shapes[1]) * ctx.g
        return gx, gs, go, None, None, None


def lsq_fake_quant(
    x: Tensor, step: Tensor, qmin: int, qmax: int, grad_scale: float = 1.0, offset: Tensor | None = None
) -> Tensor:
    """LSQ (Esser et al. 2019) and, with ``offset``, LSQ+ (Bhalgat et al. 2020) fake-quant.

    ``a = (x - offset) / step`` (computed as ``* (1/step)``, as torchao does), forward
    ``round(clip(a, qmin, qmax)) * step + offset``. ``step``/``offset`` broadcast to ``x`` and must
    be positive / finite (:class:`LSQQuantizer` keeps the step positive). Backward, the papers':

    - ``d/dx = 1`` if ``qmin < a < qmax`` else 0;
    - ``d/dstep = round(a) - a`` inside, ``qmin`` (= ``-Q_N``) if ``a <= qmin``, ``qmax`` (= ``Q_P``) if ``a >= qmax``;
    - ``d/doffset = 0`` inside, ``1`` outside;

    the step and offset gradients multiplied by ``grad_scale`` (LSQ's ``g``, see :func:`lsq_grad_scale`;
    LSQ+ gives no separate scale for the offset, so it shares the step's) and summed over the
    elements that share them. With ``offset=None`` the forward is bit for bit torchao's symmetric
    fake-quant (``zero_point = 0``; clip-then-round equals round-then-clamp on integer bounds). The
    input gradient is LSQ's, not torch's/torchao's STE mask, which tests the *rounded* code
    inclusively and so also passes the gradient up to half a step beyond ``qmin`` and ``qmax``.
    """
    out = _LSQ.apply(x, step, offset, int(qmin), int(qmax), float(grad_scale))
    assert isinstance(out, Tensor)
    return out


_LSQ_INITS = ("lsq", "minmax", "sigma")


class LSQQuantizer(nn.Module):
    """Learned step size quantizer (LSQ), with LSQ+'s learnable offset when ``spec.symmetric`` is False.

    - ``step`` (and ``offset``) are parameters of ``spec.param_shape(shape)``; ``shape`` is the shape
      of the tensor to quantize (needed for per-channel / per-group; for activations only the
      channel axis size matters, so any batch size works for ``"channel"``).
    - **Positive step**: the step used is ``|step|`` floored at ``eps``. For ``step > eps`` the
      gradient is exactly LSQ's; a step pushed through zero keeps learning as its mirror image
      instead of inverting the grid (the negative-step collapse users of LSQ report).
    - **Gradient scale** ``g = 1/sqrt(N * Q_P)`` with ``N`` = elements sharing one step in the
      tensor quantized (LSQ's ``N_W`` for weights). ``per_sample=True`` leaves the batch (dim 0)
      out of ``N``: the paper's ``N_F`` (features per layer) for activations. ``grad_scale=<float>``
      fixes ``g`` (``1.0`` turns the scaling off).
    - **Init** (:meth:`init_from`, run on the first forward if not called before):
      ``"lsq"``: ``step = 2 * mean|x| / sqrt(Q_P)`` (offset 0); ``"minmax"`` (LSQ+ activations):
      ``step = (max - min) / (qmax - qmin)``, ``offset = min - qmin * step``, or ``max|x| / qmax``
      without offset; ``"sigma"`` (LSQ+ weights): ``step = max(|mu - 3 sd|, |mu + 3 sd|) / 2^(b-1)``.
      Default: ``"lsq"`` when symmetric, ``"minmax"`` otherwise.
    - ``spec.signed`` with 1 bit has ``Q_P = 0`` and is refused (use :class:`SignBinarizer`).
    """

    initialized: Tensor

    def __init__(
        self,
        spec: QuantSpec,
        shape: Sequence[int] | None = None,
        *,
        init: str | None = None,
        grad_scale: float | None = None,
        per_sample: bool = False,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"LSQQuantizer takes a QuantSpec, got {type(spec).__name__}")
        if spec.qmax < 1:
            raise BadInputError("LSQ needs Q_P >= 1: a signed 1-bit grid is [-1, 0]; use SignBinarizer or signed=False")
        if init is not None and init not in _LSQ_INITS:
            raise BadInputError(f"LSQ init must be one of {', '.join(_LSQ_INITS)}, got {init!r}")
        if spec.granularity != "tensor" and shape is None:
            raise BadInputError(
                f"LSQQuantizer with granularity {spec.granularity!r} needs the shape of the tensor it quantizes"
            )
        self.spec = spec
        pshape = spec.param_shape(shape) if shape is not None else ()
        self.step = nn.Parameter(torch.ones(pshape))
        self.offset: nn.Parameter | None = None if spec.symmetric else nn.Parameter(torch.zeros(pshape))
        self.init = init or ("lsq" if spec.symmetric else "minmax")
        self.grad_scale = grad_scale
        self.per_sample = per_sample
        self.eps = eps
        self.register_buffer("initialized", torch.tensor(False))

    def extra_repr(self) -> str:
        s = self.spec
        gran = {"channel": f"channel(axis={s.axis})", "group": f"group({s.group_size})"}.get(
            s.granularity, s.granularity
        )
        return (
            f"bits={s.bits}, signed={s.signed}, offset={self.offset is not None}, granularity={gran}, init={self.init}"
        )

    def positive_step(self) -> Tensor:
        """The step the forward uses: ``|step|`` floored at ``eps``."""
        return self.step.abs().clamp_min(self.eps)

    def gradient_scale(self, x: Tensor) -> float:
        """The ``g`` used for ``x``: ``grad_scale`` if set, else ``1/sqrt(N * Q_P)``."""
        if self.grad_scale is not None:
            return float(self.grad_scale)
        n = x.numel() // max(1, self.step.numel())
        if self.per_sample and x.dim() > 0 and x.shape[0] > 0:
            n //= x.shape[0]
        return lsq_grad_scale(max(1, n), self.spec.qmax)

    @torch.no_grad()
    def init_from(self, x: Tensor) -> None:
        """Set ``step`` (and ``offset``) from data with this quantizer's ``init`` rule."""
        spec, g = self.spec, _gran(self.spec)
        v = g.view(x.detach().to(self.step.dtype))
        if self.init == "lsq":
            step = 2 * g.reduce(v.abs(), "mean") / math.sqrt(spec.qmax)
            offset = torch.zeros_like(step)
        elif self.init == "sigma":
            mu, sd = g.reduce(v, "mean"), g.reduce(v, "std")
            step = torch.maximum((mu - 3 * sd).abs(), (mu + 3 * sd).abs()) / 2 ** (spec.bits - 1)
            offset = torch.zeros_like(step)
        elif self.offset is not None:  # minmax with offset (LSQ+)
            lo, hi = g.reduce(v, "amin"), g.reduce(v, "amax")
            step = (hi - lo) / (spec.qmax - spec.qmin)
            offset = lo - spec.qmin * step.clamp_min(self.eps)
        else:  # minmax, symmetric
            step = g.reduce(v.abs(), "amax") / spec.qmax
            offset = torch.zeros_like(step)
        self.step.copy_(torch.nan_to_num(step, nan=1.0).clamp_min(self.eps).reshape(self.step.shape))
        if self.offset is not None:
            self.offset.copy_(torch.nan_to_num(offset).reshape(self.offset.shape))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        if not bool(self.initialized):
            self.init_from(x)
        v = self.spec.view(x)
        out = lsq_fake_quant(
            v, self.positive_step(), self.spec.qmin, self.spec.qmax, self.gradient_scale(v), self.offset
        )
        return out.reshape(x.shape)

    @torch.no_grad()
    def int_repr(self, x: Tensor, dtype: torch.dtype = torch.int32) -> Tensor:
        """Integer codes ``round(clip((x - offset) / step, qmin, qmax))`` (for export / :mod:`slimkit.packing`)."""
        v = self.spec.view(x)
        a = v - self.offset if self.offset is not None else v
        q = torch.round(torch.clamp(a * (1.0 / self.positive_step()), self.spec.qmin, self.spec.qmax))
        return q.reshape(x.shape).to(dtype)


# --------------------------------------------------------------------------- learned interval (MultiQuant)

_INTERVAL_MODES = ("weight", "activation")


def interval_quantize(
    x: Tensor, lower: Tensor | float, upper: Tensor | float, bits: int, mode: str = "activation", eps: float = 1e-8
) -> Tensor:
    """MultiQuant's learned-interval quantizer ``[lower, upper]`` (PalQuant/QIL-style).

    ``t = clip((x - lower) / (upper - lower), 0, 1)``, ``r = round(L * t) / L`` with ``L = 2^bits - 1``
    and a straight-through round. ``mode="activation"`` returns ``r`` in ``[0, 1]``;
    ``mode="weight"`` returns ``2 * (r - 1/2)`` in ``[-1, 1]`` (2 bits: ``{-1, -1/3, 1/3, 1}``). The
    scale is not multiplied back (the following BatchNorm absorbs it). Gradients are autograd's
    through the clip (``torch.clamp``: zero for ``x``, ``lower`` and ``upper`` where ``t`` was clipped);
    ``upper - lower`` is floored at ``eps``.
    """
    if mode not in _INTERVAL_MODES:
        raise BadInputError(f"interval quantizer mode must be 'weight' or 'activation', got {mode!r}")
    levels = 2 ** _check_bits(bits) - 1
    r = round_ste(_interval_unit(x, lower, upper, eps) * levels) / levels
    return 2 * (r - 0.5) if mode == "weight" else r


def _interval_unit(x: Tensor, lower: Tensor | float, upper: Tensor | float, eps: float) -> Tensor:
    """``clip((x - lower) / (upper - lower), 0, 1)`` with the width floored at ``eps``."""
    lo = _as_tensor(lower, x)
    width = (_as_tensor(upper, x) - lo).clamp_min(eps)
    return torch.clamp((x - lo) / width, 0.0, 1.0)


def interval_codes(
    x: Tensor, lower: Tensor | float, upper: Tensor | float, bits: int, eps: float = 1e-8
) -> Tensor:
    """The integer level (``0 .. 2^bits - 1``, int64) :func:`interval_quantize` rounds ``x`` to, for export:
    the same float operations, so the same integers."""
    levels = 2 ** _check_bits(bits) - 1
    return torch.round(_interval_unit(x, lower, upper, eps) * levels).to(torch.int64)


class IntervalQuantizer(nn.Module):
    """Learnable ``lower``/``upper`` bounds around :func:`interval_quantize` (MultiQuant's ``QConv`` quantizers).

    Init (:meth:`init_from`, run on the first forward if not called before), as MultiQuant's
    ``initialize``: weights ``upper = 3 * std(w)``, ``lower = -3 * std(w)``; activations
    ``upper = 3 * std(x) / sqrt(1 - 2/pi)``, ``lower = min(x)`` (``std`` unbiased, torch's default).
    MultiQuant trains the bounds with their own Adam (lr 1e-4). ``bits`` may be changed between
    calls (switchable precision); MultiQuant keeps one activation quantizer per bit-width.
    """

    initialized: Tensor

    def __init__(
        self,
        bits: int,
        mode: str = "activation",
        shape: Sequence[int] | None = None,
        *,
        granularity: str = "tensor",
        axis: int = 0,
        group_size: int = 0,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        if mode not in _INTERVAL_MODES:
            raise BadInputError(f"interval quantizer mode must be 'weight' or 'activation', got {mode!r}")
        self.bits = _check_bits(bits)
        self.mode = mode
        self.gran = _Gran(granularity, axis, group_size)
        if granularity != "tensor" and shape is None:
            raise BadInputError(
                f"IntervalQuantizer with granularity {granularity!r} needs the shape of the tensor it quantizes"
            )
        pshape = granular_param_shape(shape, granularity, axis, group_size) if shape is not None else ()
        self.lower = nn.Parameter(torch.full(pshape, -1.0 if mode == "weight" else 0.0))
        self.upper = nn.Parameter(torch.ones(pshape))
        self.eps = eps
        self.register_buffer("initialized", torch.tensor(False))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, mode={self.mode}, granularity={self.gran.kind}"

    @torch.no_grad()
    def init_from(self, x: Tensor) -> None:
        """MultiQuant's data init of ``lower``/``upper`` (see the class docstring)."""
        v = self.gran.view(x.detach().to(self.lower.dtype))
        sd = self.gran.reduce(v, "std")
        if self.mode == "weight":
            upper, lower = 3 * sd, -3 * sd
        else:
            upper, lower = 3 * sd / math.sqrt(1 - 2 / math.pi), self.gran.reduce(v, "amin")
        self.upper.copy_(upper.reshape(self.upper.shape))
        self.lower.copy_(lower.reshape(self.lower.shape))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        if not bool(self.initialized):
            self.init_from(x)
        v = self.gran.view(x)
        return interval_quantize(v, self.lower, self.upper, self.bits, self.mode, self.eps).reshape(x.shape)


# --------------------------------------------------------------------------- DoReFa


def dorefa_quantize_unit(x: Tensor, bits: int) -> Tensor:
    """DoReFa's ``q_k(x) = round((2^k - 1) * x) / (2^k - 1)`` for ``x`` in ``[0, 1]``, straight-through round."""
    levels = 2 ** _check_bits(bits) - 1
    return round_ste(x * levels) / levels


def dorefa_weight(w: Tensor, bits: int, scale: bool = False) -> Tensor:
    """DoReFa weights: ``2 * q_k(tanh(w) / (2 max|tanh w|) + 1/2) - 1`` (gradient through tanh and the max).

    ``bits == 1``: ``sign(w) * mean|w|`` (``sign(0) = +1``; ``mean|w|`` detached, identity gradient),
    as in the DoReFa paper. ``scale=True`` multiplies the k-bit result by the detached ``mean|w|``
    (Any-Precision DNNs' variant). ``bits == 32`` returns ``w`` unchanged.
    """
    if _check_bits(bits, allow_fp=True) == FP_BITS:
        return w
    if bits == 1:
        binary = torch.where(w >= 0, 1.0, -1.0).to(w.dtype) * w.detach().abs().mean()
        return w + (binary - w).detach()  # identity gradient, as DoReFa's sign(w / E) * E
    t = torch.tanh(w)
    unit = t / (2 * t.abs().max()) + 0.5
    out = 2 * dorefa_quantize_unit(unit, bits) - 1
    return out * w.detach().abs().mean() if scale else out


def dorefa_activation(x: Tensor, bits: int) -> Tensor:
    """DoReFa activations: ``q_k(clip(x, 0, 1))``; gradient 1 inside ``[0, 1]`` and 0 outside. ``bits == 32``: ``x``."""
    if _check_bits(bits, allow_fp=True) == FP_BITS:
        return x
    return dorefa_quantize_unit(torch.clamp(x, 0.0, 1.0), bits)


class DoReFaWeightQuantizer(nn.Module):
    """:func:`dorefa_weight` as a module (``bits`` may be changed between calls; 32 = floating point)."""

    def __init__(self, bits: int, scale: bool = False) -> None:
        super().__init__()
        self.bits = _check_bits(bits, allow_fp=True)
        self.scale = scale

    def extra_repr(self) -> str:
        return f"bits={self.bits}, scale={self.scale}"

    def forward(self, w: Tensor) -> Tensor:
        return dorefa_weight(w, self.bits, self.scale)


class DoReFaActivationQuantizer(nn.Module):
    """:func:`dorefa_activation` as a module (``bits`` may be changed between calls; 32 = floating point)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = _check_bits(bits, allow_fp=True)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"

    def forward(self, x: Tensor) -> Tensor:
        return dorefa_activation(x, self.bits)


# --------------------------------------------------------------------------- sign binarizers


class _Sign(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, ste: str) -> Tensor:
        ctx.ste = ste
        if ste != "plain":
            ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:
        if ctx.ste == "plain":
            return grad, None
        (x,) = ctx.saved_tensors
        if ctx.ste == "clipped":
            return grad * (x.abs() <= 1).to(grad.dtype), None
        return grad * (2 - 2 * x.abs()).clamp_min(0), None


def sign_binarize(x: Tensor, ste: str = "plain") -> Tensor:
    """``+1`` where ``x >= 0`` (``sign(0) = +1``), ``-1`` elsewhere, with the chosen backward.

    - ``"plain"``: identity gradient;
    - ``"clipped"`` (BinaryNet, hardtanh): ``1{|x| <= 1}``;
    - ``"approx_sign"`` (Bi-Real Net): ``2 - 2|x|`` on ``[-1, 1]`` (``2 + 2x`` below 0, ``2 - 2x``
      above), 0 outside.
    """
    if ste not in SIGN_STES:
        raise BadInputError(f"sign STE must be one of {', '.join(SIGN_STES)}, got {ste!r}")
    out = _Sign.apply(x, ste)
    assert isinstance(out, Tensor)
    return out


_SIGN_SCALES = (None, "tensor", "channel")


class SignBinarizer(nn.Module):
    """:func:`sign_binarize`, optionally times XNOR-Net's ``alpha = mean|x|`` (detached, as in Bi-ViT).

    ``scale=None``: ``{-1, +1}``; ``"tensor"``: one ``alpha``; ``"channel"``: one per index of
    ``axis`` (per output channel of a weight with ``axis=0``).
    """

    def __init__(self, ste: str = "plain", scale: str | None = None, axis: int = 0) -> None:
        super().__init__()
        if ste not in SIGN_STES:
            raise BadInputError(f"sign STE must be one of {', '.join(SIGN_STES)}, got {ste!r}")
        if scale not in _SIGN_SCALES:
            raise BadInputError(f"SignBinarizer scale must be None, 'tensor' or 'channel', got {scale!r}")
        self.ste = ste
        self.scale = scale
        self.axis = axis

    def extra_repr(self) -> str:
        return f"ste={self.ste}, scale={self.scale}" + (f", axis={self.axis}" if self.scale == "channel" else "")

    def forward(self, x: Tensor) -> Tensor:
        out = sign_binarize(x, self.ste)
        if self.scale is None:
            return out
        g = _Gran(self.scale, self.axis, 0)
        return out * g.reduce(g.view(x.detach().abs()), "mean")
