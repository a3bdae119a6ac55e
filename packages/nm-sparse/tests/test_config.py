"""nm_sparse.config + nm_sparse.registry: per-method configs, the flat 0.1 NMConfig, JSON through slimkit.io."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

import nm_sparse
from nm_sparse.api import REGISTRY, load_config
from nm_sparse.config import (
    METHOD_CONFIGS,
    METHODS,
    ASPConfig,
    BiMaskConfig,
    DenseConfig,
    NMConfig,
    SparsityConfig,
    SpReConfig,
    SRSTEConfig,
    TransposableConfig,
    UnstructuredConfig,
    as_method_config,
)
from slimkit.errors import BadInputError
from slimkit.io import config_to_dict, save_config
from slimkit.io import load_config as slimkit_load_config

#: A config file exactly as nm-sparse 0.1 wrote it (``config_to_dict(NMConfig(...))``).
CONFIG_0_1 = {
    "_type": "NMConfig",
    "_version": 1,
    "method": "spre",
    "pattern": "2:4",
    "include": None,
    "exclude": ["fc"],
    "keep_first_dense": True,
    "keep_last_dense": True,
    "layout": "cin",
    "decay": 0.0002,
    "refresh": "step",
    "spre_min_kernel": 2,
    "spre_pairing": "auto",
    "spre_bn_map": None,
    "spre_branch_init": "kaiming",
    "spre_branch_gamma": 0.5,
    "bimask_candidates": 10,
    "bimask_interval": 100,
    "bimask_scorer": "kept",
    "bimask_keep_current": False,
    "seed": 3,
}


def test_one_config_per_method_and_every_one_registered() -> None:
    assert set(METHOD_CONFIGS) == set(METHODS)
    assert set(REGISTRY.config_types) == {
        DenseConfig, ASPConfig, UnstructuredConfig, TransposableConfig, SRSTEConfig, SpReConfig, BiMaskConfig
    }  # fmt: skip
    assert REGISTRY.aliases == {"NMConfig": NMConfig}
    for cls in REGISTRY.config_types:
        assert issubclass(cls, SparsityConfig)
        assert callable(REGISTRY.handler(cls()))


def test_method_fields_have_no_prefixes() -> None:
    names = {f.name for f in dataclasses.fields(SpReConfig)} | {f.name for f in dataclasses.fields(BiMaskConfig)}
    assert not [n for n in names if n.startswith(("spre_", "bimask_"))]
    assert {"min_kernel", "pairing", "bn_map", "branch_init", "branch_gamma", "refresh"} <= names
    assert {"candidates", "interval", "scorer", "keep_current"} <= names
    assert "decay" not in {f.name for f in dataclasses.fields(ASPConfig)}


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (lambda: SRSTEConfig(pattern="5:4"), "5:4"),
        (lambda: SRSTEConfig(decay=-1.0), "decay"),
        (lambda: SpReConfig(min_kernel=1), "spre_min_kernel"),
        (lambda: SpReConfig(pairing="magic"), "spre_pairing"),
        (lambda: BiMaskConfig(candidates=0), "bimask_candidates"),
        (lambda: BiMaskConfig(scorer="best"), "bimask_scorer"),
        (lambda: ASPConfig(layout="nhwc"), "layout"),
    ],
)
def test_per_method_validation(bad: Any, needle: str) -> None:
    with pytest.raises(BadInputError, match=needle):
        bad()


@pytest.mark.parametrize("method", METHODS)
def test_flat_config_converts_to_its_method_config(method: str) -> None:
    flat = NMConfig(
        method=method, pattern="1:4", exclude=["x"], seed=7, decay=1e-3, bimask_interval=5, spre_branch_gamma=0.0
    )
    converted = flat.to_method_config()
    assert type(converted) is METHOD_CONFIGS[method] and converted.method == method
    assert (converted.pattern, converted.exclude, converted.seed) == ("1:4", ["x"], 7)
    if isinstance(converted, BiMaskConfig):
        assert converted.interval == 5 and converted.decay == 1e-3
    if isinstance(converted, SpReConfig):
        assert converted.branch_gamma == 0.0
    assert as_method_config(flat) == converted and as_method_config(converted) is converted
    assert as_method_config(None) == SRSTEConfig()


@pytest.mark.parametrize("cls", [SRSTEConfig, SpReConfig, BiMaskConfig, DenseConfig, TransposableConfig])
def test_round_trip_through_slimkit_io(cls: type[SparsityConfig], tmp_path: Path) -> None:
    config = cls(pattern="2:8", include=["layer*"], seed=2)
    data = config_to_dict(config)
    assert data["_type"] == cls.__name__
    assert REGISTRY.config_from_dict(data) == config
    save_config(tmp_path / "c.json", config)
    assert REGISTRY.load_config(tmp_path / "c.json") == config
    assert slimkit_load_config(tmp_path / "c.json", REGISTRY.config_types) == config


def test_saved_0_1_config_still_loads_and_applies_identically(tmp_path: Path, make_resnet: Any, random_bn: Any) -> None:
    loaded = REGISTRY.config_from_dict(CONFIG_0_1)
    assert isinstance(loaded, NMConfig) and loaded.method == "spre" and loaded.spre_branch_gamma == 0.5
    per_method = load_config(CONFIG_0_1)
    assert per_method == SpReConfig(exclude=["fc"], branch_gamma=0.5, seed=3)
    save_config(tmp_path / "old.json", loaded)
    assert REGISTRY.load_config(tmp_path / "old.json") == loaded

    x = torch.randn(2, 3, 8, 8)
    outputs = []
    for config in (loaded, per_method):
        torch.manual_seed(0)
        model = make_resnet()
        random_bn(model)
        report = nm_sparse.sparsify(model, config)
        model.eval()
        with torch.no_grad():
            outputs.append((report.to_dict(), model(x)))
    assert outputs[0][0] == outputs[1][0]
    assert torch.equal(outputs[0][1], outputs[1][1])


def test_unknown_type_and_bad_field_are_one_line_errors() -> None:
    with pytest.raises(BadInputError, match="config is a MagicConfig"):
        REGISTRY.config_from_dict({"_type": "MagicConfig", "_version": 1})
    with pytest.raises(BadInputError, match="candidates"):
        REGISTRY.config_from_dict({"_type": "BiMaskConfig", "_version": 1, "candidates": "ten"})
    with pytest.raises(BadInputError, match="spre_bogus"):
        REGISTRY.config_from_dict({**CONFIG_0_1, "spre_bogus": 1})
