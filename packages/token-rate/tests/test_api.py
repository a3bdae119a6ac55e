"""The package contract: entry point and undo, registry dispatch, config loading (0.1 files included)."""

from __future__ import annotations

import importlib
import json
import tomllib
from pathlib import Path

import pytest
import torch

import token_rate
from slimkit.errors import BadInputError
from token_rate import DiffRateConfig, Schedule, SearchConfig, ToMeConfig, api
from token_rate.context import TokenRateContext
from token_rate.diffrate import build_diffrate, build_search
from token_rate.registry import REGISTRY
from token_rate.tome import build_tome

#: The version pyproject.toml declares: ``__version__`` (from the installed metadata) must match it.
_PYPROJECT_VERSION = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"]


def test_narrow_all_and_version():
    assert len(token_rate.__all__) <= 16
    for name in ("__version__", "patch", "unpatch", "DiffRateConfig", "SearchConfig", "ToMeConfig"):
        assert name in token_rate.__all__
    for t in REGISTRY.config_types:
        assert t.__name__ in token_rate.__all__
    assert token_rate.__version__ == _PYPROJECT_VERSION
    # 0.1 names stay importable from the package root: the very objects of their modules
    patch_module = importlib.import_module("token_rate.patch")
    assert token_rate.model_dims is patch_module.model_dims and token_rate.get_context is patch_module.get_context
    assert token_rate.counted_gmacs is importlib.import_module("token_rate.model_flops").counted_gmacs
    assert token_rate.ViTDims is importlib.import_module("token_rate.flops").ViTDims


def test_registry_dispatches_each_config_to_its_method_file():
    assert REGISTRY.handler(DiffRateConfig(schedule="deit_small@2.9")) is build_diffrate
    assert REGISTRY.handler(SearchConfig()) is build_search
    assert REGISTRY.handler(ToMeConfig(r=2)) is build_tome
    assert set(REGISTRY.config_types) == {DiffRateConfig, SearchConfig, ToMeConfig}
    with pytest.raises(BadInputError, match="no method for int"):
        REGISTRY.handler(3)
    assert api.ENTRY_POINT is token_rate.patch and api.UNDO is token_rate.unpatch


@pytest.mark.parametrize("method", ["tome", "diffrate"])
def test_entry_returns_same_model_and_undo_restores_exactly(method):
    model, config = api.example(method)
    x = torch.randn(2, 3, 32, 32)
    original_classes = {name: type(m) for name, m in model.named_modules()}
    with torch.no_grad():
        ref = model(x)
    assert api.patch(model, config) is model
    assert isinstance(model._token_rate, TokenRateContext)
    with torch.no_grad():
        assert model(x).shape == ref.shape
    assert token_rate.last_token_counts(model) == {"tome": [13, 9, 5], "diffrate": [15, 12, 8]}[method]
    assert api.unpatch(model) is model
    assert {name: type(m) for name, m in model.named_modules()} == original_classes
    assert not any(type(m).__module__.startswith("token_rate") for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), ref)


def test_config_round_trip_through_slimkit_io():
    cfgs = [ToMeConfig(r=(8, 1)), ToMeConfig(r=[8, 1]), SearchConfig(init_schedule="deit_small@2.9"),
            DiffRateConfig(schedule=Schedule([9, 7], [8, 5], num_tokens=9), mode="weighted")]
    for cfg in cfgs:
        d = json.loads(json.dumps(cfg.to_dict()))
        assert token_rate.config_from_dict(d) == cfg
    assert ToMeConfig(r=(8, 1)).r == (8, 1.0)  # normalised, so it survives JSON as (r, inflection)
    assert token_rate.config_from_dict(ToMeConfig(r=[8, 1]).to_dict()).r == [8, 1]


# Literal dicts written by token-rate 0.1 (its hand-written to_dict), kept here so they always load.
V01_DICTS = [
    {"_type": "ToMeConfig", "_version": 1, "r": {"r": 8, "inflection": -1.0}, "prop_attn": True,
     "trace_source": False},
    {"_type": "ToMeConfig", "_version": 1, "r": [3, 2, 1], "prop_attn": True, "trace_source": False},
    {"_type": "DiffRateConfig", "_version": 1, "schedule": "deit_small@2.9", "mode": "official", "prop_attn": True,
     "size_clamp_in_train": True, "trace_source": False},
    {"_type": "DiffRateConfig", "_version": 1,
     "schedule": {"_type": "Schedule", "_version": 1, "prune": [9, 7], "merge": [8, 5], "num_tokens": 9,
                  "num_prefix_tokens": 1, "name": None, "target_gmacs": None, "meta": {}},
     "mode": "weighted", "prop_attn": True, "size_clamp_in_train": True, "trace_source": True},
    {"_type": "SearchConfig", "_version": 1, "granularity": 2, "mode": "official", "prop_attn": True,
     "size_clamp_in_train": True, "trace_source": False, "freeze_backbone": True, "fix_last_block": None,
     "init_schedule": None},
]


def test_v01_config_dicts_still_load():
    tome, tome_list, dr_name, dr_sched, search = (token_rate.config_from_dict(d) for d in V01_DICTS)
    assert tome == ToMeConfig(r=(8, -1.0))
    assert tome_list == ToMeConfig(r=[3, 2, 1])
    assert dr_name == DiffRateConfig(schedule="deit_small@2.9")
    assert dr_sched.schedule == Schedule([9, 7], [8, 5], num_tokens=9) and dr_sched.trace_source
    assert search == SearchConfig(granularity=2)
    model, _ = api.example()
    assert token_rate.patch(model, V01_DICTS[0]) is model  # patch() takes the dicts too
    assert token_rate.get_context(model).method == "tome"


def test_config_fields_of_the_wrong_type_are_one_line_errors():
    with pytest.raises(BadInputError, match=r"ToMeConfig\.r must be"):
        token_rate.config_from_dict({"_type": "ToMeConfig", "r": "eight"})
    with pytest.raises(BadInputError, match=r"SearchConfig\.granularity must be int"):
        token_rate.config_from_dict({"_type": "SearchConfig", "granularity": "4"})
    with pytest.raises(BadInputError, match="expected"):
        token_rate.config_from_dict({"_type": "NMConfig"})


def test_search_proxies_live_on_the_model_device():
    from token_rate.diffrate import _device

    assert _device(torch.nn.Linear(2, 2).to("meta")) == torch.device("meta")
    assert _device(torch.nn.Identity()) == torch.device("cpu")  # no parameters: CPU
