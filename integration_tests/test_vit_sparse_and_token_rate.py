"""One timm ViT gets 2:4 SR-STE on its MLPs and a token-rate schedule, trains on digits, deploys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")
nm_sparse = pytest.importorskip("nm_sparse")
token_rate = pytest.importorskip("token_rate")

from slimkit.data import digits  # noqa: E402
from slimkit.train import TrainConfig, train  # noqa: E402

PRUNE = [65, 65, 49, 41]
MERGE = [65, 57, 45, 33]


def _vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_small_patch16_224", pretrained=False, img_size=32, patch_size=4, embed_dim=64,
        depth=4, num_heads=2, num_classes=10, in_chans=1,
    )


def test_sparse_mlp_plus_token_schedule_survive_training_and_deploy(tmp_path: Path) -> None:
    model = _vit()
    report = nm_sparse.sparsify(
        model, nm_sparse.NMConfig(method="srste", pattern="2:4", include=["blocks.*.mlp.fc1", "blocks.*.mlp.fc2"])
    )
    assert len(report.layers) == 8  # fc1 + fc2 in 4 blocks
    schedule = token_rate.Schedule(prune=PRUNE, merge=MERGE)
    token_rate.patch(model, token_rate.DiffRateConfig(schedule=schedule))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}

    data = digits("train", size=32, channels=1)
    result = train(
        model, data, TrainConfig(output_dir=str(tmp_path), max_steps=4, batch_size=16, lr=1e-3, progress=False),
        callbacks=[nm_sparse.NMSparseCallback()],
    )
    assert result.steps == 4
    changed = [k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert any("mlp.fc1" in k for k in changed)

    model.eval()
    x = digits("val", size=32, channels=1).tensors[0][:8]
    with torch.no_grad():
        trained_out = model(x)
    nm_sparse.deploy(model)
    checked = nm_sparse.check(model)
    mlp = [layer for layer in checked.layers if ".mlp.fc" in layer.name]
    assert len(mlp) == 8 and all(layer.valid for layer in mlp)
    with torch.no_grad():
        deployed_out = model(x)
    torch.testing.assert_close(deployed_out, trained_out, rtol=1e-4, atol=1e-4)
    # the compression schedule is still applied after deploy: kept counts per block
    counts = token_rate.last_token_counts(model)
    assert counts == [min(p, m) for p, m in zip(PRUNE, MERGE)]
