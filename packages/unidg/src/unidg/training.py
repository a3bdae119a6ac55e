"""Training the unified network through ``slimkit.train`` and embedding a video's tracks with it.

- :class:`CharacterSamples`: item i is a co-occurring (face, body, voice) sample triple of
  character ``first_identity + i % identities`` (outfit drawn per item), rendered by
  :mod:`unidg.render`, a pure function of ``(i, seed)``; ``first_identity`` far from a video's
  ids (0..cast-1) trains on characters that video never shows (open set);
- :func:`unidg_loss`: per-modality CosFace (``s = 16``, ``m = 0.25``) identity losses plus a
  cross-modal InfoNCE (``tau = 0.1``; positives are all pairs of one character) between face-body
  and face-voice embeddings, weighted by ``contrastive``;
- :func:`fit`: ``slimkit.train.train`` with that loss (checkpoints, exact resume, ``accelerate launch``);
- :func:`embed_tracks`: each track's feature is the unit mean of its rendered frames' embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from slimkit.errors import BadInputError
from slimkit.io import config_from_dict, load_into, load_model_files
from slimkit.paths import check_input_dir
from slimkit.train import TrainConfig, TrainResult, train
from unidg.config import MODALITIES
from unidg.model import NetConfig, UnifiedNet
from unidg.render import body_crop, face_crop, voice_patch
from unidg.tracks import Track

__all__ = ["CharacterSamples", "IdentityHeads", "embed_tracks", "fit", "load_net", "unidg_loss"]


class CharacterSamples(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]):
    """``(face [3,32,32], body [3,32,32], voice [1,32,32], identity)`` triples of ``identities`` characters."""

    def __init__(self, identities: int, size: int, seed: int = 0, outfits: int = 4, first_identity: int = 0) -> None:
        if identities < 2 or size < 1 or first_identity < 0:
            raise BadInputError(f"need >= 2 identities, >= 1 sample and first_identity >= 0, got {identities}, {size}, {first_identity}")
        self.identities, self.size, self.seed, self.outfits = identities, size, seed, outfits
        self.first_identity = first_identity

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, i, 31])
        label = i % self.identities  # the class index the identity heads see
        who = self.first_identity + label  # the rendered character
        outfit = int(rng.integers(self.outfits))
        return (torch.from_numpy(face_crop(who, rng)), torch.from_numpy(body_crop(who, outfit, rng)),
                torch.from_numpy(voice_patch(who, rng)), torch.tensor(label))  # fmt: skip


class IdentityHeads(nn.Module):
    """CosFace class weights, one matrix per modality (training only; discarded afterwards)."""

    def __init__(self, embed: int, identities: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(len(MODALITIES), identities, embed) * 0.1)

    def cosface(self, z: torch.Tensor, y: torch.Tensor, modality: int, s: float = 16.0, m: float = 0.25) -> torch.Tensor:
        cos = z @ F.normalize(self.weight[modality], dim=-1).T
        return F.cross_entropy(s * (cos - m * F.one_hot(y, cos.shape[1])), y)


def _info_nce(a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    logits = a @ b.T / tau
    pos = (y[:, None] == y[None, :]).float()
    log_p = logits.log_softmax(1)
    return -((log_p * pos).sum(1) / pos.sum(1)).mean()


class _Trainable(nn.Module):
    """The network and its identity heads as one module whose forward computes both losses, so
    a DDP wrapper (``accelerate launch``) sees every parameter used inside its own forward."""

    def __init__(self, net: UnifiedNet, heads: IdentityHeads) -> None:
        super().__init__()
        self.net, self.heads = net, heads

    def forward(self, face: torch.Tensor, body: torch.Tensor, voice: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = [self.net(face, 0), self.net(body, 1), self.net(voice, 2)]
        ident = torch.stack([self.heads.cosface(zm, y, m) for m, zm in enumerate(z)]).mean()
        cross = (_info_nce(z[0], z[1], y) + _info_nce(z[0], z[2], y)) / 2
        return torch.stack([ident, cross])


def unidg_loss(contrastive: float = 1.0) -> Any:
    """The loss function ``slimkit.train`` calls: identity losses + ``contrastive`` x cross-modal InfoNCE."""

    def loss_fn(model: nn.Module, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        ident, cross = model(*batch)
        total = ident + contrastive * cross
        return total, {"identity": float(ident.detach()), "cross_modal": float(cross.detach())}

    return loss_fn


def fit(
    net: UnifiedNet, dataset: CharacterSamples, output_dir: str | Path, steps: int, batch_size: int = 32,
    lr: float = 2e-3, contrastive: float = 1.0, seed: int = 0, progress: bool = True, resume: str | None = None,
    checkpoint_every: int = 0,
) -> TrainResult:
    """Train ``net`` in place (with fresh identity heads) through ``slimkit.train``."""
    torch.manual_seed(seed)
    model = _Trainable(net, IdentityHeads(net.config.embed, dataset.identities))
    cfg = TrainConfig(output_dir=str(output_dir), max_steps=steps, batch_size=batch_size, lr=lr, weight_decay=1e-4,
                      seed=seed, progress=progress, cpu=not torch.cuda.is_available(), resume_from=resume,
                      checkpoint_every=checkpoint_every, log_every=max(1, steps // 20))  # fmt: skip
    return train(model, dataset, cfg, loss_fn=unidg_loss(contrastive))


def load_net(folder: str | Path) -> tuple[UnifiedNet, dict[str, Any]]:
    """The network ``unidg train`` saved in ``folder`` (RUN/model) and its ``config.json``; one-line errors."""
    root = check_input_dir(folder, "model folder")
    if not (root / "model.safetensors").is_file() or not (root / "config.json").is_file():
        raise BadInputError(f"{root} is not a model folder written by 'unidg train' (needs model.safetensors and config.json)")
    state, meta = load_model_files(root)
    if not isinstance(meta.get("config"), dict) or meta["config"].get("_type") != "NetConfig":
        raise BadInputError(f"{root} is not a model folder written by 'unidg train' (no NetConfig)")
    net = UnifiedNet(config_from_dict(NetConfig, meta["config"]))
    load_into(net, state)
    net.eval()
    return net, meta


@torch.no_grad()
def embed_tracks(
    net: UnifiedNet, tracks: Sequence[Track], frames: int = 2, seed: int = 0, batch: int = 256, outfit_every: int = 2
) -> np.ndarray:
    """``[T, embed]`` unit track features: ``frames`` rendered samples per track (identity from the
    track's ground truth, outfit from its scene: ``scene // outfit_every``, the generator's
    ``SynthConfig.outfit_every``), embedded and mean-pooled."""
    net.eval()
    outs = np.zeros((len(tracks), net.config.embed), np.float32)
    for m, modality in enumerate(MODALITIES):
        idx = [i for i, t in enumerate(tracks) if t.modality == modality]
        if any(tracks[i].identity < 0 for i in idx):
            raise BadInputError("embed renders synthetic tracks and needs their identity; use your own embedder for real tracks")
        samples = []
        for i in idx:
            rng = np.random.default_rng([seed, tracks[i].id, 17])
            t = tracks[i]
            for _ in range(frames):
                if m == 0:
                    samples.append(face_crop(t.identity, rng))
                elif m == 1:
                    samples.append(body_crop(t.identity, max(t.scene, 0) // outfit_every, rng))
                else:
                    samples.append(voice_patch(t.identity, rng))
        if not samples:
            continue
        x = torch.from_numpy(np.stack(samples))
        z = torch.cat([net(x[s : s + batch], m) for s in range(0, x.shape[0], batch)])
        pooled = F.normalize(z.view(len(idx), frames, -1).mean(1), dim=-1)
        outs[idx] = pooled.numpy()
    return outs
