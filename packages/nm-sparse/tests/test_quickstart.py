"""nm_sparse.quickstart: the demo."""

from __future__ import annotations

from pathlib import Path

import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_quickstart_runs_and_writes_files(tmp_path: Path) -> None:
    from nm_sparse.quickstart import run

    out = run(tmp_path, steps=15)
    assert set(out) >= {"what", "figure", "files"}
    assert out["pattern_valid"] is True
    assert out["sparsity_of_checked_layers"] == pytest.approx(0.5)
    weights, config, heatmap = (Path(name) for name in out["files"])
    assert (weights.name, config.name, str(heatmap)) == ("model.safetensors", "config.json", out["heatmap"])
    assert heatmap.read_bytes()[:8] == PNG_MAGIC
    # the files hold what the run reports: reload them and measure again
    from nm_sparse.check import check
    from nm_sparse.checkpoints import STAGE_DEPLOYED, load_sparse_model
    from nm_sparse.fitting import evaluate
    from slimkit.data import digits
    from slimkit.io import load_json

    meta = load_json(config)
    assert meta["nm_sparse"]["stage"] == STAGE_DEPLOYED and meta["config"]["pattern"] == "2:4"
    assert meta["nm_sparse"]["val_top1"] == out["val_top1_deployed"]
    model, _, _, stage = load_sparse_model(weights.parent)
    assert stage == STAGE_DEPLOYED
    report = check(model)
    assert report.all_valid and report.sparsity == out["sparsity_of_checked_layers"] == pytest.approx(0.5)
    assert evaluate(model, digits("val", seed=0)) == out["val_top1_deployed"]
    assert "val top-1" in out["figure"] and "pattern exact" in out["figure"]
    assert out["val_top1_sparse"] == pytest.approx(out["val_top1_deployed"], abs=0.01)
