"""Pictures of which image patches ended up in which token (DiffRate and ToMe source tracing).

The patched model is run with ``trace_source=True``; :func:`token_rate.token_source` then maps
every final token to the input patches it covers. To show an intermediate block (the last blocks of
published schedules keep only a handful of tokens), a forward hook on that block copies the source
map as it stands when the block returns. Each group is painted with its mean colour and
outlined, as in the ToMe and DiffRate papers; patches that were pruned (covered by no token) are
black.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from slimkit.data import image_to_tensor
from slimkit.errors import BadInputError
from slimkit.plot import save_png
from token_rate.config import DiffRateConfig, ToMeConfig
from token_rate.models import input_spec
from token_rate.patch import _inspect, get_context, model_dims, patch, token_source, unpatch

__all__ = ["token_groups", "render_groups", "trace_groups", "trace_block_groups", "resolve_blocks", "visualize"]

BlockSpec = int | Sequence[int] | str | None


def token_groups(source: Tensor, num_prefix_tokens: int) -> Tensor:
    """For every input patch, the index of the final token that covers it (``-1``: pruned).

    ``source`` is ``[B, N, N0]`` (final tokens x input tokens, prefix tokens included); returns
    ``[B, N0 - prefix]`` int64. Indices count final tokens, prefix tokens included.
    """
    if source.dim() != 3:
        raise ValueError(f"source must be [B, N, N0], got {tuple(source.shape)}")
    cover = source[:, :, num_prefix_tokens:] > 0
    groups = cover.float().argmax(dim=1)
    return torch.where(cover.any(dim=1), groups, torch.full_like(groups, -1))


def render_groups(
    image: np.ndarray, groups: np.ndarray, grid: tuple[int, int], pruned_color: tuple[int, int, int] = (0, 0, 0)
) -> np.ndarray:
    """Paint each group of patches in its mean colour, draw group borders, paint pruned patches.

    ``image`` is uint8 HxWx3 with H, W multiples of the grid; ``groups`` holds one id per patch.
    Pruned patches are black by default, as in the official notebook.
    """
    gh, gw = grid
    h, w = image.shape[:2]
    if h % gh or w % gw:
        raise ValueError(f"image {h}x{w} is not a multiple of the {gh}x{gw} patch grid")
    if groups.size != gh * gw:
        raise ValueError(f"{groups.size} group ids for a {gh}x{gw} grid")
    ph, pw = h // gh, w // gw
    pixel_group = np.kron(groups.reshape(gh, gw), np.ones((ph, pw), dtype=groups.dtype))
    img = image.astype(np.float64)
    out = np.empty_like(img)
    out[...] = np.asarray(pruned_color, dtype=np.float64)
    for g in np.unique(groups):
        if g < 0:
            continue
        sel = pixel_group == g
        out[sel] = img[sel].mean(axis=0)
    # Borders: pixels whose right or lower neighbour belongs to another group.
    edge = np.zeros((h, w), dtype=bool)
    edge[:, :-1] |= pixel_group[:, :-1] != pixel_group[:, 1:]
    edge[:-1, :] |= pixel_group[:-1, :] != pixel_group[1:, :]
    out[edge] = out[edge] * 0.35 + 255 * 0.65
    return np.clip(out, 0, 255).astype(np.uint8)


def _with_trace(config: Any) -> Any:
    if isinstance(config, (DiffRateConfig, ToMeConfig)):
        return dataclasses.replace(config, trace_source=True)
    return DiffRateConfig(schedule=config, trace_source=True)


def resolve_blocks(block: BlockSpec, depth: int) -> list[int]:
    """Block indices to draw: ``None`` = last, ``"all"`` = every block, ints may be negative (Python-style)."""
    if block is None:
        return [depth - 1]
    if isinstance(block, str):
        if block.strip().lower() == "all":
            return list(range(depth))
        try:
            block = int(block)
        except ValueError:
            raise BadInputError(f"block must be an integer or 'all', got {block!r}") from None
    wanted = [block] if isinstance(block, int) else list(block)
    if not wanted:
        raise BadInputError("no block given")
    out = []
    for b in wanted:
        if isinstance(b, bool) or not isinstance(b, int):
            raise BadInputError(f"block must be an integer, got {b!r}")
        if not -depth <= b < depth:
            raise BadInputError(f"block {b} is out of range for a {depth}-block model (use 0..{depth - 1} "
                                f"or {-depth}..-1)")
        out.append(b % depth)
    return out


def trace_block_groups(model: nn.Module, image: Tensor, config: Any, blocks: BlockSpec = None
                       ) -> list[tuple[int, np.ndarray, int]]:
    """One traced forward of a copy of ``model``; ``(block, group id per patch, tokens left)`` after each block.

    Forward hooks on the chosen blocks copy the context's source map when each block returns; the
    compression step runs inside the block, so that is the token state the next block receives.
    """
    # A patched model is traced under ``config`` alone, as patch() replaces a previous patch.
    clone = unpatch(copy.deepcopy(model)).eval()
    layers = _inspect(clone)[1]  # before patching: the check wants the unpatched block classes
    chosen = resolve_blocks(blocks, len(layers))
    patch(clone, _with_trace(config))
    ctx = get_context(clone)
    captured: dict[int, Tensor] = {}

    def hook_for(index: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if ctx.state.source is None:  # pragma: no cover - trace_source is always set above
                raise RuntimeError("no source map was traced")
            captured[index] = ctx.state.source.detach().clone()
        return hook

    handles = [layers[b].register_forward_hook(hook_for(b)) for b in sorted(set(chosen))]
    try:
        with torch.no_grad():
            clone(image.unsqueeze(0))
    finally:
        for h in handles:
            h.remove()
    prefix = ctx.info.num_prefix_tokens
    return [(b, token_groups(captured[b], prefix)[0].cpu().numpy(), int(captured[b].shape[1])) for b in chosen]


def trace_groups(model: nn.Module, image: Tensor, config: Any, block: int | None = None) -> tuple[np.ndarray, int]:
    """Run a traced copy of ``model`` under ``config`` on one image; ``(group id per patch, tokens left)``.

    ``block`` picks the block after which the groups are read (default: the last; negative counts back).
    """
    if block is None:
        clone = copy.deepcopy(model).eval()
        patch(clone, _with_trace(config))
        with torch.no_grad():
            clone(image.unsqueeze(0))
        source = token_source(clone)
        if source is None:  # pragma: no cover - trace_source is always set above
            raise RuntimeError("no source map was traced")
        prefix = get_context(clone).info.num_prefix_tokens
        return token_groups(source, prefix)[0].cpu().numpy(), int(source.shape[1])
    _, groups, tokens = trace_block_groups(model, image, config, block)[0]
    return groups, tokens


def visualize(
    model: nn.Module,
    image: np.ndarray,
    configs: Mapping[str, Any],
    output: str | os.PathLike[str],
    title: str | None = None,
    pruned_color: tuple[int, int, int] = (0, 0, 0),
    block: BlockSpec = None,
) -> dict[str, Any]:
    """Save a PNG: the image, then its token groups under each named config (schedule / ToMeConfig).

    ``block`` picks where the groups are read: ``None`` (after the last block), an index (negative
    counts back), a list of indices or ``"all"`` (one panel per block and config). Out-of-range
    indices raise :class:`BadInputError`. With one block, ``summary["panels"]`` is keyed by config
    name; with several, by ``"<name> @ block <i>"``.
    """
    from matplotlib.figure import Figure  # optional heavy third-party import, only when drawing

    if image.ndim != 3 or image.shape[2] != 3:
        raise BadInputError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    size, chans = input_spec(model)
    grid_h, grid_w = (int(v) for v in getattr(model.patch_embed, "grid_size"))  # noqa: B009
    tensor = image_to_tensor(image, size, chans)
    shown = ((tensor.expand(3, -1, -1) if chans == 1 else tensor) * 0.5 + 0.5).clamp(0, 1)
    shown_np = (shown.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    scale = max(1, 224 // size)  # draw small inputs (digits) big enough to see
    shown_np = np.kron(shown_np, np.ones((scale, scale, 1), dtype=np.uint8))
    panels = [("input", shown_np, None)]
    summary: dict[str, Any] = {"output": str(output), "panels": {}}
    depth = model_dims(model).depth
    chosen = resolve_blocks(block, depth)
    many = len(chosen) > 1
    for name, config in configs.items():
        for b, groups, tokens in trace_block_groups(model, tensor, config, chosen):
            pruned = int((groups < 0).sum())
            panels.append(
                (f"{name}\nblock {b}: {tokens} tokens", render_groups(shown_np, groups, (grid_h, grid_w), pruned_color),
                 None)
            )
            summary["panels"][f"{name} @ block {b}" if many else name] = {
                "block": b,
                "tokens": tokens,
                "pruned_patches": pruned,
                "groups": len(set(groups.tolist()) - {-1}),
            }
    ncols = min(len(panels), 7)  # wrap "all blocks" figures instead of one very wide row
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(3.2 * ncols, 3.8 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    flat = list(axes.ravel())
    for ax, (label, arr, _) in zip(flat, panels):
        ax.imshow(arr)
        ax.set_title(label, fontsize=9)
    for ax in flat:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_png(fig, output, dpi=100)
    return summary
