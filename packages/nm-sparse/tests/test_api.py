"""nm_sparse.api: the entry point ``sparsify_`` and its undo ``unsparsify``, the registry dispatch, ``example()``."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import nm_sparse
from nm_sparse import api
from nm_sparse.config import METHOD_CONFIGS, METHODS, NMConfig, SRSTEConfig
from nm_sparse.layers import NMLayer
from nm_sparse.sparsify import nm_layers
from slimkit.errors import BadInputError

#: The version pyproject.toml declares: ``__version__`` (from the installed metadata) must match it.
_PYPROJECT_VERSION = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"]


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def test_contract_names() -> None:
    assert api.ENTRY_POINT is api.sparsify_ is nm_sparse.sparsify_
    assert api.UNDO is api.unsparsify is nm_sparse.unsparsify
    assert nm_sparse.__version__ == _PYPROJECT_VERSION
    assert len(nm_sparse.__all__) <= 16
    for name in (
        "__version__",
        "sparsify_",
        "unsparsify",
        "NMConfig",
        "sparsify",
        "deploy",
        "check",
        "NMSparseCallback",
    ):
        assert name in nm_sparse.__all__
    for cls in api.REGISTRY.config_types:
        assert cls.__name__ in nm_sparse.__all__
    # 0.1 names stay attributes of the package
    for name in (
        "SRSTELayer",
        "unwrap",
        "step",
        "nm_layers",
        "find_conv_bn_pairs",
        "fold_batchnorm",
        "nm_mask",
        "MAX_M",
    ):
        assert hasattr(nm_sparse, name)


def test_example_is_small_and_random() -> None:
    model, config = api.example()
    assert isinstance(config, SRSTEConfig)
    assert _outputs(model, torch.randn(2, 3, 8, 8)).shape == (2, 10)
    again, _ = api.example()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("method", METHODS)
def test_sparsify_in_place_returns_model_and_unsparsify_restores_exactly(
    method: str, make_resnet: Any, random_bn: Any
) -> None:
    model = make_resnet()
    random_bn(model)
    x = torch.randn(2, 3, 8, 8)
    before = _outputs(model, x)
    modules = dict(model.named_modules())
    original = {n: m.weight.detach().clone() for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))}
    config = METHOD_CONFIGS[method](pattern="2:4")
    assert nm_sparse.sparsify_(model, config) is model
    if method != "dense":
        assert nm_layers(model)
    fixed = {name: layer.forward_mask().clone() for name, layer in nm_layers(model) if method in ("asp", "unstructured")}
    assert nm_sparse.unsparsify(model) is model
    assert not any(isinstance(m, NMLayer) for m in model.modules())
    assert dict(model.named_modules()).keys() == modules.keys()
    assert all(model.get_submodule(n) is m for n, m in modules.items() if n)  # the very same modules, BNs included
    if method in ("asp", "unstructured"):  # they prune in place (ASP recipe): undo keeps the pruned zeros
        assert fixed and all(torch.equal(model.get_submodule(n).weight, original[n] * fixed[n]) for n in fixed)
    else:  # dense and the dynamic masks never touch the weights
        assert torch.equal(_outputs(model, x), before)


def test_flat_and_per_method_configs_give_identical_models(make_resnet: Any, random_bn: Any) -> None:
    x = torch.randn(2, 3, 8, 8)
    for method in METHODS:
        results = []
        for config in (
            NMConfig(method=method, pattern="2:4", seed=1),
            NMConfig(method=method, pattern="2:4", seed=1).to_method_config(),
        ):
            torch.manual_seed(0)
            model = make_resnet()
            random_bn(model)
            report = nm_sparse.sparsify(model, config)
            masks = [layer.forward_mask() for _, layer in nm_layers(model)]
            results.append((report.to_dict(), masks, _outputs(model, x)))
        (r0, m0, y0), (r1, m1, y1) = results
        assert r0 == r1, method
        assert all(torch.equal(a, b) for a, b in zip(m0, m1, strict=True)), method
        assert torch.equal(y0, y1), method


def test_unknown_config_type_is_refused() -> None:
    class Other:
        pass

    with pytest.raises(BadInputError, match="no method for Other"):
        api.sparsify(nn.Linear(4, 4), Other())  # type: ignore[arg-type]


def test_unsparsify_after_copy_keeps_original_intact(make_resnet: Any) -> None:
    model = make_resnet()
    sparse = nm_sparse.sparsify_(copy.deepcopy(model), SRSTEConfig())
    assert nm_layers(sparse) and not nm_layers(model)
    nm_sparse.unsparsify(sparse)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), sparse.state_dict().values()))
