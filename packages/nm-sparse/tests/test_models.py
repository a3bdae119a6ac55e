"""Models, save/load round trips, the heatmap data, benchmark helpers and the quickstart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from nm_sparse import NMConfig, check, deploy, kernels, nm_layers, sparsify
from nm_sparse.bench import (
    BenchSizes,
    bimask_backward_stats,
    plain_permutation_scores,
    plain_topk_mask,
    run_benchmarks,
    spre_deploy_stats,
)
from nm_sparse.inspect_plot import kernel_position_sparsity, position_sparsity, save_heatmap
from nm_sparse.models import (
    STAGE_DEPLOYED,
    STAGE_TRAINED,
    ModelSpec,
    SmallResNet,
    build_sparse,
    evaluate,
    load_model,
    load_sparse_model,
    resolve_checkpoint,
    save_sparse_model,
)
from slimkit.errors import BadInputError, CorruptFileError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- models


def test_small_resnet_shapes_and_defaults() -> None:
    model = SmallResNet()
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert SmallResNet(num_classes=3, in_chans=3)(torch.randn(1, 3, 16, 16)).shape == (1, 3)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # every conv after the stem takes a multiple of 16 input channels: all patterns up to 1:16 fit
    assert all(c.in_channels % 16 == 0 for c in convs[1:])


@pytest.mark.parametrize("method", ["srste", "spre", "bimask", "asp", "unstructured"])
def test_small_resnet_sparsifies_at_1_16(method: str) -> None:
    model = SmallResNet()
    report = sparsify(model, NMConfig(method=method, pattern="1:16"))
    assert report.layers, "something must be sparsified"
    skipped = {s.name for s in report.skipped}
    assert skipped == {"stem.0", "fc"}  # first conv and classifier stay dense by default
    model(torch.randn(2, 1, 8, 8)).sum().backward()


def test_load_model_by_name() -> None:
    assert isinstance(load_model("small_resnet"), SmallResNet)
    timm_model = load_model("resnet18", num_classes=4, in_chans=1).eval()
    assert timm_model(torch.randn(1, 1, 32, 32)).shape == (1, 4)
    tv_model = load_model("tv/resnet18", num_classes=5, in_chans=1).eval()
    assert tv_model(torch.randn(1, 1, 32, 32)).shape == (1, 5)
    with pytest.raises(BadInputError):
        load_model("no_such_model_xyz")


# --------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("method", ["spre", "bimask"])
def test_trained_and_deployed_round_trip(tmp_path: Path, method: str, random_bn: Any) -> None:
    spec = ModelSpec()
    config = NMConfig(method=method, pattern="2:4")
    model = build_sparse(spec, config)
    random_bn(model)
    model.eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
    save_sparse_model(tmp_path / "trained", model, spec, config, STAGE_TRAINED)
    reloaded, spec2, config2, stage = load_sparse_model(tmp_path / "trained")
    assert stage == STAGE_TRAINED and spec2 == spec and config2 == config
    with torch.no_grad():
        assert torch.equal(reloaded(x), expected)

    deploy(model)
    save_sparse_model(tmp_path / "deployed", model, spec, config, STAGE_DEPLOYED)
    plain, _, _, stage = load_sparse_model(tmp_path / "deployed" / "model.safetensors")
    assert stage == STAGE_DEPLOYED
    assert not nm_layers(plain) and check(plain).all_valid
    with torch.no_grad():
        assert torch.allclose(plain(x), expected, atol=1e-4, rtol=1e-4)


def test_resolve_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(BadInputError):
        resolve_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError):
        resolve_checkpoint(tmp_path / "empty")
    spec, config = ModelSpec(), NMConfig()
    folder = save_sparse_model(tmp_path / "m", build_sparse(spec, config), spec, config, STAGE_TRAINED)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptFileError):
        load_sparse_model(folder)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model.safetensors").write_bytes(b"x")
    (tmp_path / "other" / "config.json").write_text(json.dumps({"config": {}}))
    with pytest.raises(BadInputError):
        resolve_checkpoint(tmp_path / "other")


def test_evaluate_counts_correct_predictions() -> None:
    linear = nn.Linear(4, 2, bias=False)
    model = nn.Sequential(nn.Flatten(), linear)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    images = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [2.0, 0, 0, 0]]).reshape(3, 1, 2, 2)
    labels = torch.tensor([0, 1, 1])
    dataset = torch.utils.data.TensorDataset(images, labels)
    assert evaluate(model, dataset, batch_size=2) == pytest.approx(2 / 3)


# --------------------------------------------------------------------------- heatmap data


def test_position_sparsity_nm_is_uniform_unstructured_matches_overall() -> None:
    model = SmallResNet()
    sparsify(model, NMConfig(method="srste", pattern="1:4"))
    rows = position_sparsity(model, 1, 4)
    assert [r["name"] for r in rows] == ["layers.0.conv1", "layers.0.conv2", "layers.1.conv1", "layers.1.conv2"]
    for row in rows:
        assert torch.allclose(torch.tensor(row["nm"]), torch.full((3, 3), 0.75))
        # unstructured pruning at the same overall sparsity: positions average to 0.75
        assert torch.tensor(row["unstructured"]).mean().item() == pytest.approx(0.75, abs=1e-3)
    w = torch.zeros(2, 2, 3, 3)
    w[:, :, 1, 1] = 1.0
    expected = torch.ones(3, 3)
    expected[1, 1] = 0.0
    assert torch.equal(kernel_position_sparsity(w), expected)


def test_save_heatmap_writes_png(tmp_path: Path) -> None:
    model = SmallResNet()
    sparsify(model, NMConfig(method="spre", pattern="2:4"))
    rows = position_sparsity(model, 2, 4)
    assert all(row["spatial_mask"] is not None for row in rows)
    path = save_heatmap(rows, tmp_path / "h.png", "test")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert save_heatmap([], tmp_path / "empty.png").read_bytes()[:8] == PNG_MAGIC


# --------------------------------------------------------------------------- bench helpers


def test_plain_implementations_agree_with_ops() -> None:
    w = torch.randn(16, 64)
    assert torch.equal(plain_topk_mask(w, 2, 8), kernels.nm_mask(w, 2, 8))
    wm = (w * (torch.rand(16, 64) < 0.5)).abs()
    perms = torch.stack([torch.randperm(16) for _ in range(5)])
    assert torch.equal(plain_permutation_scores(wm, perms, 2, 4), kernels.permutation_scores(wm, perms, 2, 4))


def test_run_benchmarks_quick_cpu() -> None:
    sizes = BenchSizes(16, 32, 8, 16, 2, 4, 16, 32)
    result = run_benchmarks("cpu", 2, 4, sizes, repeats=1, warmup=0)
    sections = [row["section"] for row in result["rows"]]
    assert sections.count("nm_mask") == 2 and sections.count("permutation_scores") == 2
    assert sections.count("nm_matmul") == 2
    assert result["rows"][-1]["name"] == "skipped"  # semi-structured needs CUDA
    assert all(row["median_s"] > 0 for row in result["rows"] if "median_s" in row)


def test_spre_deploy_and_bimask_stats(random_bn: Any) -> None:
    spre = SmallResNet()
    sparsify(spre, NMConfig(method="spre", pattern="2:4"))
    random_bn(spre)
    stats = spre_deploy_stats(spre, torch.randn(8, 1, 8, 8))
    assert stats["all_valid"] and stats["max_nonzeros_per_group"] <= 2
    assert stats["max_abs_diff"] < 1e-4 * max(1.0, stats["output_max_abs"])

    bim = SmallResNet()
    sparsify(bim, NMConfig(method="bimask", pattern="2:4"))
    b = bimask_backward_stats(bim, candidates=8)
    assert b["layers"] == 5 and b["backward_mask_valid"]
    for key in ("share_identity", "share_layer", "share_search"):
        assert 0.5 <= b[key] <= 1.0  # at least n/m of each column block survives, never more than all


# --------------------------------------------------------------------------- quickstart


def test_quickstart_runs_and_writes_files(tmp_path: Path) -> None:
    from nm_sparse.quickstart import run

    out = run(tmp_path, steps=15)
    assert set(out) >= {"what", "figure", "files"}
    assert out["pattern_valid"] is True
    assert out["sparsity_of_checked_layers"] == pytest.approx(0.5)
    for name in out["files"]:
        assert Path(name).is_file()
    assert Path(out["heatmap"]).read_bytes()[:8] == PNG_MAGIC
    assert "val top-1" in out["figure"] and "pattern exact" in out["figure"]
    assert out["val_top1_sparse"] == pytest.approx(out["val_top1_deployed"], abs=0.01)
