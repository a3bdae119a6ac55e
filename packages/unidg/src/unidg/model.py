"""The unified representation network: one shared transformer for face, body and voice.

Reconstructed from the abstract ("the same space ... still preserves the modality's uniqueness"):
modality-specific patch projections (a face crop, a body crop and a log-mel patch do not share a
pixel format), a learned **modality embedding** added to every token, one **shared** transformer
encoder and CLS pooling, then small **modality-specific heads** onto a unit-norm embedding.
Trained with per-modality CosFace identity losses plus a cross-modal InfoNCE between samples of
one character (:mod:`unidg.training`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.errors import BadInputError
from unidg.config import MODALITIES

__all__ = ["IN_CHANNELS", "NetConfig", "UnifiedNet"]

IN_CHANNELS = (3, 3, 1)  # face, body, voice (log-mel)


@dataclass
class NetConfig:
    """Width, depth and embedding size of :class:`UnifiedNet` (small defaults: it trains on 2 CPU cores)."""

    dim: int = 64
    depth: int = 2
    heads: int = 4
    embed: int = 64
    patch: int = 8
    size: int = 32

    def __post_init__(self) -> None:
        for name in ("dim", "depth", "heads", "embed", "patch", "size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise BadInputError(f"{name} must be an integer >= 1, got {v!r}")
        if self.dim % self.heads or self.size % self.patch:
            raise BadInputError("dim must be divisible by heads and size by patch")


class UnifiedNet(nn.Module):
    """``forward(x, modality) -> unit embedding [B, embed]``; ``modality`` is 0 face, 1 body, 2 voice."""

    def __init__(self, config: NetConfig | None = None) -> None:
        super().__init__()
        cfg = config or NetConfig()
        self.config = cfg
        self.patchify = nn.ModuleList(nn.Conv2d(c, cfg.dim, cfg.patch, cfg.patch) for c in IN_CHANNELS)
        tokens = (cfg.size // cfg.patch) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, cfg.dim) * 0.02)
        self.modality = nn.Embedding(len(MODALITIES), cfg.dim)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 2 * cfg.dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, cfg.embed)) for _ in MODALITIES
        )

    def forward(self, x: torch.Tensor, modality: int = 0) -> torch.Tensor:
        if not 0 <= modality < len(MODALITIES):
            raise BadInputError(f"modality must be 0..{len(MODALITIES) - 1}, got {modality}")
        tok = self.patchify[modality](x).flatten(2).transpose(1, 2)
        tok = torch.cat([self.cls.expand(tok.shape[0], -1, -1), tok], 1) + self.pos
        tok = tok + self.modality.weight[modality]
        h = self.norm(self.encoder(tok)[:, 0])
        return F.normalize(self.heads[modality](h), dim=-1)

    def example_input(self) -> torch.Tensor:
        """A fixed face batch (what the package contract test feeds the model)."""
        g = torch.Generator().manual_seed(0)
        return torch.rand(2, IN_CHANNELS[0], self.config.size, self.config.size, generator=g)
