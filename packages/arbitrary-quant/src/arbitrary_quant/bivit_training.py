"""Measuring Bi-ViT: an FP ViT teacher, binarized students trained from it, the ablation table,
the gradient figure and the OPs count.

Why: :mod:`arbitrary_quant.bivit` defines the method; a claim about it needs the same small ViT
trained full precision, then binarized three ways from those same weights (as the official code
starts every Bi-ViT from a trained DeiT), over several seeds, with the held-out top-1 and its
seed-to-seed spread side by side:

- **FP teacher**: the ViT itself;
- **sign**: plain sign binarization (``attention="sign"``, no distillation);
- **+ learnable scale**: Bi-ViT's learnable attention binarizer (``attention="learnable"``, no distillation);
- **+ ranking-aware distillation**: learnable scale + logit KD + the pairwise attention ranking loss.

Every student gets the same steps, batch, lr and schedule; only the :class:`BiViTConfig` differs.

Default table settings (:class:`BiViTTableSettings`) and why: a depth-4, width-64, 2-head ViT with
4x4 patches on the digits upsampled to 32x32 grey (65 tokens, enough for the ``1/N`` attention
gradient to matter), batch 32, 600 teacher steps and 300 steps per student, so the whole default
table fits the 10-15 CPU-minute budget of one core. Measured with one torch thread on a shared
2-core AMD EPYC: per seed about 30 s for the teacher, 27 s (sign), 34 s (learnable) and 93 s
(distilled: it also runs the teacher and the ``B*H*N*K*N`` pairwise ranking term); 557 s for the
three seeds. Batch 64, 4-8 heads or top-8 ranking over more tokens cost 2-4x more per distilled
step (the ranking term's ``softplus`` over ``(B, H, N, K, N)`` dominates).
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.data import Dataset

from arbitrary_quant.bivit import attention_grad_norms, binarize_vit, layer_bits, make_loss_fn
from arbitrary_quant.config import BiViTConfig
from arbitrary_quant.flags import settings_flags
from slimkit.bench import env_header, mean_std
from slimkit.data import DATASETS, num_classes, resolve_dataset
from slimkit.distill import FrozenTeacher
from slimkit.errors import BadInputError
from slimkit.evaluate import top1
from slimkit.io import load_into, save_table
from slimkit.opcount import count_ops
from slimkit.plot import save_png
from slimkit.progress import progress
from slimkit.train import TrainConfig, TrainResult, train
from slimkit.wrappers import wrapped_modules

__all__ = [
    "PAPER_DEIT_TINY_RATIO",
    "VARIANTS",
    "BiViTTableSettings",
    "bivit_table",
    "gradient_figure",
    "small_vit",
    "train_binary",
    "train_teacher",
    "vit_ops",
]

#: Bi-ViT's reported theoretical speed-up of binary DeiT-Tiny over the FP model (abstract, arXiv 2305.12354).
PAPER_DEIT_TINY_RATIO = 61.5
#: The table's rows, in order.
VARIANTS = ("fp", "sign", "learnable", "learnable_distill")
_LABELS = {
    "fp": "FP teacher",
    "sign": "sign binarization (baseline)",
    "learnable": "+ learnable attention scale",
    "learnable_distill": "+ ranking-aware distillation",
}


# --------------------------------------------------------------------------- models


def _timm_model(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)``; bad arguments are one BadInputError line.

    The one import inside a function in this module, on purpose: importing timm imports
    ``torch._dynamo`` and Triton, and ``import arbitrary_quant`` must not (cli.py imports this
    module); slimkit.models imports timm lazily for the same reason.
    """
    import timm

    try:
        return timm.create_model(name, pretrained=False, **kwargs)  # type: ignore[no-any-return]
    except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
        raise BadInputError(f"cannot build {name!r} with {kwargs}: {' '.join(str(exc).split())}") from None


def small_vit(
    num_classes: int,
    in_chans: int,
    img_size: int = 32,
    patch_size: int = 4,
    depth: int = 4,
    embed_dim: int = 64,
    num_heads: int = 2,
    mlp_ratio: float = 2.0,
) -> nn.Module:
    """A small timm ``VisionTransformer`` (class token, timm's plain ``Attention``) for the offline sets.

    The defaults give ``(32/4)^2 + 1 = 65`` tokens: small enough to train on a CPU core in
    minutes, long enough that the sign baseline's ``1/N`` attention gradient shows.
    """
    for name, value in (("num_classes", num_classes), ("in_chans", in_chans), ("img_size", img_size),
                        ("patch_size", patch_size), ("depth", depth), ("embed_dim", embed_dim),
                        ("num_heads", num_heads)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInputError(f"{name} must be a positive integer, got {value!r}")
    if img_size % patch_size:
        raise BadInputError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
    if embed_dim % num_heads:
        raise BadInputError(f"embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
    if not mlp_ratio > 0:
        raise BadInputError(f"mlp_ratio must be > 0, got {mlp_ratio}")
    return _timm_model("vit_tiny_patch16_224", img_size=img_size, patch_size=patch_size, depth=depth,
                       embed_dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio,
                       num_classes=num_classes, in_chans=in_chans)  # fmt: skip


def _in_chans(model: nn.Module) -> int:
    """Input channels of a timm-style ViT, read from its patch embedding's conv."""
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    if not isinstance(proj, nn.Conv2d):
        raise BadInputError(f"{type(model).__name__} is not a timm-style ViT (no patch_embed.proj conv)")
    return int(proj.in_channels)


# --------------------------------------------------------------------------- training


def _require_fp(model: nn.Module, who: str) -> None:
    if wrapped_modules(model):
        raise BadInputError(f"the {who} already holds wrapped layers; pass a full-precision timm ViT")


def train_teacher(model: nn.Module, train_set: Dataset[Any], train_config: TrainConfig) -> TrainResult:
    """Train the FP ViT in place with cross entropy (:func:`slimkit.train.train`): the table's teacher
    and the weights every student starts from."""
    _require_fp(model, "teacher")
    return train(model, train_set, train_config)


class _TeacherOnDevice:
    """A train callback that moves the teacher to the device the student was prepared on (a GPU run)."""

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher

    def on_train_start(self, ctx: Any) -> None:
        self.teacher.to(ctx.accelerator.device)


def train_binary(
    student: nn.Module,
    teacher: nn.Module,
    train_set: Dataset[Any],
    config: BiViTConfig,
    train_config: TrainConfig,
    callbacks: Sequence[Any] = (),
    init_inputs: Tensor | None = None,
) -> TrainResult:
    """Copy the teacher's weights into ``student``, Bi-ViT-binarize it with ``config`` and train it
    with :func:`arbitrary_quant.bivit.make_loss_fn` (``CE + KD + ranking`` as ``config`` says).

    ``student`` is an FP timm ViT of the teacher's architecture (its own weights are overwritten:
    Bi-ViT starts from the trained FP model, as the official code starts from DeiT); it is
    binarized and trained in place. The teacher is frozen while training (eval mode, no gradient,
    wrapped in :class:`slimkit.distill.FrozenTeacher`) and left as it was found, except that a GPU
    run moves it to the GPU. ``callbacks`` go to :func:`slimkit.train.train`.

    ``init_inputs``: one batch every process shares; the binarizers' scales are initialised from
    it before training (else each starts from its process's own first batch, which differ under
    ``accelerate launch``).
    """
    if not isinstance(config, BiViTConfig):
        raise BadInputError(f"train_binary needs a BiViTConfig, got {type(config).__name__}")
    _require_fp(student, "student")
    _require_fp(teacher, "teacher")
    load_into(student, teacher.state_dict())  # strict: a different architecture is a clear BadInputError
    binarize_vit(student, config)
    if init_inputs is not None:
        mode = student.training
        with torch.no_grad():
            student.eval()(init_inputs)
        student.train(mode)
    was_training = teacher.training
    grads = [p.requires_grad for p in teacher.parameters()]
    try:
        frozen = FrozenTeacher(teacher)
        return train(student, train_set, train_config, loss_fn=make_loss_fn(frozen, config),
                     callbacks=[_TeacherOnDevice(teacher), *callbacks])  # fmt: skip
    finally:
        teacher.train(was_training)
        for p, flag in zip(teacher.parameters(), grads, strict=True):
            p.requires_grad_(flag)


# --------------------------------------------------------------------------- the table


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInputError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class BiViTTableSettings:
    """Everything that decides a cell of the Bi-ViT table (the module docstring says why these defaults).

    ``data``: ``digits`` (32x32 grey, its ``val`` split held out: it has no test split), ``crops``
    or ``cluttered-digits`` (RGB, ``eval_split`` held out). ``lr`` is the students' lr; the teacher
    uses ``teacher_lr`` and weight decay 0.05, the students none (their scales and offsets should
    not shrink). Both use a cosine schedule with ``steps // 20`` warm-up steps. ``kd_weight``,
    ``rank_weight`` and ``top_k`` shape the distilled row (``BiViTConfig``'s defaults).
    """

    data: str = "digits"
    seeds: tuple[int, ...] = (0, 1, 2)
    image_size: int = 32
    patch_size: int = 4
    depth: int = 4
    embed_dim: int = 64
    num_heads: int = 2
    batch_size: int = 32
    teacher_steps: int = 600
    student_steps: int = 300
    teacher_lr: float = 1e-3
    lr: float = 1e-3
    kd_weight: float = 1.0
    rank_weight: float = 0.1
    top_k: int = 8
    eval_split: str = "test"

    def __post_init__(self) -> None:
        if self.data not in DATASETS:
            raise BadInputError(f"data must be one of {', '.join(DATASETS)}; got {self.data!r}")
        if isinstance(self.seeds, (int, str)) or not self.seeds:
            raise BadInputError(f"seeds must be a non-empty list of integers >= 0, got {self.seeds!r}")
        self.seeds = tuple(self.seeds)
        for seed in self.seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise BadInputError(f"every seed must be an integer >= 0, got {seed!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise BadInputError(f"seeds repeat: {list(self.seeds)}")
        for name in ("image_size", "patch_size", "depth", "embed_dim", "num_heads", "batch_size",
                     "teacher_steps", "student_steps"):  # fmt: skip
            _positive_int(name, getattr(self, name))
        if self.image_size % self.patch_size or self.embed_dim % self.num_heads:
            raise BadInputError("image_size must be a multiple of patch_size and embed_dim of num_heads")
        for name in ("teacher_lr", "lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise BadInputError(f"{name} must be a number > 0, got {value!r}")
        if self.eval_split not in ("val", "test"):
            raise BadInputError(f"eval_split must be val or test, got {self.eval_split!r}")
        self.distill_config()  # validates kd_weight, rank_weight and top_k

    def to_dict(self) -> dict[str, Any]:
        """JSON-native (the seeds as a list)."""
        out = asdict(self)
        out["seeds"] = list(self.seeds)
        return out

    def held_out_split(self) -> str:
        """``val`` for digits (no test split), else ``eval_split``."""
        return "val" if self.data == "digits" else self.eval_split

    def channels(self) -> int:
        return 1 if self.data == "digits" else 3

    def distill_config(self, seed: int = 0) -> BiViTConfig:
        """The last row's config: learnable scale + logit KD + pairwise ranking loss."""
        return BiViTConfig(attention="learnable", ranking_loss="pairwise", kd_weight=self.kd_weight,
                           rank_weight=self.rank_weight, top_k=self.top_k, seed=seed)  # fmt: skip

    def variant_config(self, variant: str, seed: int) -> BiViTConfig:
        """The :class:`BiViTConfig` of a student row."""
        if variant == "sign":
            return BiViTConfig(attention="sign", ranking_loss=None, kd_weight=0.0, seed=seed)
        if variant == "learnable":
            return BiViTConfig(attention="learnable", ranking_loss=None, kd_weight=0.0, seed=seed)
        if variant == "learnable_distill":
            return self.distill_config(seed)
        raise BadInputError(f"unknown student variant {variant!r}; choose from {', '.join(VARIANTS[1:])}")

    def command(self) -> str:
        """The CLI line that reproduces the table."""
        return f"arbitrary-quant bivit-table {settings_flags(self)}"

    def train_config(self, output_dir: Path, seed: int, teacher: bool) -> TrainConfig:
        steps = self.teacher_steps if teacher else self.student_steps
        return TrainConfig(
            output_dir=str(output_dir), max_steps=steps, batch_size=self.batch_size,
            lr=self.teacher_lr if teacher else self.lr, weight_decay=0.05 if teacher else 0.0,
            warmup_steps=max(1, steps // 20), seed=seed, cpu=True, progress=False, log_every=steps,
        )  # fmt: skip


def _table_vit(s: BiViTTableSettings, num_classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return small_vit(num_classes, s.channels(), img_size=s.image_size, patch_size=s.patch_size, depth=s.depth,
                     embed_dim=s.embed_dim, num_heads=s.num_heads)  # fmt: skip


def bivit_table(
    settings: BiViTTableSettings | None = None, output: Path | None = None, show_progress: bool = True
) -> dict[str, Any]:
    """Per seed: train one FP teacher, then three students from its weights (sign, + learnable scale,
    + ranking-aware distillation); held-out top-1 mean ± std over the seeds.

    Returns ``rows`` (one per variant: per-seed top-1, mean, std), ``runs`` (every trained model with
    its final loss and train seconds), ``markdown``, the reproducing ``command``, the environment
    header and ``wall_s``. With ``output``, writes ``results.json`` and ``table.md`` there atomically.
    """
    s = settings or BiViTTableSettings()
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    bar: Any = progress(total=len(s.seeds) * len(VARIANTS), desc="bivit table", disable=not show_progress)
    with tempfile.TemporaryDirectory(prefix="arbitrary-quant-bivit-") as tmp:
        for seed in s.seeds:
            train_set = resolve_dataset(s.data, "train", s.image_size, s.channels(), seed)
            held = resolve_dataset(s.data, s.held_out_split(), s.image_size, s.channels(), seed)
            classes = num_classes(train_set)
            teacher = _table_vit(s, classes, seed)
            t0 = time.perf_counter()
            result = train_teacher(teacher, train_set, s.train_config(Path(tmp) / f"teacher_{seed}", seed, True))
            runs.append({"seed": seed, "variant": "fp", "top1": top1(teacher.eval(), held),
                         "final_loss": result.final_loss, "train_s": time.perf_counter() - t0})  # fmt: skip
            bar.update(1)
            for variant in VARIANTS[1:]:
                student = _table_vit(s, classes, seed)  # the architecture; the weights come from the teacher
                t0 = time.perf_counter()
                result = train_binary(student, teacher, train_set, s.variant_config(variant, seed),
                                      s.train_config(Path(tmp) / f"{variant}_{seed}", seed, False))  # fmt: skip
                runs.append({"seed": seed, "variant": variant, "top1": top1(student.eval(), held),
                             "final_loss": result.final_loss, "train_s": time.perf_counter() - t0})  # fmt: skip
                bar.update(1)
    bar.close()
    rows = []
    for variant in VARIANTS:
        cells = [r for r in runs if r["variant"] == variant]
        mean, std = mean_std([c["top1"] for c in cells])
        cfg = s.variant_config(variant, 0) if variant != "fp" else None
        rows.append({
            "variant": variant, "label": _LABELS[variant],
            "attention": cfg.attention if cfg is not None else "fp",
            "distillation": _distillation(cfg),
            "top1": [c["top1"] for c in cells], "top1_mean": mean, "top1_std": std,
            "train_s_mean": mean_std([c["train_s"] for c in cells])[0],
        })  # fmt: skip
    result_dict: dict[str, Any] = {
        "command": s.command(),
        "data": s.data,
        "eval_split": s.held_out_split(),
        "seeds": list(s.seeds),
        "settings": s.to_dict(),
        "env": env_header(device=torch.device("cpu")),
        "rows": rows,
        "runs": runs,
        "wall_s": time.perf_counter() - start,
    }
    result_dict["markdown"] = _markdown(rows, s)
    if output is not None:
        save_table(output, result_dict)
    return result_dict


def _distillation(cfg: BiViTConfig | None) -> str:
    if cfg is None or (cfg.kd_weight == 0 and cfg.ranking_loss is None):
        return "none"
    parts = []
    if cfg.kd_weight > 0:
        parts.append(f"KD x{cfg.kd_weight:g}")
    if cfg.ranking_loss is not None and cfg.rank_weight > 0:
        parts.append(f"{cfg.ranking_loss} ranking x{cfg.rank_weight:g} (top-{cfg.top_k})")
    return " + ".join(parts) or "none"


def _markdown(rows: list[dict[str, Any]], s: BiViTTableSettings) -> str:
    n = len(s.seeds)
    lines = [f"| variant | attention | distillation | top-1 % (mean ± std, {n} seed{'s' * (n != 1)}) |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    for row in rows:
        lines.append(f"| {row['label']} | {row['attention']} | {row['distillation']} | "
                     f"{100 * row['top1_mean']:.2f} ± {100 * row['top1_std']:.2f} |")  # fmt: skip
    tokens = (s.image_size // s.patch_size) ** 2 + 1
    lines.append(
        f"\nHeld-out `{s.held_out_split()}` split of `{s.data}` ({s.image_size}x{s.image_size}). ViT depth {s.depth}, "
        f"width {s.embed_dim}, {s.num_heads} heads, {tokens} tokens. Teacher: {s.teacher_steps} steps at lr "
        f"{s.teacher_lr:g}; every student starts from its seed's teacher and trains {s.student_steps} steps at lr "
        f"{s.lr:g}, batch {s.batch_size}. Every block Linear, q/k/v and the attention map are binary; the patch "
        "embedding, norms, tokens and head stay FP."
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- the gradient figure


def gradient_figure(model_fp: nn.Module, x: Tensor, y: Tensor, path: str | Path) -> dict[str, Any]:
    """The gradient reaching q and k per block, Bi-ViT-binarized with ``attention="sign"`` and with
    ``"learnable"`` (:func:`arbitrary_quant.bivit.attention_grad_norms` on copies of ``model_fp``,
    train mode), as a log-scale PNG bar chart at ``path``.

    Why: Bi-ViT's first claim is that a fixed-scale sign on the softmax map shrinks this gradient by
    about ``1/N`` and the learnable scale brings it back. Returns ``sign`` / ``learnable``
    (``{block: {"q", "k"}}``), ``ratio`` (sign / learnable), ``tokens`` and ``path``.
    """
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise BadInputError(f"cannot write {target}: only .png is supported")
    _require_fp(model_fp, "model")
    norms: dict[str, dict[str, dict[str, float]]] = {}
    for mode in ("sign", "learnable"):
        model = binarize_vit(copy.deepcopy(model_fp), BiViTConfig(attention=mode)).train()
        norms[mode] = attention_grad_norms(model, x, y)
    blocks = list(norms["learnable"])
    ratio = {b: {t: norms["sign"][b][t] / max(norms["learnable"][b][t], 1e-30) for t in ("q", "k")} for b in blocks}
    embed = getattr(model_fp, "patch_embed", None)
    patches = getattr(embed, "num_patches", None)
    tokens = int(patches) + int(getattr(model_fp, "num_prefix_tokens", 0)) if patches is not None else None

    fig = Figure(figsize=(max(5.0, 1.2 * len(blocks) + 2), 3.6))
    ax = fig.add_subplot()
    width = 0.2
    bars = (("sign", "q", "#d62728", -1.5), ("learnable", "q", "#1f77b4", -0.5),
            ("sign", "k", "#ff9896", 0.5), ("learnable", "k", "#aec7e8", 1.5))  # fmt: skip
    for mode, t, colour, offset in bars:
        values = [max(norms[mode][b][t], 1e-30) for b in blocks]
        ax.bar([i + offset * width for i in range(len(blocks))], values, width, color=colour, label=f"{t}, {mode}")
    ax.set_yscale("log")
    ax.set_xticks(range(len(blocks)))
    ax.set_xticklabels([b.replace(".attn", "") for b in blocks])
    ax.set_ylabel("mean ||dCE/dq||, ||dCE/dk||")
    ax.set_title(f"Gradient reaching q, k: sign vs learnable scale ({tokens} tokens)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    save_png(fig, target)
    return {"sign": norms["sign"], "learnable": norms["learnable"], "ratio": ratio, "tokens": tokens,
            "path": str(target)}  # fmt: skip


# --------------------------------------------------------------------------- OPs


def vit_ops(
    model_name: str = "deit_tiny_patch16_224", img_size: int = 224, model: nn.Module | None = None
) -> dict[str, Any]:
    """FP FLOPs of a timm ViT vs binary OPs (``FP FLOPs + BOPs / 64``) of its Bi-ViT version, per image.

    Builds ``model_name`` at ``img_size`` with random weights (or copies ``model``), counts one
    forward with :func:`slimkit.opcount.count_ops`, binarizes a copy with the default
    :class:`BiViTConfig` and counts again with a ``layer_bits`` mapping (the wrappers declare no bit
    attributes). Returns both counts, their ratio next to the paper's 61.5x for DeiT-Tiny, which
    layers stay FP with their FLOPs, and the ratio if the FP patch embedding were not counted.
    """
    _positive_int("img_size", img_size)
    fp = copy.deepcopy(model) if model is not None else _timm_model(model_name, img_size=img_size)
    _require_fp(fp, "model")
    fp.eval()
    x = torch.randn(1, _in_chans(fp), img_size, img_size, generator=torch.Generator().manual_seed(0))
    fp_count = count_ops(fp, x)
    binary = binarize_vit(copy.deepcopy(fp), BiViTConfig()).eval()
    bin_count = count_ops(binary, x, layer_bits=layer_bits(binary))
    fp_rows = {r.name: r.fp_flops for r in bin_count.rows if r.is_fp}
    binary_macs = sum(r.macs for r in bin_count.rows if not r.is_fp)
    embed = sum(v for k, v in fp_rows.items() if k.startswith("patch_embed"))
    return {
        "model": model_name if model is None else type(model).__name__,
        "img_size": img_size,
        "fp_model": {"macs": fp_count.macs, "fp_flops": fp_count.fp_flops},
        "bivit": {
            "fp_flops": bin_count.fp_flops,
            "bops": bin_count.bops,
            "ops": bin_count.ops,
            "binary_macs": binary_macs,
        },
        "ratio": fp_count.fp_flops / bin_count.ops,
        "paper_ratio": PAPER_DEIT_TINY_RATIO,
        "ratio_without_patch_embed": fp_count.fp_flops / (bin_count.ops - embed),
        "full_precision_layers": fp_rows,
        "bits_from": "layer_bits mapping (BinaryLinear / BinaryAttention declare no w_bits / a_bits)",
        "note": "1 MAC = 1 FLOP; the patch embedding and head stay FP (norms, softmax, GELU, "
        "tokens are element-wise and not counted)",
    }
