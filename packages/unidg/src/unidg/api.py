"""The entry point and its undo: ``attach(net, ClusterConfig()) -> net`` and ``detach(net) -> net``.

For a clustering library the "method applied to a model" is the grouping stage attached to a
representation network: :func:`attach` adds a :class:`GroupingHead` (the clustering config) to
the network in place, without changing what the network computes; :func:`group` then embeds
samples with the network and clusters them with the head's config; :func:`detach` removes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.errors import BadInputError
from unidg.config import ClusterConfig
from unidg.graph import ClusterResult, cluster
from unidg.model import NetConfig, UnifiedNet
from unidg.registry import REGISTRY

__all__ = ["ENTRY_POINT", "REGISTRY", "UNDO", "GroupingHead", "attach", "detach", "example", "group", "load_config"]

HEAD = "unidg_grouping"


class GroupingHead(nn.Module):
    """Holds the clustering config on the network (no parameters; forward is never called)."""

    def __init__(self, config: ClusterConfig) -> None:
        super().__init__()
        self.config = config

    def extra_repr(self) -> str:
        c = self.config
        return f"k={c.k}, neighbours={c.neighbours}, threshold={c.threshold}, decode={c.decode}, levels={c.levels}"


@REGISTRY.register(ClusterConfig)
def _attach_head(model: nn.Module, config: ClusterConfig) -> GroupingHead:
    head = GroupingHead(config)
    model.add_module(HEAD, head)
    return head


def attach(model: nn.Module, config: ClusterConfig | None = None) -> nn.Module:
    """Attach the grouping head (``config``) to ``model`` in place and return it: the entry point."""
    cfg = config or ClusterConfig()
    if not isinstance(cfg, ClusterConfig):
        raise BadInputError(f"attach takes a ClusterConfig, got {type(cfg).__name__}")
    REGISTRY.handler(cfg)(model, cfg)
    return model


def detach(model: nn.Module) -> nn.Module:
    """Remove the grouping head in place and return the model (exactly as before :func:`attach`)."""
    if HEAD in model._modules:
        del model._modules[HEAD]
    return model


@torch.no_grad()
def group(model: nn.Module, samples: torch.Tensor, modality: int = 0, batch: int = 256) -> ClusterResult:
    """Embed ``samples`` with ``model`` and cluster them with its attached head's config."""
    head = model._modules.get(HEAD)
    if not isinstance(head, GroupingHead):
        raise BadInputError("the model has no grouping head: call unidg.attach(model, ClusterConfig()) first")
    was_training = model.training
    model.eval()
    z = torch.cat([model(samples[s : s + batch], modality) for s in range(0, samples.shape[0], batch)])
    model.train(was_training)
    return cluster(np.asarray(z.float().cpu().numpy()), head.config)


def load_config(data: Any) -> Any:
    """A config from a tagged dict (``slimkit.io.config_to_dict`` output)."""
    return REGISTRY.config_from_dict(data)


ENTRY_POINT = attach
UNDO = detach


def example(seed: int = 0) -> tuple[nn.Module, ClusterConfig]:
    """A tiny random unified network (face input ``[B, 3, 32, 32]``) and the default config."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UnifiedNet(NetConfig(dim=32, depth=1, heads=2, embed=16))
    return model, ClusterConfig(seed=seed)
