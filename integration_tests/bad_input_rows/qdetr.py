"""Bad inputs for the ``qdetr`` console script: bad COCO folders, bits, models and output paths.

Every row fails during validation, before training and before the first write. The COCO folders
are real ones written by :func:`qdetr.data.make_shapes`, then damaged one way each.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from bad_input_harness import BadInput, file_at, folder_at, output_of

Q = "qdetr"


def _coco(damage: Callable[[dict], None] | None = None, image_bytes: bytes | None = None) -> Callable[[Path], None]:
    """``{tmp}/d``: a two-image shapes COCO folder, with its annotations or first image damaged."""

    def setup(tmp: Path) -> None:
        from qdetr.data import make_shapes

        make_shapes(tmp / "d", 2, seed=0)
        ann = tmp / "d" / "annotations.json"
        if damage is not None:
            data = json.loads(ann.read_text())
            damage(data)
            ann.write_text(json.dumps(data))
        if image_bytes is not None:
            first = sorted((tmp / "d" / "images").iterdir())[0]
            first.write_bytes(image_bytes)

    return setup


def _box_outside(data: dict) -> None:
    data["annotations"][0]["bbox"] = [50, 50, 40, 40]  # 64 x 64 images


def _unknown_category(data: dict) -> None:
    data["annotations"][0]["category_id"] = 99


TRAIN = [Q, "train", "--data", "{tmp}/d", "--val-data", "{tmp}/d", "--steps", "1", "--backbone-steps", "0", "--no-progress"]

ROWS: list[BadInput] = [
    BadInput("no-subcommand", [Q], expect="required"),
    # ---------------------------------------------------------------- make-data
    BadInput("make-data-unknown-kind", [Q, "make-data", "voc", "-o", "{tmp}/d"], expect="invalid choice"),
    BadInput("make-data-zero-images", [Q, "make-data", "shapes", "--train", "0", "-o", "{tmp}/d"],
             expect="--train must be >= 1"),
    BadInput("make-data-output-is-file", [Q, "make-data", "shapes", "--train", "2", "--val", "1", "-o", "{tmp}/d"],
             expect="is a file, expected a folder", setup=file_at("d")),
    # ---------------------------------------------------------------- train
    BadInput("train-box-outside-image", [*TRAIN, "-o", "{tmp}/r"], expect="outside", setup=_coco(_box_outside)),
    BadInput("train-unknown-category", [*TRAIN, "-o", "{tmp}/r"], expect="category", setup=_coco(_unknown_category)),
    BadInput("train-unreadable-image", [*TRAIN, "-o", "{tmp}/r"], expect="image", setup=_coco(image_bytes=b"not a png")),
    BadInput("train-annotations-not-json", [*TRAIN, "-o", "{tmp}/r"], expect="annotations.json",
             setup=folder_at("d", "annotations.json", "images/a.png")),
    BadInput("train-data-missing", [Q, "train", "--data", "{tmp}/nope", "--val-data", "{tmp}/nope", "-o", "{tmp}/r"],
             expect="not found"),
    BadInput("train-bits-too-low", [*TRAIN, "--w-bits", "1", "-o", "{tmp}/r"], expect="w_bits must be 2..8",
             setup=_coco()),
    BadInput("train-attn-bits-too-high", [*TRAIN, "--attn-bits", "9", "-o", "{tmp}/r"], expect="attn_bits must be 2..8",
             setup=_coco()),
    BadInput("train-tau-out-of-range", [*TRAIN, "--tau", "1.5", "-o", "{tmp}/r"], expect="tau must be in [0, 1]",
             setup=_coco()),
    BadInput("train-backbone-steps-too-many", [*TRAIN, "--backbone-steps", "5", "-o", "{tmp}/r"],
             expect="backbone steps must be in [0, steps)", setup=_coco()),
    BadInput("train-qdetr-without-teacher", [*TRAIN, "-o", "{tmp}/r"],
             expect="distils from an FP teacher", setup=_coco()),
    BadInput("train-model-missing", [*TRAIN, "--method", "fp", "--model", "{tmp}/nope", "-o", "{tmp}/r"],
             expect="model folder not found", setup=_coco()),
    BadInput("train-output-is-file", [*TRAIN, "--method", "fp", "-o", "{tmp}/r"], expect="is a file, expected a folder",
             setup=lambda tmp: (_coco()(tmp), (tmp / "r").write_text("x"))),
    BadInput("train-output-other-kind", [*TRAIN, "--method", "fp", "-o", "{tmp}/out"],
             expect="holds a nm-sparse train output",
             setup=lambda tmp: (_coco()(tmp), output_of("nm-sparse train")(tmp))),
    # ---------------------------------------------------------------- eval / bops / demo
    BadInput("eval-missing-model", [Q, "eval", "{tmp}/nope", "--data", "{tmp}/d"], expect="not found", setup=_coco()),
    BadInput("eval-not-a-model", [Q, "eval", "{tmp}/m", "--data", "{tmp}/d"], expect="no config.json",
             setup=lambda tmp: (_coco()(tmp), folder_at("m", "x.txt")(tmp))),
    BadInput("bops-bits-out-of-range", [Q, "bops", "--model", "tiny", "--w-bits", "9"], expect="w_bits must be 2..8"),
    BadInput("bops-tiny-input", [Q, "bops", "--model", "tiny", "--height", "8"], expect="--height must be >= 32"),
    BadInput("demo-output-is-file", [Q, "demo", "-o", "{tmp}/f"], expect="is a file, expected a folder",
             setup=file_at("f")),
]


# ---------------------------------------------------------------- export / visualize


def _model_folder(name: str, quantized: bool) -> Callable[[Path], None]:
    """``{tmp}/<name>``: a tiny random DETR saved as train saves it, full precision or quantized (4-4-8)."""

    def setup(tmp: Path) -> None:
        import torch

        from qdetr.api import quantize
        from qdetr.checkpoints import save_model_folder
        from qdetr.config import QDetrConfig
        from qdetr.models import tiny_detr

        torch.manual_seed(0)
        model = tiny_detr(3)
        config = QDetrConfig() if quantized else None
        if config is not None:
            quantize(model, config)
        save_model_folder(tmp / name, model, config)  # quiet: no progress bar in the row's captured stderr

    return setup


def _all(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        for step in setups:
            step(tmp)

    return setup


VIS = [Q, "visualize", "{tmp}/q", "--data", "{tmp}/d"]

ROWS += [
    BadInput("export-missing-checkpoint", [Q, "export", "{tmp}/nope", "-o", "{tmp}/m.safetensors"],
             expect="model folder not found"),
    BadInput("export-fp-checkpoint", [Q, "export", "{tmp}/fp", "-o", "{tmp}/m.safetensors"],
             expect="is a full-precision model", setup=_model_folder("fp", quantized=False)),
    BadInput("export-output-wrong-suffix", [Q, "export", "{tmp}/q", "-o", "{tmp}/m.pt"],
             expect="use one of .safetensors", setup=_model_folder("q", quantized=True)),
    BadInput("export-output-is-folder", [Q, "export", "{tmp}/q", "-o", "{tmp}/m.safetensors"],
             expect="is a folder, expected a file",
             setup=_all(_model_folder("q", quantized=True), folder_at("m.safetensors"))),
    BadInput("visualize-zero-images", [*VIS, "--images", "0", "-o", "{tmp}/v"], expect="--images must be >= 1"),
    BadInput("visualize-threshold-out-of-range", [*VIS, "--threshold", "1.5", "-o", "{tmp}/v"],
             expect="--threshold must be in [0, 1]"),
    BadInput("visualize-output-is-file", [*VIS, "-o", "{tmp}/v"], expect="is a file, expected a folder",
             setup=file_at("v")),
    BadInput("visualize-output-other-kind", [*VIS, "-o", "{tmp}/out"], expect="holds a qdetr train output",
             setup=output_of("qdetr train")),
    BadInput("visualize-data-missing", [*VIS, "-o", "{tmp}/v"], expect="not found",
             setup=_model_folder("q", quantized=True)),
    BadInput("visualize-teacher-is-quantized", [*VIS, "--teacher", "{tmp}/q", "-o", "{tmp}/v"],
             expect="the teacher is the full-precision model", setup=_all(_coco(), _model_folder("q", quantized=True))),
    BadInput("visualize-teacher-with-fp-checkpoint", [Q, "visualize", "{tmp}/fp", "--data", "{tmp}/d", "--teacher",
                                                      "{tmp}/fp", "-o", "{tmp}/v"],
             expect="is full precision", setup=_all(_coco(), _model_folder("fp", quantized=False))),
    BadInput("visualize-layer-out-of-range", [*VIS, "--teacher", "{tmp}/fp", "--layer", "5", "-o", "{tmp}/v"],
             expect="layer must be in [-2, 1]",
             setup=_all(_coco(), _model_folder("q", quantized=True), _model_folder("fp", quantized=False))),
]
