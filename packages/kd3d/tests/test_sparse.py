"""spconv 2.x on CPU: the backward fix, and sparse convolutions against a dense conv3d reference."""

from __future__ import annotations

import pytest
import spconv.pytorch as spconv
import torch
from spconv.pytorch import ops as spconv_ops

from kd3d.bench import dense_encoder_forward
from kd3d.detector import build_detector
from kd3d.ops import voxelize_mean
from kd3d.sparse import apply_cpu_backward_fix, apply_cpu_serial_fix, cpu_backward_fix_applied, dense_reference


def _sparse_input(seed: int = 0, shape: tuple[int, int, int] = (7, 8, 9), channels: int = 3, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    rows = []
    for b in range(batch):
        keep = torch.rand(len(grid), generator=g) < 0.25
        rows.append(torch.cat([torch.full((int(keep.sum()), 1), b), grid[keep]], 1))
    idx = torch.cat(rows).int()
    feats = torch.randn(len(idx), channels, generator=g, dtype=torch.float64).float().requires_grad_(True)
    return spconv.SparseConvTensor(feats, idx, list(shape), batch), feats


def test_fix_is_applied_on_import_and_idempotent() -> None:
    if torch.cuda.is_available():
        pytest.skip("the fix only applies without CUDA")
    assert cpu_backward_fix_applied()
    assert spconv_ops.get_current_stream() == 0
    assert apply_cpu_backward_fix() is True  # a second call changes nothing and still reports the fix


@pytest.mark.parametrize("kind", ["subm", "strided", "strided_anisotropic"])
def test_sparse_conv_matches_dense_conv3d_forward_and_gradients(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "subm":
        layer = spconv.SubMConv3d(3, 4, 3, padding=1, bias=True, indice_key="k")
    elif kind == "strided":
        layer = spconv.SparseConv3d(3, 4, 3, stride=2, padding=1, bias=False, indice_key="k")
    else:
        layer = spconv.SparseConv3d(3, 4, (3, 1, 1), stride=(2, 1, 1), padding=0, bias=False, indice_key="k")
    with torch.no_grad():
        if layer.bias is not None:
            layer.bias.uniform_(-1, 1)
    x, feats = _sparse_input()
    sparse_out = layer(x).dense()
    g = torch.Generator().manual_seed(1)
    upstream = torch.randn(sparse_out.shape, generator=g)
    (sparse_out * upstream).sum().backward()
    grad_feats, grad_w = feats.grad.clone(), layer.weight.grad.clone()
    feats.grad, layer.weight.grad = None, None

    dense_out = dense_reference(layer, x)
    assert dense_out.shape == sparse_out.shape
    torch.testing.assert_close(sparse_out, dense_out, atol=1e-5, rtol=1e-5)
    (dense_out * upstream).sum().backward()
    torch.testing.assert_close(grad_feats, feats.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grad_w, layer.weight.grad, atol=1e-4, rtol=1e-4)
    assert grad_feats.abs().sum() > 0 and grad_w.abs().sum() > 0


def test_whole_encoder_equals_its_dense_version(tiny_cfg) -> None:
    model = build_detector(tiny_cfg, seed=0)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():  # non-trivial eval-mode BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
    model.eval()
    x = model.example_input(800)
    feats, coords = voxelize_mean(x, tiny_cfg.point_range, tiny_cfg.voxel_size)
    with torch.no_grad():
        sparse = model.encoder(feats, coords, 2).dense()
        dense = dense_encoder_forward(model.encoder, feats, coords, 2)
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)
    assert sparse.abs().sum() > 0


def test_detector_trains_on_cpu(tiny_model) -> None:
    x = tiny_model.example_input(400)
    out = tiny_model(x)
    (out.heatmap.sum() + out.regression.sum()).backward()
    first = tiny_model.encoder.stages[0][0][0].weight
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_repeated_convs_with_two_threads_stay_exact() -> None:
    """spconv's CPU path races with several intra-op threads; the serial fix keeps every call exact."""
    assert apply_cpu_serial_fix()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        layer = spconv.SubMConv3d(3, 16, 3, padding=1, bias=False, indice_key="k")
        x, _ = _sparse_input(seed=2, shape=(9, 12, 12))
        with torch.no_grad():
            ref = dense_reference(layer, x)
            worst = max(float((layer(spconv.SparseConvTensor(x.features, x.indices, x.spatial_shape, 2)).dense() - ref)
                              .abs().max()) for _ in range(30))  # fmt: skip
        assert worst < 1e-5
        assert torch.get_num_threads() == 2  # the wrapper restores the caller's thread count
    finally:
        torch.set_num_threads(before)
