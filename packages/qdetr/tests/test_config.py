"""Configs: validation with one-line errors, JSON round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qdetr.api import REGISTRY
from qdetr.config import DEFAULT_KEEP_FP, DRDConfig, QDetrConfig
from qdetr.training import FitSettings
from slimkit.errors import BadInputError
from slimkit.io import config_from_dict, config_to_dict
from slimkit.train import default_scheduler


def test_defaults_are_the_papers_4_4_8_with_the_released_codes_fp_layers() -> None:
    c = QDetrConfig()
    assert (c.w_bits, c.a_bits, c.attn_bits, c.stem_bits, c.alignment, c.scope) == (4, 4, 8, 8, "cross", "all")
    assert c.keep_fp == DEFAULT_KEEP_FP and c.keep_fp is not DEFAULT_KEEP_FP
    d = DRDConfig()
    assert (d.mu_giou, d.mu_l1, d.select, d.pairing, d.layers) == (2.0, 5.0, "exists", "argmax", [-1])


def test_round_trips() -> None:
    c = QDetrConfig(w_bits=2, a_bits=3, keep_fp="head*", alignment="both", stem_bits=None)
    assert c.keep_fp == ["head*"]
    assert REGISTRY.config_from_dict(config_to_dict(c)) == c
    d = DRDConfig(tau=0.3, layers=1, pairing="hungarian")
    assert d.layers == [1] and config_from_dict(DRDConfig, config_to_dict(d)) == d


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"w_bits": 1}, "w_bits must be 2..8"),
        ({"a_bits": 9}, "a_bits must be 2..8"),
        ({"attn_bits": True}, "attn_bits must be 2..8"),
        ({"stem_bits": 0}, "stem_bits must be 2..8"),
        ({"alignment": "self"}, "alignment must be one of cross, both, none"),
        ({"scope": "encoder"}, "scope must be one of all, backbone"),
        ({"act_granularity": "group"}, "act_granularity must be one of tensor, channel"),
        ({"keep_fp": [1]}, "keep_fp must be a list of module-name globs"),
        ({"da_eps": 0}, "da_eps must be > 0"),
    ],
)
def test_qdetr_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        QDetrConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"tau": 1.5}, r"tau must be in \[0, 1\]"),
        ({"tau": -0.1}, "tau must be a number >= 0"),
        ({"weight": "a"}, "weight must be a number"),
        ({"layers": []}, "layers must be a non-empty list"),
        ({"select": "any"}, "select must be one of exists, all"),
        ({"pairing": "greedy"}, "pairing must be one of argmax, hungarian"),
    ],
)
def test_drd_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        DRDConfig(**kwargs)


def test_fit_settings_step_schedule_is_detrs_drop_after_two_thirds() -> None:
    settings = FitSettings(steps=400, backbone_steps=0, warmup_steps=10, lr=1e-3)
    config = settings.train_config(Path("unused"), 310)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    assert config.scheduler == "step"
    factor = default_scheduler(optimizer, config).lr_lambdas[0]
    assert [factor(s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]  # linear warm-up
    assert factor(10) == factor(209) == 1.0 and factor(210) == factor(309) == 0.1  # 10 + 2/3 of 300
    cosine_config = FitSettings(steps=400, backbone_steps=0, warmup_steps=10, lr=1e-3, schedule="cosine").train_config(Path("unused"), 310)
    cosine = default_scheduler(optimizer, cosine_config).lr_lambdas[0]
    assert cosine(10) == 1.0 and cosine(309) < cosine(200) < cosine(11) < 1.0


def test_fit_settings_rejects_an_unknown_schedule() -> None:
    with pytest.raises(BadInputError, match="schedule must be one of step, cosine, constant"):
        FitSettings(schedule="linear")
