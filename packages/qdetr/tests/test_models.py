"""qdetr.models: the tiny DETR is initialized as the official DETR initializes a transformer trained from scratch."""

from __future__ import annotations

import math

import pytest
import torch

from qdetr.models import TINY_DEFAULTS, init_like_detr, tiny_detr
from slimkit.errors import BadInputError


def test_transformer_matrices_are_xavier_uniform_and_query_slots_unit_normal() -> None:
    torch.manual_seed(0)
    model = tiny_detr(3)
    inner = model.model
    for part in (inner.encoder, inner.decoder):
        for name, param in part.named_parameters():
            if param.dim() > 1:
                fan_out, fan_in = param.shape[0], param.shape[1]
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                assert float(param.abs().max()) <= bound + 1e-6, name
                assert float(param.std()) > 0.8 * bound / math.sqrt(3.0), name  # not the N(0, 0.02) of transformers
    slots = inner.query_position_embeddings.weight
    assert slots.shape == (TINY_DEFAULTS["num_queries"], TINY_DEFAULTS["d_model"])
    assert 0.8 < float(slots.std()) < 1.2
    assert float(torch.pdist(slots).min()) > 5.0  # distinct slots from the start


def test_init_like_detr_leaves_the_backbone_alone_and_returns_the_model() -> None:
    torch.manual_seed(0)
    model = tiny_detr(2)
    backbone = {k: v.clone() for k, v in model.model.backbone.state_dict().items()}
    head = model.class_labels_classifier.weight.clone()
    assert init_like_detr(model) is model
    assert all(torch.equal(v, model.model.backbone.state_dict()[k]) for k, v in backbone.items())
    assert not torch.equal(head, model.class_labels_classifier.weight)


def test_unknown_option_is_one_line_error() -> None:
    with pytest.raises(BadInputError, match="unknown tiny_detr options"):
        tiny_detr(3, layers=4)
