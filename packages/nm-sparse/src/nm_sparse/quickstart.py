"""The demo: SR-STE 2:4 on digits, deploy, check the pattern, save, draw the heatmap.

``nm-sparse demo``, ``python -m nm_sparse.quickstart [OUTPUT_DIR]`` or ``nm_sparse.quickstart.run(Path(...))``.
About 10-30 s on two CPU cores.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from nm_sparse.check import check
from nm_sparse.checkpoints import STAGE_DEPLOYED, ModelSpec, load_sparse_model, save_sparse_model
from nm_sparse.config import SRSTEConfig
from nm_sparse.deploy import deploy
from nm_sparse.fitting import evaluate, fit
from nm_sparse.inspect_plot import position_sparsity, save_heatmap
from slimkit.data import digits
from slimkit.train import TrainConfig


def run(output_dir: Path, steps: int = 200, seed: int = 0) -> dict[str, Any]:
    """Train the small ResNet with SR-STE 2:4, deploy it and verify the deployed weights.

    Returns ``{"what", "figure", "files", ...}``: ``figure`` is the key number, ``heatmap`` the PNG of sparsity per
    kernel position (N:M in use vs unstructured pruning of the same dense weights).
    """
    output_dir = Path(output_dir)
    torch.manual_seed(seed)
    spec = ModelSpec("small_resnet", num_classes=10, in_chans=1, image_size=8)
    config = SRSTEConfig(pattern="2:4", seed=seed)
    model = spec.build()
    with tempfile.TemporaryDirectory(prefix="nm-sparse-demo-") as scratch:  # checkpoints are not a deliverable
        train_config = TrainConfig(
            output_dir=str(Path(scratch) / "run"), max_steps=steps, batch_size=64, lr=1e-2, seed=seed,
            progress=False, cpu=True, log_every=50,
        )  # fmt: skip
        result, report = fit(model, digits("train", seed=seed), train_config, config)
    val = digits("val", seed=seed)
    sparse_top1 = evaluate(model, val)

    # the heatmap is drawn while the latent dense weights still exist (before deploy)
    figure = save_heatmap(
        position_sparsity(model, config.n, config.m),
        output_dir / "kernel_position_sparsity.png",
        "SR-STE 2:4 on digits: sparsity per kernel position",
    )
    deploy_report = deploy(model)
    deployed_top1 = evaluate(model, val)
    saved = save_sparse_model(output_dir / "deployed", model, spec, config, STAGE_DEPLOYED, {"val_top1": deployed_top1})

    reloaded, _, _, _ = load_sparse_model(saved)
    reloaded_check = check(reloaded)
    return {
        "what": f"small ResNet, SR-STE 2:4, {result.steps} steps on digits, deployed and re-checked",
        "figure": (
            f"val top-1 {deployed_top1:.3f} deployed 2:4 "
            f"({'pattern exact' if deploy_report.check.all_valid and reloaded_check.all_valid else 'PATTERN BROKEN'})"
        ),
        "heatmap": str(figure),
        "files": [str(saved / "model.safetensors"), str(saved / "config.json"), str(figure)],
        "val_top1_sparse": sparse_top1,
        "val_top1_deployed": deployed_top1,
        "sparsified_layers": len(report["layers"]),
        "pattern_valid": deploy_report.check.all_valid and reloaded_check.all_valid,
        "sparsity_of_checked_layers": reloaded_check.sparsity,
        "final_loss": result.final_loss,
    }


if __name__ == "__main__":
    import json

    out = run(Path(sys.argv[1] if len(sys.argv) > 1 else "nm-sparse-quickstart"))
    print(json.dumps(out, indent=2))
