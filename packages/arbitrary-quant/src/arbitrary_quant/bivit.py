"""Bi-ViT (arXiv 2305.12354, AAAI 2024): a fully binarized timm ``VisionTransformer``.

What is binarized (as the released code ``YanjingLi0202/Bi-ViT`` does; see the research notes §3):

- **Every Linear** not matched by ``keep_fp`` (``qkv``, ``proj``, ``fc1``, ``fc2``) becomes a
  :class:`BinaryLinear`: weights ``alpha_o * sign(W)`` with ``alpha_o = mean_i |W_oi|`` per output
  row (detached), weight gradient through ``clamp(W, -1, 1)`` (``1{|W| <= 1}``); inputs ``sign(x)``
  with Bi-Real's ApproxSign gradient; ``sign(0) = +1``. The bias stays FP and is added (the
  official ``BiLinearBiReal`` silently drops it; a pretrained bias is kept here). Training changes
  the wrapper's own copies (``latent_weight`` / ``latent_bias``), never the wrapped Linear, so undo
  gives back the original model exactly, also after training.
- **Attention** (:class:`BinaryAttention`, wrapping timm's ``Attention`` and calling its own
  ``qkv``/``proj``): a per-head LayerNorm on q and k (``norm_q``/``norm_k`` of the code), then
  q, k, v and the post-softmax map binarized per head, so ``q k^T`` and ``A v`` are binary products.
- The MLP activation output is clipped to ``[-gelu_clip, gelu_clip]`` (:class:`ClippedActivation`).
- Full precision: patch embedding, LayerNorms, class/position tokens, the head.

Attention binarizers (``BiViTConfig.attention``):

- ``"learnable"`` (:class:`LSQBinarizer`, the code's ``ActBi``): ``b = sign(clip(x/alpha + z, -1, 1))``,
  ``x_hat = (b - z) * alpha``; ``alpha`` and ``z`` per head, learnable, both with LSQ's gradient
  scale ``1/sqrt(numel(x) * Q_P)`` (``Q_P = 1``), ``z`` rounded with a straight-through round.
  The STE passes the gradient inside the window ``|x/alpha + z| <= 1``. Inits: q, k, v as the code
  (``alpha = 2 mean|x|``, ``z = 0``: the code's ``0.1 (min + alpha)`` rounds to 0 for LayerNormed
  data). **Attention threshold (our choice):** the code's init also rounds the map's ``z`` to 0, and
  since ``A > 0`` that makes ``b = +1`` everywhere (a constant map). We start the map binarizer at
  ``z = -1``, ``alpha = attn_threshold * mean(A)`` (``mean(A) = 1/N``): a key is kept
  (``A_hat = 2 alpha``) when it gets more than ``attn_threshold`` times the uniform share and is
  dropped (``A_hat = 0``) otherwise, and the STE window ``0 <= A <= 2 alpha`` sits on the scale of A.
- ``"sign"`` (:class:`FixedSignBinarizer`, the baseline): ``mean|x| * sign(x)`` per head, the
  scale detached (XNOR-style), clipped STE. For the map the scale is ``mean(A) = 1/N``, so
  ``dA_hat/dA = 1/N`` while the learnable binarizer's ``alpha`` cancels (``dA_hat/dA = 1`` in its
  window): the gradient reaching q and k is about ``N`` times smaller -- the vanishing gradient
  that Bi-ViT's learnable scale "reactivates" (measured by :func:`attention_grad_norms`).
- ``"fp"``: no attention binarizer (the per-head LayerNorm stays, so only the binarizers differ).

Ranking-aware distillation (no official code exists; this is the notes' §3.4 proposal). For each
layer, head and query row ``i`` let ``t`` be the teacher's attention logits and ``s`` the
student's pre-binarization logits (``q_hat k_hat^T * scale``; the softmax is monotone per row, so
logits rank keys exactly as the probabilities do, and their differences are in natural units
rather than ``O(1/N)``). With ``P_i = {(j, k): j in topK(t_i), t_ij > t_ik}`` (a teacher top-K key
against every key the teacher ranks below it, ``O(N K)`` pairs per row):

    L_pair = mean over all rows and pairs of  log(1 + exp(-(s_ij - s_ik) / tau))

It is ``~0`` when the student orders every pair as the teacher does with margins ``>> tau``, and
each swapped pair adds ``~|s_ij - s_ik| / tau``, so it grows with the number of swaps. Why
pairwise: a binary map keeps exactly the keys above a threshold, so what must be right is which
keys beat which (the "ranking disorder" of the paper), not the probabilities themselves; the top-K
restriction spends the loss on the keys that survive binarization. ``"listnet"`` instead uses
ListNet's top-one distributions on the teacher's top-K keys,
``KL(softmax(t_topK / tau) || softmax(s_topK / tau))`` (0 only when the student's top-K logits
equal the teacher's up to a shift, so it is not purely rank-based). Total loss
(:func:`bivit_loss`):

    L = CE(student, y) + kd_weight * KD(student, teacher; T) + rank_weight * sum_layers L_rank

with ``KD`` = :func:`slimkit.distill.kd_kl_loss`. Teacher maps come from forward hooks on the
teacher's timm ``Attention`` modules that recompute ``q k^T`` from the block input (the teacher is
not modified and keeps its fused attention); student maps are stored by :class:`BinaryAttention`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arbitrary_quant.config import BiViTConfig
from arbitrary_quant.registry import REGISTRY
from slimkit.distill import kd_kl_loss
from slimkit.errors import BadInputError
from slimkit.opcount import FP_BITS
from slimkit.qlayers import own_params
from slimkit.quant import sign_binarize
from slimkit.report import ReportMixin
from slimkit.ste import round_ste, sign_ste
from slimkit.surgery import select_modules, set_module
from slimkit.wrappers import WrapperModule, wrapped_modules

__all__ = [
    "BiViTReport",
    "BinaryAttention",
    "BinaryLinear",
    "ClippedActivation",
    "FixedSignBinarizer",
    "LSQBinarizer",
    "attention_grad_norms",
    "binarize_vit",
    "bivit_loss",
    "layer_bits",
    "listnet_ranking_loss",
    "make_loss_fn",
    "pairwise_ranking_loss",
    "ranking_loss",
]

_EPS = 1e-8


def _grad_scale(x: Tensor, scale: float) -> Tensor:
    """``x`` in the forward (exactly), ``scale * grad`` in the backward (LSQ's gradient scaling)."""
    return x.detach() + (x - x.detach()) * scale


# --------------------------------------------------------------------------- binary Linear


class BinaryLinear(WrapperModule):
    """Bi-Real / XNOR binary Linear over the wrapped ``nn.Linear`` (never changed: training updates
    the trainable copies ``latent_weight`` / ``latent_bias`` of its weight and bias).

    ``y = sign(x) @ (alpha * sign(W))^T + b`` with ``W = latent_weight`` and ``alpha = mean|W|`` per
    output row (detached); weight gradient ``1{|W| <= 1}`` (through ``clamp(W, -1, 1)``), input
    gradient ApproxSign.
    """

    latent_bias: nn.Parameter | None

    def __init__(self, base_layer: nn.Linear) -> None:
        if not isinstance(base_layer, nn.Linear):
            raise BadInputError(f"BinaryLinear wraps an nn.Linear, got {type(base_layer).__name__}")
        super().__init__(base_layer)
        self.latent_weight, self.latent_bias = own_params(base_layer)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # arbitrary-quant 0.1.0 trained the wrapped Linear itself: its checkpoints hold the trained
        # weights as base_layer.weight / .bias and no copies. Read those as the copies.
        for name in ("weight", "bias"):
            old = f"{prefix}base_layer.{name}"
            if f"{prefix}latent_{name}" not in state_dict and old in state_dict:
                state_dict[f"{prefix}latent_{name}"] = state_dict[old]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def linear(self) -> nn.Linear:
        """The wrapped ``nn.Linear`` (typed)."""
        base = self.base_layer
        assert isinstance(base, nn.Linear)
        return base

    def binary_weight(self) -> Tensor:
        """``alpha * sign(W)`` in the forward; the clipped-identity gradient to ``W`` in the backward."""
        w = self.latent_weight
        alpha = w.detach().abs().mean(dim=1, keepdim=True)
        wb = alpha * torch.where(w.detach() >= 0, 1.0, -1.0).to(w.dtype)
        clipped = torch.clamp(w, -1.0, 1.0)
        return wb + (clipped - clipped.detach())  # forward exactly wb

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(sign_binarize(x, "approx_sign"), self.binary_weight(), self.latent_bias)

    def to_plain(self) -> nn.Module:
        """A plain Linear holding ``alpha * sign(W)`` (the input sign is not representable in it)."""
        base = self.linear
        plain = nn.Linear(base.in_features, base.out_features, bias=self.latent_bias is not None,
                          device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            plain.weight.copy_(self.binary_weight())
            if self.latent_bias is not None:
                plain.bias.copy_(self.latent_bias)
        return plain


class ClippedActivation(WrapperModule):
    """The wrapped activation's output clipped to ``[-limit, limit]`` (Bi-ViT clips GELU at 10)."""

    def __init__(self, base_layer: nn.Module, limit: float) -> None:
        super().__init__(base_layer)
        self.limit = float(limit)

    def extra_repr(self) -> str:
        return f"limit={self.limit}"

    def forward(self, x: Tensor) -> Tensor:
        return torch.clamp(self.base_layer(x), -self.limit, self.limit)


# --------------------------------------------------------------------------- attention binarizers


def _per_head(p: Tensor, x: Tensor) -> Tensor:
    """A ``[heads]`` parameter shaped to broadcast over ``x`` = ``(B, heads, ...)``."""
    return p.view(1, -1, *([1] * (x.dim() - 2)))


class LSQBinarizer(nn.Module):
    """Bi-ViT's learnable binarizer (``ActBi``): ``(sign(clip(x/alpha + z, -1, 1)) - z) * alpha`` per head.

    ``kind="symmetric"`` (q, k, v): init ``alpha = 2 mean|x|`` (all heads), ``z = 0``.
    ``kind="attention"`` (softmax map): init ``z = -1``, ``alpha = threshold * mean(x)``, i.e. keep
    a key when ``A >= alpha``. Init runs on the first forward; ``|alpha|`` is used (floored at 1e-8)
    so a step pushed through zero cannot invert the grid.
    """

    initialized: Tensor

    def __init__(self, num_heads: int, kind: str = "symmetric", threshold: float = 1.0) -> None:
        super().__init__()
        if kind not in ("symmetric", "attention"):
            raise BadInputError(f"LSQBinarizer kind must be symmetric or attention, got {kind!r}")
        self.kind = kind
        self.threshold = float(threshold)
        self.alpha = nn.Parameter(torch.ones(num_heads))
        self.zero_point = nn.Parameter(torch.zeros(num_heads))
        self.register_buffer("initialized", torch.tensor(False))

    def extra_repr(self) -> str:
        return f"heads={self.alpha.numel()}, kind={self.kind}" + (
            f", threshold={self.threshold}" if self.kind == "attention" else "")

    @torch.no_grad()
    def init_from(self, x: Tensor) -> None:
        """Data init of ``alpha`` and ``z`` from a first batch (see the class docstring)."""
        x = x.detach().float()
        if self.kind == "attention":
            alpha, z = self.threshold * x.mean(), -1.0
        else:
            alpha, z = 2 * x.abs().mean(), 0.0
        self.alpha.fill_(max(float(alpha), _EPS))
        self.zero_point.fill_(z)
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        if not bool(self.initialized):
            self.init_from(x)
        g = 1.0 / math.sqrt(x.numel())  # Q_P = 1
        alpha = _per_head(_grad_scale(self.alpha.abs().clamp_min(_EPS), g), x)
        z = _per_head(_grad_scale(round_ste(self.zero_point), g), x)
        b = sign_ste(torch.clamp(x / alpha + z, -1.0, 1.0))
        return (b - z) * alpha


class FixedSignBinarizer(nn.Module):
    """The baseline: ``mean|x| * sign(x)`` per head, scale detached, clipped STE (``1{|x| <= 1}``).

    On a softmax map ``mean|A| = 1/N``, so the gradient passed to ``A`` is scaled by ``1/N``.
    """

    def forward(self, x: Tensor) -> Tensor:
        dims = [d for d in range(x.dim()) if d != 1]
        scale = x.detach().abs().mean(dim=dims, keepdim=True)
        return sign_binarize(x, "clipped") * scale


# --------------------------------------------------------------------------- attention


def _make_binarizer(mode: str, num_heads: int, kind: str, threshold: float) -> nn.Module:
    if mode == "learnable":
        return LSQBinarizer(num_heads, kind, threshold)
    if mode == "sign":
        return FixedSignBinarizer()
    return nn.Identity()


#: timm's plain attention and MLP classes, recognised by where they are defined: importing timm here
#: would import torch._dynamo and Triton with the package (``import arbitrary_quant`` must stay light).
_TIMM_ATTENTION = ("timm.layers.attention", "Attention")
_TIMM_MLP = ("timm.layers.mlp", "Mlp")


def _is_timm(module: nn.Module, where: tuple[str, str]) -> bool:
    """Whether ``module`` is exactly timm's class ``where`` (a subclass is not: its forward may differ)."""
    return (type(module).__module__, type(module).__qualname__) == where


def _timm_modules(model: nn.Module, where: tuple[str, str], exclude: list[str]) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in select_modules(model, (nn.Module,), exclude=exclude) if _is_timm(m, where)]


class BinaryAttention(WrapperModule):
    """Bi-ViT attention around a timm ``Attention`` (its ``qkv``/``proj``, usually :class:`BinaryLinear`).

    ``q, k = LN_h(q), LN_h(k)``; ``q, k, v`` binarized; ``logits = q_hat k_hat^T * scale``;
    ``A = softmax(logits)``, dropout, binarized; ``out = proj(A_hat v_hat)``. timm's ``q_norm``,
    ``k_norm``, output ``norm`` and ``gate`` are honoured. Set ``store_logits`` to keep the last
    pre-softmax logits in ``last_logits`` (ranking distillation) and ``keep_qk`` to keep the
    q and k tensors that leave ``qkv`` in ``last_q``/``last_k`` (gradient probes).
    """

    def __init__(self, base_layer: nn.Module, mode: str = "learnable", threshold: float = 1.0) -> None:
        if not _is_timm(base_layer, _TIMM_ATTENTION):
            raise BadInputError(f"BinaryAttention wraps timm's Attention, got {type(base_layer).__name__}")
        super().__init__(base_layer)
        attn: Any = base_layer  # timm's Attention (checked above); typed loosely to read its ints
        heads, head_dim = int(attn.num_heads), int(attn.head_dim)
        self.mode = mode
        self.norm_q = nn.LayerNorm(head_dim)
        self.norm_k = nn.LayerNorm(head_dim)
        self.q_bin = _make_binarizer(mode, heads, "symmetric", threshold)
        self.k_bin = _make_binarizer(mode, heads, "symmetric", threshold)
        self.v_bin = _make_binarizer(mode, heads, "symmetric", threshold)
        self.attn_bin = _make_binarizer(mode, heads, "attention", threshold)
        self.store_logits = False
        self.keep_qk = False
        self.last_logits: Tensor | None = None
        self.last_q: Tensor | None = None
        self.last_k: Tensor | None = None

    def extra_repr(self) -> str:
        return f"mode={self.mode}"

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if attn_mask is not None or is_causal:
            raise BadInputError("BinaryAttention does not support attn_mask / is_causal")
        base: Any = self.base_layer
        b, n, _ = x.shape
        gate = base.gate(x).sigmoid() if getattr(base, "gate", None) is not None else None
        qkv = base.qkv(x).reshape(b, n, 3, base.num_heads, base.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.keep_qk:
            self.last_q, self.last_k = q, k
        q = self.q_bin(self.norm_q(base.q_norm(q)))
        k = self.k_bin(self.norm_k(base.k_norm(k)))
        v = self.v_bin(v)
        logits = (q @ k.transpose(-2, -1)) * base.scale
        if self.store_logits:
            self.last_logits = logits
        attn = self.attn_bin(base.attn_drop(logits.softmax(dim=-1)))
        out = (attn @ v).transpose(1, 2).reshape(b, n, base.attn_dim)
        out = base.norm(out)
        if gate is not None:
            out = out * gate
        return base.proj_drop(base.proj(out))  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- apply / undo


@dataclass
class BiViTReport(ReportMixin):
    """What :func:`binarize_vit` changed (module names)."""

    attention: str
    binary_linears: list[str] = field(default_factory=list)
    binary_attentions: list[str] = field(default_factory=list)
    clipped_activations: list[str] = field(default_factory=list)
    full_precision_linears: list[str] = field(default_factory=list)
    added_parameters: int = 0


def _timm_attentions(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every timm ``Attention`` module of ``model`` with its name, in registration order."""
    return [(name, m) for name, m in model.named_modules() if _is_timm(m, _TIMM_ATTENTION)]


@REGISTRY.register(BiViTConfig)
def apply_bivit(model: nn.Module, config: BiViTConfig) -> BiViTReport:
    """Binarize ``model`` in place (see the module docstring); undo with ``slimkit.wrappers.unwrap_modules``."""
    if not isinstance(config, BiViTConfig):
        raise BadInputError(f"apply_bivit needs a BiViTConfig, got {type(config).__name__}")
    if wrapped_modules(model):
        raise BadInputError("the model already holds wrapped layers; unwrap it (slimkit.wrappers.unwrap_modules) first")
    attentions = _timm_modules(model, _TIMM_ATTENTION, config.keep_fp)
    if not _timm_attentions(model):
        raise BadInputError(f"{type(model).__name__} has no timm Attention module; Bi-ViT needs a timm VisionTransformer")
    for name, module in model.named_modules():
        if type(module).__qualname__ == "Attention" and not _is_timm(module, _TIMM_ATTENTION):
            raise BadInputError(f"{name} is {type(module).__module__}.Attention; only timm's plain Attention is supported")
    linears = select_modules(model, (nn.Linear,), exclude=config.keep_fp)
    chosen = {name for name, _ in linears}
    kept = [name for name, _ in select_modules(model, (nn.Linear,)) if name not in chosen]
    mlps = _timm_modules(model, _TIMM_MLP, config.keep_fp)
    before = sum(p.numel() for p in model.parameters())

    for name, linear in linears:
        assert isinstance(linear, nn.Linear)
        set_module(model, name, BinaryLinear(linear))
    for name, attn in attentions:
        set_module(model, name, BinaryAttention(attn, config.attention, config.attn_threshold))
    clipped = []
    for name, mlp in mlps:
        act: Any = mlp.act
        set_module(model, f"{name}.act", ClippedActivation(act, config.gelu_clip))
        clipped.append(f"{name}.act")
    return BiViTReport(
        attention=config.attention,
        binary_linears=[n for n, _ in linears],
        binary_attentions=[n for n, _ in attentions],
        clipped_activations=clipped,
        full_precision_linears=kept,
        added_parameters=sum(p.numel() for p in model.parameters()) - before,
    )


def binarize_vit(model: nn.Module, config: BiViTConfig | None = None) -> nn.Module:
    """Bi-ViT-binarize a timm ViT in place and return it (the report is dropped; see :func:`apply_bivit`)."""
    apply_bivit(model, BiViTConfig() if config is None else config)
    return model


# --------------------------------------------------------------------------- ranking losses


def _check_maps(student: Tensor, teacher: Tensor, top_k: int, temperature: float) -> int:
    if student.shape != teacher.shape:
        raise BadInputError(f"student attention {tuple(student.shape)} and teacher attention {tuple(teacher.shape)} differ")
    if student.dim() < 1 or student.shape[-1] < 1:
        raise BadInputError("attention maps need at least one key")
    if top_k < 1:
        raise BadInputError(f"top_k must be >= 1, got {top_k}")
    if not temperature > 0:
        raise BadInputError(f"ranking temperature must be > 0, got {temperature}")
    return min(top_k, student.shape[-1])


def pairwise_ranking_loss(student: Tensor, teacher: Tensor, top_k: int = 8, temperature: float = 1.0) -> Tensor:
    """Pairwise logistic ranking loss over the last dim (keys): see the module docstring.

    Pairs are (teacher top-K key ``j``, any key ``k`` the teacher ranks strictly below ``j``);
    the loss is the mean of ``softplus(-(s_j - s_k) / tau)`` over all such pairs of all rows
    (0 when there are none). The teacher is detached. Memory: one ``(..., K, N)`` tensor, e.g.
    ``B * H * N * K * N`` floats per layer (about 60M for DeiT-Tiny, B=64, K=8).
    """
    k = _check_maps(student, teacher, top_k, temperature)
    t = teacher.detach().float()
    s = student.float()
    t_top, idx = t.topk(k, dim=-1)  # (..., K)
    s_top = s.gather(-1, idx)
    valid = t_top.unsqueeze(-1) > t.unsqueeze(-2)  # (..., K, N)
    margin = (s_top.unsqueeze(-1) - s.unsqueeze(-2)) / temperature
    losses = F.softplus(-margin) * valid
    count = valid.sum()
    return losses.sum() / count.clamp_min(1)


def listnet_ranking_loss(student: Tensor, teacher: Tensor, top_k: int = 8, temperature: float = 1.0) -> Tensor:
    """ListNet top-one loss on the teacher's top-K keys: ``KL(softmax(t/tau) || softmax(s/tau))``, row mean."""
    k = _check_maps(student, teacher, top_k, temperature)
    t_top, idx = teacher.detach().float().topk(k, dim=-1)
    s_top = student.float().gather(-1, idx)
    log_p_t = F.log_softmax(t_top / temperature, dim=-1)
    log_p_s = F.log_softmax(s_top / temperature, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1).mean()


def ranking_loss(student: Tensor, teacher: Tensor, kind: str = "pairwise", top_k: int = 8,
                 temperature: float = 1.0) -> Tensor:
    """:func:`pairwise_ranking_loss` or :func:`listnet_ranking_loss` by name."""
    if kind == "pairwise":
        return pairwise_ranking_loss(student, teacher, top_k, temperature)
    if kind == "listnet":
        return listnet_ranking_loss(student, teacher, top_k, temperature)
    raise BadInputError(f"ranking loss must be pairwise or listnet, got {kind!r}")


# --------------------------------------------------------------------------- distillation


def _binary_attentions(model: nn.Module) -> list[tuple[str, BinaryAttention]]:
    out = [(n, m) for n, m in wrapped_modules(model, BinaryAttention) if isinstance(m, BinaryAttention)]
    if not out:
        raise BadInputError(f"{type(model).__name__} has no BinaryAttention; run binarize_vit on it first")
    return out


def _teacher_logit_hook(store: list[Tensor]) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
    """A forward hook that recomputes a timm ``Attention``'s pre-softmax logits from its input."""

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        attn: Any = module
        x = args[0]
        with torch.no_grad():
            b, n, _ = x.shape
            qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            q, k, _ = qkv.unbind(0)
            q, k = attn.q_norm(q), attn.k_norm(k)
            store.append((q * attn.scale) @ k.transpose(-2, -1))

    return hook


def _as_logits(out: Any, who: str) -> Tensor:
    if not isinstance(out, Tensor):
        raise BadInputError(f"the {who} returned {type(out).__name__}, expected a logits tensor")
    return out


def bivit_loss(student: nn.Module, teacher: nn.Module | None, x: Tensor, y: Tensor,
               config: BiViTConfig) -> tuple[Tensor, dict[str, float]]:
    """``L = CE + kd_weight * KD + rank_weight * sum_layers L_rank`` for one batch; returns ``(L, parts)``.

    The teacher (an FP timm ViT of the same depth, heads and tokens; :class:`slimkit.distill.FrozenTeacher`
    recommended) runs under ``no_grad`` in its current mode and is not modified. ``teacher=None``
    is allowed only when both weights are 0 or ``ranking_loss`` is None with ``kd_weight == 0``.
    """
    need_rank = config.ranking_loss is not None and config.rank_weight > 0
    need_teacher = need_rank or config.kd_weight > 0
    s_attns = _binary_attentions(student) if need_rank else []
    teacher_maps: list[Tensor] = []
    t_out: Tensor | None = None
    if need_teacher:
        if teacher is None:
            raise BadInputError("bivit_loss needs a teacher when kd_weight > 0 or a ranking loss is on")
        t_attns = _timm_attentions(teacher) if need_rank else []
        if need_rank and len(t_attns) != len(s_attns):
            raise BadInputError(f"the teacher has {len(t_attns)} attention layers, the student {len(s_attns)}")
        handles = [m.register_forward_hook(_teacher_logit_hook(teacher_maps)) for _, m in t_attns]
        try:
            with torch.no_grad():
                t_out = _as_logits(teacher(x), "teacher")
        finally:
            for h in handles:
                h.remove()
    for _, m in s_attns:
        m.store_logits = True
    try:
        s_out = _as_logits(student(x), "student")
        student_maps = [m.last_logits for _, m in s_attns]
    finally:
        for _, m in s_attns:
            m.store_logits, m.last_logits = False, None
    ce = F.cross_entropy(s_out, y)
    total = ce
    parts = {"ce": float(ce.detach())}
    if config.kd_weight > 0 and t_out is not None:
        kd = kd_kl_loss(s_out, t_out, temperature=config.kd_temperature)
        total = total + config.kd_weight * kd
        parts["kd"] = float(kd.detach())
    if need_rank:
        assert config.ranking_loss is not None
        rank = s_out.new_zeros(())
        for s_map, t_map in zip(student_maps, teacher_maps, strict=True):
            assert s_map is not None
            rank = rank + ranking_loss(s_map, t_map, config.ranking_loss, config.top_k, config.rank_temperature)
        total = total + config.rank_weight * rank
        parts["rank"] = float(rank.detach())
    parts["loss"] = float(total.detach())
    return total, parts


def make_loss_fn(teacher: nn.Module | None, config: BiViTConfig) -> Callable[[nn.Module, Any], tuple[Tensor, dict[str, float]]]:
    """A ``slimkit.train.train`` ``loss_fn(model, (x, y))`` computing :func:`bivit_loss`."""

    def loss_fn(model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        x, y = batch[0], batch[1]
        return bivit_loss(model, teacher, x, y, config)

    return loss_fn


# --------------------------------------------------------------------------- gradient probe


def attention_grad_norms(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, dict[str, float]]:
    """Mean L2 norm (per head and token) of ``dCE/dq`` and ``dCE/dk`` for each :class:`BinaryAttention`.

    q and k are taken as they leave ``qkv`` (before the LayerNorm and the binarizers), so the
    numbers are what trains the ``qkv`` weights through attention. Uses ``torch.autograd.grad``:
    no parameter's ``.grad`` is touched. The model runs in its current mode (binarizers initialize
    on their first batch as usual). Returns ``{block attention name: {"q": ..., "k": ...}}``.
    """
    attns = _binary_attentions(model)
    for _, m in attns:
        m.keep_qk = True
    try:
        with torch.enable_grad():
            loss = F.cross_entropy(_as_logits(model(x), "model"), y)
            tensors: list[Tensor] = []
            for _, m in attns:
                assert m.last_q is not None and m.last_k is not None
                tensors += [m.last_q, m.last_k]
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    finally:
        for _, m in attns:
            m.keep_qk, m.last_q, m.last_k = False, None, None
    result: dict[str, dict[str, float]] = {}
    for i, (name, _) in enumerate(attns):
        gq, gk = grads[2 * i], grads[2 * i + 1]
        result[name] = {
            "q": 0.0 if gq is None else float(gq.norm(dim=-1).mean()),
            "k": 0.0 if gk is None else float(gk.norm(dim=-1).mean()),
        }
    return result


def layer_bits(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``(w_bits, a_bits)`` of every module of a binarized ViT that runs products: 1/1 for
    :class:`BinaryLinear` and binarized :class:`BinaryAttention`, 32/32 for the plain layers.

    Needed because the Bi-ViT wrappers do not declare ``w_bits``/``a_bits`` themselves; the plain
    layers are listed too so an FP layer inside a binary attention is not counted at its parent's bits.
    """
    bits: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, BinaryLinear):
            bits[name] = (1, 1)
        elif isinstance(module, BinaryAttention):
            bits[name] = (1, 1) if module.mode != "fp" else (FP_BITS, FP_BITS)
        elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            bits[name] = (FP_BITS, FP_BITS)
    return bits
