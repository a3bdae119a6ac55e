"""deploy(), check() and the semi-structured export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import nm_sparse
from nm_sparse import NMConfig
from nm_sparse.semi_structured import semi_structured_problem
from slimkit.errors import BadInputError
from slimkit.io import load_state_dict, save_state_dict


def _train_step(model: nn.Module, x: torch.Tensor) -> None:
    model.train()
    model(x).square().mean().backward()
    nm_sparse.step(model)
    model.eval()


@pytest.mark.parametrize("method", ["srste", "asp", "bimask", "transposable", "unstructured"])
def test_deploy_matches_eval_model(make_resnet: Any, random_bn: Any, method: str) -> None:
    model = make_resnet(width=8)
    nm_sparse.sparsify(model, NMConfig(method=method))
    random_bn(model)
    x = torch.randn(2, 3, 10, 10)
    _train_step(model, x)
    with torch.no_grad():
        expected = model(x)
    report = nm_sparse.deploy(model)
    with torch.no_grad():
        got = model(x)
    assert float((got - expected).abs().max()) <= 1e-4
    assert len(report.layers) == 5 and len(report.folded_bn) == 6  # every conv->BN pair folded
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in model.modules())
    by_name = report.check.by_name()
    assert set(by_name) == {layer["name"] for layer in report.layers}
    assert all(layer.source == "deployed" for layer in by_name.values())
    assert report.check.all_valid == (method != "unstructured")
    json.loads(report.to_json())


def test_deploy_without_bn_folding(tiny_resnet: nn.Module) -> None:
    nm_sparse.sparsify(tiny_resnet, NMConfig())
    report = nm_sparse.deploy(tiny_resnet, fold_bn=False)
    assert report.folded_bn == {} and isinstance(tiny_resnet.layer1.bn1, nn.BatchNorm2d)
    assert report.check.all_valid


def test_check_counts_violations_exactly() -> None:
    lin = nn.Linear(8, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2, 0, 0, 1, 1, 1, 0], [0, 0, 0, 3, 0, 0, 0, 0]]))
    model = nn.Sequential(lin)
    report = nm_sparse.check(model, "2:4")
    layer = report.layers[0]
    assert (layer.groups, layer.violating_groups, layer.max_nonzeros_per_group, layer.nonzeros) == (4, 1, 3, 6)
    assert not layer.valid and layer.sparsity == pytest.approx(10 / 16)
    assert nm_sparse.check(model, "3:4").all_valid
    assert nm_sparse.check(model).layers == []  # no pattern known for a plain layer
    odd = nm_sparse.check(nn.Sequential(nn.Linear(6, 2)), "2:4").layers[0]
    assert not odd.valid and "not divisible" in odd.reason


def test_check_wrapped_model_reports_each_layer(tiny_resnet: nn.Module) -> None:
    nm_sparse.sparsify(tiny_resnet, NMConfig(method="bimask", pattern="1:4"))
    report = nm_sparse.check(tiny_resnet)
    assert len(report.layers) == 5 and report.all_valid
    assert all(layer.source == "wrapper" and layer.pattern == "1:4" for layer in report.layers)
    assert report.sparsity == pytest.approx(0.75, abs=1e-6)
    json.loads(report.to_json())


def test_sparsified_state_roundtrip(make_resnet: Any, tmp_path: Path) -> None:
    model = make_resnet()
    nm_sparse.sparsify(model, NMConfig(method="bimask"))
    path = tmp_path / "model.safetensors"
    save_state_dict(path, model.state_dict(), {"config": "bimask"})
    torch.manual_seed(123)
    other = make_resnet()
    nm_sparse.sparsify(other, NMConfig(method="bimask", seed=5))
    tensors, meta = load_state_dict(path)
    other.load_state_dict(tensors)
    assert meta == {"config": "bimask"}
    x = torch.randn(2, 3, 8, 8)
    model.eval()
    other.eval()
    assert torch.equal(model(x), other(x))
    assert torch.equal(model.layer1.conv1.perm, other.layer1.conv1.perm)


def test_semi_structured_fails_clearly_on_cpu() -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32))
    nm_sparse.sparsify(model, NMConfig(keep_last_dense=False))
    nm_sparse.deploy(model)
    with pytest.raises(BadInputError, match="need CUDA tensors"):
        nm_sparse.to_semi_structured(model)


def test_semi_structured_limits() -> None:
    limits = {torch.float16: (16, 16), torch.float32: (32, 32)}
    w = torch.zeros(32, 64, dtype=torch.float16)
    w[:, 0::4] = 1
    assert semi_structured_problem(w, limits) is None
    assert "dtype" in str(semi_structured_problem(w.to(torch.bfloat16), limits))
    assert "multiples of 16x16" in str(semi_structured_problem(w[:24], limits))
    dense = torch.ones(32, 64, dtype=torch.float16)
    assert "not 2:4" in str(semi_structured_problem(dense, limits))


@pytest.mark.gpu
def test_semi_structured_on_gpu() -> None:
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("needs sm80+")
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64)).cuda().half()
    nm_sparse.sparsify(model, NMConfig(keep_last_dense=False))
    nm_sparse.deploy(model)
    x = torch.randn(64, 128, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        expected = model(x)
    report = nm_sparse.to_semi_structured(model)
    assert report.converted == ["0", "2"]
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
