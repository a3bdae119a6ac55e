"""The demo: MultiQuant on digits, one network trained once and run at 2, 4, 6 and 8 bits.

``arbitrary-quant demo``, ``python -m arbitrary_quant.quickstart [OUTPUT_DIR]`` or
``arbitrary_quant.quickstart.run(Path(...))``. About 30-60 s on two CPU cores.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

from arbitrary_quant.checkpoints import load_quant_model, save_quant_model
from arbitrary_quant.config import MultiQuantConfig
from arbitrary_quant.multiquant import init_bounds, multiquant, set_bits
from arbitrary_quant.training import AllBitsForward, multibit_loss, multiquant_optimizer
from slimkit.data import digits
from slimkit.evaluate import top1
from slimkit.opcount import count_ops
from slimkit.plot import save_png
from slimkit.train import TrainConfig, train
from slimkit.zoo import ModelSpec

__all__ = ["bits_report", "run"]


def bits_report(
    model: nn.Module, data: Any, bit_list: tuple[int, ...] | None, image_size: int, layer_bits: Any = None
) -> list[dict[str, Any]]:
    """Top-1 and the quantized layers' MACs / BOPs at every bit-width of a switchable model
    (MultiQuant, Any-Precision), or once for a fixed-bit model (``bit_list=None``, LSQ, Bi-ViT).

    ``layer_bits`` goes to :func:`slimkit.opcount.count_ops` for layers that declare no bits
    (Bi-ViT's: :func:`arbitrary_quant.bivit.layer_bits`)."""
    rows = []
    channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    x = torch.zeros(1, channels, image_size, image_size)
    for bits in bit_list or (None,):
        if bits is not None:
            set_bits(model, bits)
        ops = count_ops(model, x, layer_bits=layer_bits)
        quant = [r for r in ops.rows if not r.is_fp]
        rows.append(
            {
                "bits": bits if bits is not None else max((r.a_bits for r in quant), default=32),
                "top1": top1(model, data),
                "body_macs": sum(r.macs for r in quant),
                "body_bops": sum(r.bops for r in quant),
                "fp_flops": ops.fp_flops,
            }
        )
    if bit_list:
        set_bits(model, bit_list[-1])
    return rows


def _plot(rows: list[dict[str, Any]], path: Path) -> Path:
    fig = Figure(figsize=(4.5, 3.2))
    ax = fig.add_subplot()
    accs = [100 * r["top1"] for r in rows]
    ax.plot([r["bits"] for r in rows], accs, "o-")
    ax.set_ylim(max(0.0, min(accs) - 8), min(100.0, max(accs) + 2))  # at least a 10-point window
    ax.set_xlabel("bit-width (weights 2-bit per branch, activations k-bit)")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title("MultiQuant, one network, every bit-width")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)


def run(output_dir: Path, steps: int = 150, seed: int = 0) -> dict[str, Any]:
    """Train a MultiQuant small ResNet on digits, report every bit-width, save and reload it.

    Returns ``{"what", "figure", "files", "rows", ...}``: ``rows`` holds top-1, MACs and BOPs per bit-width.
    """
    output_dir = Path(output_dir)
    torch.manual_seed(seed)
    spec = ModelSpec("small_resnet", num_classes=10, in_chans=1, image_size=8)
    config = MultiQuantConfig(seed=seed)
    model = multiquant(spec.build(), config)
    train_set, val_set = digits("train", seed=seed), digits("val", seed=seed)
    init_bounds(model, train_set.tensors[0][:64])
    with tempfile.TemporaryDirectory(prefix="arbitrary-quant-demo-") as scratch:
        train_config = TrainConfig(
            output_dir=str(Path(scratch) / "run"), max_steps=steps, batch_size=64, lr=5e-3, seed=seed,
            progress=False, cpu=True, log_every=max(1, steps // 3),
        )  # fmt: skip
        result = train(
            AllBitsForward(model, config.bit_list), train_set, train_config,
            loss_fn=multibit_loss(config.distill_weight), optimizer_fn=multiquant_optimizer(model),
        )  # fmt: skip
    model.eval()
    rows = bits_report(model, val_set, config.bit_list, spec.image_size)
    saved = save_quant_model(output_dir / "model", model, spec, config, {"val_top1": {r["bits"]: r["top1"] for r in rows}})
    reloaded, *_ = load_quant_model(saved)
    reloaded.eval()
    same = all(torch.equal(_logits(reloaded, val_set, b), _logits(model, val_set, b)) for b in config.bit_list)
    figure = _plot(rows, output_dir / "top1_per_bits.png")
    accs = ", ".join(f"{r['bits']}-bit {100 * r['top1']:.1f}%" for r in rows)
    return {
        "what": f"small ResNet made MultiQuant (4 branches of 2-bit weights), {result.steps} steps on digits",
        "figure": f"val top-1 {accs} from one network ({'reload exact' if same else 'RELOAD DIFFERS'})",
        "files": [str(saved / "model.safetensors"), str(saved / "config.json"), str(figure)],
        "rows": rows,
        "reload_exact": same,
        "final_loss": result.final_loss,
    }


def _logits(model: nn.Module, data: Any, bits: int) -> torch.Tensor:
    set_bits(model, bits)
    with torch.no_grad():
        return model(data.tensors[0][:32])


if __name__ == "__main__":
    out = run(Path(sys.argv[1] if len(sys.argv) > 1 else "arbitrary-quant-quickstart"))
    print(json.dumps(out, indent=2))
