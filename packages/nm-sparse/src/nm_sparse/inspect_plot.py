"""SpRe's observation as a picture: sparsity at each kernel position, N:M vs unstructured.

With groups along the input channels, an N:M conv has the same sparsity ``1 - n/m`` at every
(h, w) of its kernel. Layer-wise unstructured magnitude pruning of the same dense weights,
at the same overall sparsity, is uneven: some taps (often the centre) stay denser. SpRe's
extra branch is switched on exactly at the taps that unstructured pruning finds denser
than average. :func:`position_sparsity` computes both maps per conv layer and
:func:`save_heatmap` draws them (PNG through :func:`slimkit.plot.save_png`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nm_sparse.check import DEPLOY_RECORD
from nm_sparse.layers import NMLayer, inside_wrapper
from nm_sparse.reference import unstructured_mask
from slimkit.plot import save_png

MAX_PANELS = 12


def kernel_position_sparsity(weight: Tensor) -> Tensor:
    """Fraction of zeros at each kernel position of a conv weight ``[O, I, *k]`` -> ``[*k]``."""
    return (weight.detach() == 0).float().mean(dim=(0, 1))


def _conv_weights(model: nn.Module) -> list[tuple[str, Tensor, Tensor, Tensor | None]]:
    """(name, forward weight, dense latent weight, SpRe spatial mask or None) per spatial conv.

    N:M wrappers and convs that :func:`nm_sparse.deploy` recorded are listed; plain convs only
    when the model has neither (a dense model), so layers kept dense do not crowd the figure.
    """
    record = getattr(model, DEPLOY_RECORD, None) or {}
    has_wrappers = any(isinstance(mod, NMLayer) for mod in model.modules())
    found = []
    for name, module in model.named_modules():
        if isinstance(module, NMLayer):
            weight = module.dense_weight
            if weight.dim() == 4 and weight[0, 0].numel() > 1:
                spatial = getattr(module, "current_spatial_mask", None)
                found.append((name, module.effective_weight(), weight.detach(), spatial))
            continue
        if inside_wrapper(model, name):
            continue
        plain = getattr(module, "weight", None)
        listed = name in record or not (record or has_wrappers)
        if listed and isinstance(module, nn.Conv2d) and isinstance(plain, Tensor) and plain[0, 0].numel() > 1:
            found.append((name, plain.detach(), plain.detach(), None))
    return found


@torch.no_grad()
def position_sparsity(model: nn.Module, n: int, m: int) -> list[dict[str, Any]]:
    """Per spatial conv: sparsity map of the weights it uses, and of unstructured pruning.

    ``unstructured`` prunes the dense (latent) weights layer-wise by magnitude to the same
    sparsity ``1 - n/m``; for a deployed model the latent weights are the deployed ones, so
    the comparison then uses the N:M weights themselves. ``spatial_mask`` is SpRe's S where
    the layer has one.
    """
    rows = []
    for name, used, dense, spatial in _conv_weights(model):
        unstructured = unstructured_mask(dense, n / m)
        rows.append(
            {
                "name": name,
                "kernel": list(used.shape[2:]),
                "nm": kernel_position_sparsity(used).tolist(),
                "unstructured": (1.0 - unstructured.float().mean(dim=(0, 1))).tolist(),
                "spatial_mask": None if spatial is None else spatial.detach().cpu().tolist(),
            }
        )
    return rows


def save_heatmap(rows: list[dict[str, Any]], path: str | os.PathLike[str], title: str = "") -> Path:
    """Two rows of heatmaps (weights in use, unstructured at equal sparsity), one column per layer."""
    from matplotlib.figure import Figure

    shown = rows[:MAX_PANELS]
    cols = max(1, len(shown))
    fig = Figure(figsize=(2.2 * cols + 1.2, 4.6))
    axes = fig.subplots(2, cols, squeeze=False)
    image = None
    for c, row in enumerate(shown):
        for r, key in enumerate(("nm", "unstructured")):
            ax = axes[r][c]
            data = torch.tensor(row[key])
            image = ax.imshow(data.numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
            for (i, j), value in _cells(data):
                ax.text(
                    j,
                    i,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value < 0.6 else "black",
                )
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(row["name"], fontsize=8)
        if row.get("spatial_mask") is not None:
            axes[1][c].set_xlabel("S=" + _mask_text(row["spatial_mask"]), fontsize=7)
    if not shown:
        for ax in axes.flat:
            ax.axis("off")
        axes[0][0].text(0.5, 0.5, "no k x k convs", ha="center", va="center")
    axes[0][0].set_ylabel("N:M (in use)", fontsize=8)
    axes[1][0].set_ylabel("unstructured", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="sparsity at kernel position")
    fig.suptitle(title or "sparsity per kernel position", fontsize=9)
    return save_png(fig, path, dpi=110)


def _cells(data: Tensor) -> list[tuple[tuple[int, int], float]]:
    return [((i, j), float(data[i, j])) for i in range(data.shape[0]) for j in range(data.shape[1])]


def _mask_text(mask: list[list[float]]) -> str:
    return "/".join("".join("1" if v else "0" for v in row) for row in mask)
