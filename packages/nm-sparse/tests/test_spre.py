"""SpRe: branch masks, gradients, conv->BN pairing, spatial-mask refresh, deploy equivalence."""

from __future__ import annotations

import copy
import os
from fractions import Fraction
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import nm_sparse
from nm_sparse import NMConfig, SpReConv, masks
from nm_sparse.config import SpReConfig
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
    assert s.tolist() == _spatial_mask_by_definition(w_a, 2, 4)
    assert 0 < float(s.sum()) < 9  # the draw is a useful one: some positions on, some off


def test_gradients_main_ste_branch_masked() -> None:
    layer = _spre(decay=0.05)
    x = torch.randn(2, 8, 6, 6)
    layer(x).square().sum().backward()
    w_a, w_b = layer.base_layer.weight.detach(), layer.branch.weight.detach()
    m_a, branch = layer.forward_mask(), layer.branch_mask()
    # plain autograd with respect to the two masked kernels (fresh train-mode BNs = the same statistics)
    wt_a = (w_a * m_a).requires_grad_(True)
    wt_b = (w_b * branch).requires_grad_(True)
    out = nn.BatchNorm2d(8)(F.conv2d(x, wt_a, padding=1)) + nn.BatchNorm2d(8)(F.conv2d(x, wt_b, padding=1))
    out.square().sum().backward()
    assert wt_a.grad is not None and wt_b.grad is not None
    # main: SR-STE, the masked kernel's gradient reaches every weight, plus decay on the pruned ones
    expected_a = wt_a.grad + 0.05 * (~m_a).float() * w_a
    torch.testing.assert_close(layer.base_layer.weight.grad, expected_a, rtol=1e-4, atol=1e-4)
    # extra branch: no STE, its gradient is exactly zero wherever M_a * S is off
    torch.testing.assert_close(layer.branch.weight.grad, wt_b.grad * branch, rtol=1e-4, atol=1e-4)
    assert 0 < float(branch.mean()) < 0.5  # M_a * S really masks: half of M_a or less


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
    assert layer.spatial_mask.tolist() == _spatial_mask_by_definition(layer.base_layer.weight.detach(), 2, 4)
    with torch.no_grad():  # make the centre and one corner large: S becomes exactly those two
        layer.base_layer.weight.mul_(0.01)
        layer.base_layer.weight[:, :, 1, 1] = 1.0 + torch.rand(8, 8)
        layer.base_layer.weight[:, :, 0, 0] = 0.5 + torch.rand(8, 8)
    expected = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    assert _spatial_mask_by_definition(layer.base_layer.weight.detach(), 2, 4) == expected
    assert layer.spatial_mask.tolist() != expected  # not refreshed yet
    callback = nm_sparse.NMSparseCallback()
    callback.on_step_end(SimpleNamespace(model=model, step=1))
    assert layer.spatial_mask.tolist() == expected
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

    before = layer.spatial_mask.clone()
    set_centre_heavy()
    expected = _spatial_mask_by_definition(layer.base_layer.weight.detach(), 2, 4)
    assert expected != before.tolist()
    layer.eval()
    layer(x)
    assert torch.equal(layer.spatial_mask, before)  # eval forward keeps the cached mask
    layer.train()
    with torch.no_grad():
        layer(x)
    assert torch.equal(layer.spatial_mask, before)  # so does a training-mode forward without gradients
    layer(x)
    assert layer.spatial_mask.tolist() == expected  # a training forward refreshed it
    model = nn.Sequential(_spre())
    with torch.no_grad():
        model[0].base_layer.weight.mul_(0.01)
        model[0].base_layer.weight[:, :, 0, 0] = 1.0
    nm_sparse.NMSparseCallback(model).on_train_start(SimpleNamespace())
    assert model[0].spatial_mask.tolist() == _spatial_mask_by_definition(model[0].base_layer.weight.detach(), 2, 4)


# --------------------------------------------------------------------------- exact ties in the spatial mask


def _spatial_mask_by_definition(weight: Tensor, n: int, m: int) -> list[list[float]]:
    """S in plain Python: keep the n/m largest |w| of the layer (equal |w|: lower flat index first),
    then S(h, w) = 1 iff that position's pruned fraction is below p = 1 - n/m (exact fractions)."""
    out_c, in_c, kh, kw = weight.shape
    flat = weight.abs().flatten().tolist()
    assert len(flat) * n % m == 0
    order = sorted(range(len(flat)), key=lambda i: (-flat[i], i))
    kept = set(order[: len(flat) * n // m])
    p = 1 - Fraction(n, m)
    rows = []
    for h in range(kh):
        row = []
        for w in range(kw):
            count = sum(((o * in_c + i) * kh + h) * kw + w in kept for o in range(out_c) for i in range(in_c))
            row.append(1.0 if Fraction(out_c * in_c - count, out_c * in_c) < p else 0.0)
        rows.append(row)
    return rows


def _tied_threshold_weight(low_pairs_at: tuple[int, int]) -> Tensor:
    """[4, 4, 3, 3] for 1:4 (keep 36 of 144): 28 clear winners, then 16 entries tied at |w| = 1
    for the last 8 places: pairs (out*4 + in) 0-7 tie at ``low_pairs_at``, pairs 8-15 at the
    mirrored corner. Lower flat index first means pairs 0-7 win all 8 places."""
    w = torch.full((16, 3, 3), 0.01)
    w[:, 1, 1] = 3.0  # centre: all 16 kept
    w[:12, 0, 2] = 2.0  # top-right: 12 kept
    high = (2 - low_pairs_at[0], 2 - low_pairs_at[1])
    w[:8, low_pairs_at[0], low_pairs_at[1]] = 1.0
    w[8:, high[0], high[1]] = 1.0
    signs = torch.where(torch.arange(16 * 9).reshape(16, 3, 3) % 5 == 0, -1.0, 1.0)
    return (w * signs).reshape(4, 4, 3, 3)


@pytest.mark.parametrize(
    ("low", "expected"),
    [
        ((0, 0), [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]),
        ((2, 2), [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
    ],
)
def test_spatial_mask_ties_at_threshold_go_to_lower_flat_index(low: tuple[int, int], expected: list) -> None:
    """Item 6: ties for the last kept places are filled in flat index order, lowest first."""
    w = _tied_threshold_weight(low)
    assert _spatial_mask_by_definition(w, 1, 4) == expected
    assert masks.spatial_mask_reference(w, 1, 4).tolist() == expected
    kept = masks.unstructured_mask(w, 0.25)
    assert int(kept.sum()) == 36  # the count is exact, ties included
    assert torch.equal(kept.reshape(16, 9)[:8, low[0] * 3 + low[1]], torch.ones(8, dtype=torch.bool))


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (2, 8), (3, 5), (1, 3), (2, 3), (3, 7)])
def test_spatial_mask_position_exactly_at_p_is_off(n: int, m: int) -> None:
    """Item 6: S(h, w) = [s(h, w) < p] is strict and exact for every pattern.

    Each position has 2m (out, in) pairs; position 0 keeps 2n+1, position 1 keeps 2n-1 and the
    rest exactly 2n, i.e. sparsity exactly p (a float comparison switched those on for m = 3, 5, 7).
    """
    counts = [2 * n + 1, 2 * n - 1] + [2 * n] * 7
    pairs = 2 * m
    w = torch.empty(pairs, 9)
    for pos, count in enumerate(counts):  # distinct magnitudes: no threshold ties here
        for pair in range(pairs):
            w[pair, pos] = (10.0 if pair < count else 0.0) + 0.001 * (pair * 9 + pos + 1)
    w = w.reshape(2, m, 3, 3)
    expected = [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert _spatial_mask_by_definition(w, n, m) == expected
    assert masks.spatial_mask_reference(w, n, m).tolist() == expected


def _tied_groups_weight() -> Tensor:
    """[4, 8, 3, 3]: every group of 4 input channels is one of four tie patterns, scaled per
    position (centre 4, cross 2, corners 1) so that S is the centre and the cross."""
    patterns = [[1.0, 1.0, 1.0, 1.0], [0.5, 1.0, 1.0, 1.0], [1.0, 0.5, 1.0, 0.5], [1.0, 1.0, 0.5, 2.0]]
    scale = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])
    w = torch.empty(4, 8, 3, 3)
    for o in range(4):
        for g in range(2):
            w[o, 4 * g : 4 * g + 4] = torch.tensor(patterns[(o + g) % 4])[:, None, None] * scale
    return w * torch.where(torch.arange(8) % 2 == 0, 1.0, -1.0)[None, :, None, None]


def _nm_mask_by_hand(weight: Tensor, n: int, m: int) -> Tensor:
    """N:M along the input channels at each (out, h, w): n largest |w|, equal ones to the lower channel."""
    out = torch.zeros(weight.shape, dtype=torch.bool)
    out_c, in_c, kh, kw = weight.shape
    for o in range(out_c):
        for h in range(kh):
            for x in range(kw):
                for g in range(in_c // m):
                    chans = range(g * m, (g + 1) * m)
                    for i in sorted(chans, key=lambda i: (-abs(float(weight[o, i, h, x])), i))[:n]:
                        out[o, i, h, x] = True
    return out


@pytest.mark.parametrize("path", ["reference", pytest.param("triton", marks=pytest.mark.interpret)])
def test_spre_branch_mask_with_tied_groups(path: str) -> None:
    """Item 6: M_a on tied groups keeps exactly n, the lower channels first; the branch is M_a * S.

    ``triton`` runs the N:M mask through the Triton kernel (TRITON_INTERPRET=1 on CPU tensors).
    """
    w = _tied_groups_weight()
    expected_main = _nm_mask_by_hand(w, 2, 4)
    # the tie patterns [1,1,1,1] / [.5,1,1,1] / [1,.5,1,.5] / [1,1,.5,2] keep channels 0,1 / 1,2 / 0,2 / 3,0
    assert expected_main[0, :4, 1, 1].tolist() == [True, True, False, False]
    assert expected_main[1, :4, 1, 1].tolist() == [False, True, True, False]
    assert expected_main[2, :4, 1, 1].tolist() == [True, False, True, False]
    assert expected_main[3, :4, 1, 1].tolist() == [True, False, False, True]
    expected_s = _spatial_mask_by_definition(w, 2, 4)
    assert expected_s == [[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]]
    layer = _spre(cin=8, cout=4)
    with torch.no_grad():
        layer.base_layer.weight.copy_(w)
    layer.refresh_spatial_mask()
    assert layer.spatial_mask.tolist() == expected_s
    if path == "triton":
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("needs TRITON_INTERPRET=1")
        pytest.importorskip("triton")
        from nm_sparse.kernels import nm_mask_triton

        main = masks.from_gemm_matrix(nm_mask_triton(masks.to_gemm_matrix(w, "cin"), 2, 4), w.shape, "cin")
    else:
        main = layer.forward_mask()
    assert torch.equal(main, expected_main)
    assert torch.equal(masks.to_gemm_matrix(main, "cin").reshape(4, -1, 4).sum(-1), torch.full((4, 18), 2))
    branch = layer.branch_mask(main)
    assert torch.equal(branch, expected_main.float() * torch.tensor(expected_s))
    assert int(branch.sum()) == 4 * 2 * 2 * 5  # 4 out x 2 groups x 2 kept x 5 active positions


# --------------------------------------------------------------------------- second round: defaults, layout, errors


def test_layer_defaults_kaiming_branch_step_refresh_and_no_displaced_bn() -> None:
    conv, bn = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
    torch.manual_seed(5)
    layer = SpReConv(copy.deepcopy(conv), copy.deepcopy(bn), NMPattern(2, 4))
    torch.manual_seed(5)
    explicit = SpReConv(
        copy.deepcopy(conv), copy.deepcopy(bn), NMPattern(2, 4), "cin", 2e-4, branch_init="kaiming", refresh="step"
    )
    assert layer.extra_repr() == "method=spre, pattern=2:4, layout=cin, decay=0.0002"
    assert layer.refresh_mode == "step"
    # the extra branch is re-initialised (kaiming), not a copy of the main weights
    assert torch.equal(layer.branch.weight, explicit.branch.weight)
    assert not torch.equal(layer.branch.weight, conv.weight)
    assert layer.displaced() == {}  # built by hand: it took no BatchNorm out of a model


def test_flat_layout_and_conv_bias_in_the_main_branch() -> None:
    base = nn.Conv2d(4, 4, 3, padding=1, bias=True)
    layer = SpReConv(base, nn.BatchNorm2d(4), NMPattern(2, 4), layout="flat").eval()
    w = base.weight.detach()
    m_flat = masks.weight_nm_mask(w, 2, 4, "flat")
    assert not torch.equal(m_flat, masks.weight_nm_mask(w, 2, 4, "cin"))  # the layouts differ here
    assert torch.equal(layer.forward_mask(), m_flat)
    x = torch.randn(2, 4, 5, 5)
    s = layer.spatial_mask
    main = layer.base_bn(F.conv2d(x, w * m_flat, base.bias, padding=1))
    extra = layer.branch_bn(F.conv2d(x, layer.branch.weight.detach() * m_flat * s, None, padding=1))
    torch.testing.assert_close(layer(x), main + extra)


def test_branch_mask_of_a_given_main_mask() -> None:
    layer = _spre()
    given = torch.zeros(8, 8, 3, 3, dtype=torch.bool)
    given[0] = True  # not the layer's own N:M mask
    assert torch.equal(layer.branch_mask(given), given.float() * layer.spatial_mask)
    assert torch.equal(layer.branch_mask(), layer.forward_mask().float() * layer.spatial_mask)


def test_min_kernel_is_inclusive() -> None:
    model = nn.Sequential(
        nn.Conv2d(8, 8, 2, bias=False), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8)
    )
    report = nm_sparse.sparsify(model, SpReConfig(keep_first_dense=False))  # min_kernel=2: any k x k with k > 1
    assert isinstance(model[0], SpReConv) and isinstance(model[1], nn.Identity)
    assert not isinstance(model[2], SpReConv) and isinstance(model[3], nn.BatchNorm2d)  # 1x1: SR-STE, BN stays
    assert [(layer.name, layer.method, layer.note) for layer in report.layers] == [
        ("0", "spre", ""),
        ("2", "srste", ""),
    ]


class _TwoConvBN(nn.Module):
    def __init__(self, track: bool = True) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(8, track_running_stats=track)
        self.b = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(8)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn_b(self.b(self.bn_a(self.a(x))))


@pytest.mark.parametrize(
    ("track", "bn_map", "expected"),
    [
        (True, {"a": "b"}, "'b' (paired with a) is not a BatchNorm2d over its output channels"),
        (True, {"a": "bn_a", "b": "bn_a"}, "BatchNorm 'bn_a' is paired with more than one conv"),
        (False, None, "'bn_a' does not track running statistics, so SpRe cannot fold it"),
    ],
)
def test_bad_bn_pairing_errors(track: bool, bn_map: dict[str, str] | None, expected: str) -> None:
    model = _TwoConvBN(track)
    with pytest.raises(nm_sparse.masks.BadInputError) as err:
        nm_sparse.sparsify(model, SpReConfig(keep_first_dense=False, bn_map=bn_map))
    assert str(err.value) == expected
    assert not nm_sparse.nm_layers(model)  # nothing half-done


@pytest.mark.parametrize(
    ("conv", "bn", "expected"),
    [
        (nn.Conv1d(8, 8, 3), nn.BatchNorm2d(8), "SpRe wraps Conv2d layers"),
        (nn.Conv2d(8, 8, 3), nn.BatchNorm2d(4), "SpRe needs a BatchNorm2d over the conv's output channels"),
        (nn.Conv2d(8, 8, 3), nn.BatchNorm1d(8), "SpRe needs a BatchNorm2d over the conv's output channels"),
        (
            nn.Conv2d(8, 8, 3),
            nn.BatchNorm2d(8, track_running_stats=False),
            "SpRe needs a BatchNorm that tracks running statistics (to fold it)",
        ),
    ],
)
def test_layer_refusals(conv: nn.Module, bn: nn.Module, expected: str) -> None:
    with pytest.raises(nm_sparse.masks.BadInputError) as err:
        SpReConv(conv, bn, NMPattern(2, 4))  # type: ignore[arg-type]
    assert str(err.value) == expected


def test_branch_init_modes_and_branch_bn_settings() -> None:
    conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)  # fan_in 36, fan_out 72: the kaiming mode matters
    bn = nn.BatchNorm2d(8, eps=1e-3, momentum=0.3)
    torch.manual_seed(7)
    layer = SpReConv(copy.deepcopy(conv), copy.deepcopy(bn), NMPattern(2, 4))
    torch.manual_seed(7)
    expected = torch.empty(8, 4, 3, 3)
    nn.init.kaiming_normal_(expected, mode="fan_out", nonlinearity="relu")  # the official code's init
    assert torch.equal(layer.branch.weight, expected)
    assert (layer.branch_bn.eps, layer.branch_bn.momentum) == (1e-3, 0.3)  # the main BatchNorm's settings
    zeros = SpReConv(copy.deepcopy(conv), copy.deepcopy(bn), NMPattern(2, 4), branch_init="zeros")
    assert not bool(zeros.branch.weight.any())
    copied = SpReConv(copy.deepcopy(conv), copy.deepcopy(bn), NMPattern(2, 4), branch_init="copy")
    assert torch.equal(copied.branch.weight, conv.weight)


def test_float64_layer_keeps_float64_state() -> None:
    conv = nn.Conv2d(4, 4, 3, padding=1, bias=False, dtype=torch.float64)
    layer = SpReConv(conv, nn.BatchNorm2d(4, dtype=torch.float64), NMPattern(2, 4))
    assert layer.spatial_mask.dtype == torch.float64
    assert {p.dtype for p in layer.branch_bn.parameters()} == {torch.float64}
    out = layer(torch.randn(2, 4, 5, 5, dtype=torch.float64))
    assert out.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_state_lives_on_the_weight_device() -> None:
    layer = SpReConv(nn.Conv2d(4, 4, 3, device="cuda"), nn.BatchNorm2d(4, device="cuda"), NMPattern(2, 4))
    assert {t.device.type for t in [*layer.parameters(), *layer.buffers()]} == {"cuda"}
