"""SpRe: branch masks, gradients, conv->BN pairing, spatial-mask refresh, deploy equivalence."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import nm_sparse
from nm_sparse import NMConfig, SpReConv, masks
from nm_sparse.pattern import NMPattern


def _spre(cin: int = 8, cout: int = 8, k: int = 3, **kw: Any) -> SpReConv:
    return SpReConv(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), NMPattern(2, 4), **kw)


def test_forward_is_sum_of_two_masked_branches() -> None:
    layer = _spre()
    x = torch.randn(2, 8, 6, 6)
    out = layer(x)
    w_a, w_b = layer.base_layer.weight.detach(), layer.branch.weight.detach()
    m_a = masks.weight_nm_mask(w_a, 2, 4, "cin")
    s = masks.spatial_mask_reference(w_a, 2, 4)
    bn_a, bn_b = nn.BatchNorm2d(8), nn.BatchNorm2d(8)  # fresh train-mode BNs = same statistics
    expected = bn_a(F.conv2d(x, w_a * m_a, padding=1)) + bn_b(F.conv2d(x, w_b * m_a * s, padding=1))
    torch.testing.assert_close(out, expected)
    assert torch.equal(layer.spatial_mask, s)
    assert 0 < float(s.sum()) < 9  # some positions on, some off for random weights


def test_gradients_main_ste_branch_masked() -> None:
    layer = _spre(decay=0.05)
    layer(torch.randn(2, 8, 6, 6)).square().sum().backward()
    g_a, g_b = layer.base_layer.weight.grad, layer.branch.weight.grad
    assert g_a is not None and g_b is not None
    m_a = layer.forward_mask()
    branch_off = layer.branch_mask() == 0
    assert bool((g_b[branch_off] == 0).all())  # no STE for the extra branch
    assert bool((g_b[~branch_off] != 0).any())
    assert bool((g_a[~m_a] != 0).all())  # SR-STE: pruned main weights still get gradient + decay


def test_branch_gamma_zero_starts_from_main_branch() -> None:
    layer = _spre(branch_gamma=0.0)
    x = torch.randn(2, 8, 5, 5)
    w_a = layer.base_layer.weight.detach()
    main = nn.BatchNorm2d(8)(F.conv2d(x, w_a * masks.weight_nm_mask(w_a, 2, 4), padding=1))
    torch.testing.assert_close(layer(x), main)


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4)])
def test_deploy_matches_eval_and_keeps_nm(make_resnet: Any, random_bn: Any, kernel: int, n: int, m: int) -> None:
    model = make_resnet(width=8, kernel=kernel)
    report = nm_sparse.sparsify(model, NMConfig(method="spre", pattern=f"{n}:{m}"))
    spre_layers = [layer for layer in report.layers if layer.method == "spre"]
    assert {layer.name for layer in spre_layers} == {"layer1.conv1", "layer1.conv2", "layer2.conv1", "layer2.conv2"}
    assert {layer.bn for layer in spre_layers} == {"layer1.bn1", "layer1.bn2", "layer2.bn1", "layer2.bn2"}
    assert isinstance(model.layer1.bn1, nn.Identity)
    random_bn(model)
    x = torch.randn(2, 3, 12, 12)
    model.train()
    model(x).sum().backward()  # one training step's forward/backward, as in real use
    nm_sparse.step(model)
    model.eval()
    main_masks = {name: mod.forward_mask().clone() for name, mod in nm_sparse.nm_layers(model)}
    with torch.no_grad():
        expected = model(x)
    deployed = nm_sparse.deploy(model)
    assert not nm_sparse.nm_layers(model)
    assert all(type(mod) in (nn.Conv2d, nn.Linear) for mod in model.modules() if isinstance(mod, (nn.Conv2d, nn.Linear)))
    with torch.no_grad():
        got = model(x)
    assert float((got - expected).abs().max()) <= 1e-4
    assert deployed.check.all_valid
    for name, mask in main_masks.items():
        weight = model.get_submodule(name).weight
        assert bool((weight[~mask] == 0).all())  # deployed support inside the main N:M mask
        counts = masks.to_gemm_matrix(weight != 0, "cin").reshape(weight.shape[0], -1, m).sum(-1)
        assert int(counts.max()) <= n
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in model.modules())  # all BNs folded


class _OddOrder(nn.Module):
    """BatchNorm registered before its conv, with unrelated names: order/name pairing fails."""

    def __init__(self) -> None:
        super().__init__()
        self.norm_a = nn.BatchNorm2d(8)
        self.stem = nn.Conv2d(4, 8, 1)
        self.mixer = nn.Conv2d(8, 8, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.norm_a(self.mixer(self.stem(x))))


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(4, 8, 1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        if float(x.mean()) > 100:  # data-dependent control flow: torch.fx cannot trace this
            x = -x
        return self.bn2(self.conv2(x))


def test_pairing_by_fx_ignores_registration_order() -> None:
    pairs, how = nm_sparse.find_conv_bn_pairs(_OddOrder())
    assert how == "fx" and pairs == {"mixer": "norm_a"}
    pairs, _ = nm_sparse.find_conv_bn_pairs(_OddOrder(), "names")
    assert pairs == {}


def test_pairing_falls_back_to_names() -> None:
    pairs, how = nm_sparse.find_conv_bn_pairs(_Untraceable())
    assert how == "names" and pairs == {"conv2": "bn2"}
    with pytest.raises(nm_sparse.masks.BadInputError):
        nm_sparse.find_conv_bn_pairs(_Untraceable(), "fx")
    model = _Untraceable()
    report = nm_sparse.sparsify(model, NMConfig(method="spre", keep_first_dense=False))
    assert report.bn_pairing == "names"
    assert isinstance(model.conv2, SpReConv) and isinstance(model.bn2, nn.Identity)


def test_user_bn_map_and_missing_bn() -> None:
    model = _OddOrder()
    report = nm_sparse.sparsify(model, NMConfig(method="spre", keep_first_dense=False, spre_bn_map={"mixer": "norm_a"}))
    assert report.bn_pairing == "user" and isinstance(model.mixer, SpReConv)
    bad = _OddOrder()
    with pytest.raises(nm_sparse.masks.BadInputError):
        nm_sparse.sparsify(bad, NMConfig(method="spre", keep_first_dense=False, spre_bn_map={"mixer": "stem"}))
    assert not nm_sparse.nm_layers(bad)  # nothing half-done

    class NoBN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(4, 8, 3)
            self.b = nn.Conv2d(8, 8, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(self.a(x))

    plain = NoBN()
    rep = nm_sparse.sparsify(plain, NMConfig(method="spre"))
    assert rep.layers[0].method == "srste" and "no BatchNorm" in rep.layers[0].note


def test_callback_refreshes_spatial_mask() -> None:
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
    nm_sparse.sparsify(model, NMConfig(method="spre", keep_first_dense=False))
    layer = model[0]
    assert isinstance(layer, SpReConv) and isinstance(model[1], nn.Identity)
    with torch.no_grad():  # make only the centre tap large: S becomes the centre only
        layer.base_layer.weight.mul_(0.01)
        layer.base_layer.weight[:, :, 1, 1] = 1.0 + torch.rand(8, 8)
        layer.base_layer.weight[:, :, 0, 0] = 0.5 + torch.rand(8, 8)
    before = layer.spatial_mask.clone()
    callback = nm_sparse.NMSparseCallback()
    callback.on_step_end(SimpleNamespace(model=model, step=1))
    expected = masks.spatial_mask_reference(layer.base_layer.weight, 2, 4)
    assert torch.equal(layer.spatial_mask, expected) and not torch.equal(before, expected)
    assert callback.state_dict() == {"steps": 1}


def test_unwrap_restores_original_modules(tiny_resnet: nn.Module) -> None:
    conv, bn = tiny_resnet.layer1.conv1, tiny_resnet.layer1.bn1
    nm_sparse.sparsify(tiny_resnet, NMConfig(method="spre"))
    assert nm_sparse.unwrap(tiny_resnet) == 5
    assert tiny_resnet.layer1.conv1 is conv and tiny_resnet.layer1.bn1 is bn
    assert not nm_sparse.nm_layers(tiny_resnet)


def test_forward_refresh_mode_and_train_start() -> None:
    layer = _spre(refresh="forward")
    x = torch.randn(1, 8, 4, 4)

    def set_centre_heavy() -> None:
        with torch.no_grad():
            layer.base_layer.weight.mul_(0.01)
            layer.base_layer.weight[:, :, 1, 1] = 1.0

    set_centre_heavy()
    expected = masks.spatial_mask_reference(layer.base_layer.weight, 2, 4)
    layer.eval()
    layer(x)
    assert not torch.equal(layer.spatial_mask, expected)  # eval forward keeps the cached mask
    layer.train()
    layer(x)
    assert torch.equal(layer.spatial_mask, expected)  # training forward refreshed it
    model = nn.Sequential(_spre())
    with torch.no_grad():
        model[0].base_layer.weight.mul_(0.01)
        model[0].base_layer.weight[:, :, 0, 0] = 1.0
    nm_sparse.NMSparseCallback(model).on_train_start(SimpleNamespace())
    assert torch.equal(model[0].spatial_mask, masks.spatial_mask_reference(model[0].base_layer.weight, 2, 4))
