"""The package's entry point and its undo, the method registry, and config loading.

* :func:`patch` (``ENTRY_POINT``): patch a timm / transformers ViT in place for DiffRate (fixed
  schedule or search) or ToMe and return the same model object.
* :func:`unpatch` (``UNDO``): restore the original classes; outputs equal the unpatched model's.
* :data:`REGISTRY`: config type -> handler (:mod:`token_rate.diffrate`, :mod:`token_rate.tome`).
* :func:`config_from_dict`: any token-rate config from its tagged dict (0.1 files included).
* :func:`example`: a tiny random timm ViT and a config, for docs and contract tests.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from token_rate.config import DiffRateConfig, SearchConfig, ToMeConfig, upgrade_config_dict
from token_rate.patch import patch, unpatch
from token_rate.registry import REGISTRY
from token_rate.schedule import Schedule

__all__ = ["REGISTRY", "ENTRY_POINT", "UNDO", "patch", "unpatch", "config_from_dict", "example"]

ENTRY_POINT = patch
UNDO = unpatch


def config_from_dict(data: Any) -> DiffRateConfig | SearchConfig | ToMeConfig:
    """Rebuild a config from its ``to_dict`` output (``_type`` picks the method); files written by
    token-rate 0.1 load too. Unknown types or fields and fields of the wrong type raise
    :class:`~slimkit.errors.BadInputError` naming them."""
    return REGISTRY.config_from_dict(upgrade_config_dict(data))  # type: ignore[no-any-return]


def example(method: str = "tome") -> tuple[nn.Module, DiffRateConfig | ToMeConfig]:
    """A tiny random-init timm ViT (32x32 RGB, 8x8 patches: 16 patches + CLS, 3 blocks, width 64)
    and a config for it: ``"tome"`` (``ToMeConfig(r=4)``) or ``"diffrate"`` (a merge-only schedule)."""
    from timm.models.vision_transformer import VisionTransformer  # optional heavy third-party import

    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=2, num_classes=10).eval()
    if method == "tome":
        return model, ToMeConfig(r=4)
    if method == "diffrate":
        return model, DiffRateConfig(schedule=Schedule([17, 15, 12], [15, 12, 8], num_tokens=17))
    raise ValueError(f"example method must be 'tome' or 'diffrate', got {method!r}")
