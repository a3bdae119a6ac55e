"""Bad inputs for the ``arbitrary-quant`` console script: every subcommand, every kind of mistake.

Kinds covered: missing, empty, corrupt, wrong-type, wrong-kind, unwritable, out-of-range. Each row
fails during validation (arguments, data, checkpoint and output paths), before training and before
the first write. Saved models are real: a tiny MultiQuant small ResNet written by ``save_quant_model``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from bad_input_harness import BadInput, file_at, folder_at, output_of

AQ = "arbitrary-quant"
TRAIN = [AQ, "train", "--steps", "1", "--no-progress"]


def _saved(weights: bytes | None = None, config_text: str | None = None) -> Callable[[Path], None]:
    """``{tmp}/ck``: a saved MultiQuant small ResNet, optionally with a damaged file."""

    def setup(tmp: Path) -> None:
        from arbitrary_quant import MultiQuantConfig, multiquant
        from arbitrary_quant.checkpoints import save_quant_model
        from slimkit.zoo import ModelSpec

        spec, config = ModelSpec(), MultiQuantConfig()
        save_quant_model(tmp / "ck", multiquant(spec.build(), config), spec, config)
        if weights is not None:
            (tmp / "ck" / "model.safetensors").write_bytes(weights)
        if config_text is not None:
            (tmp / "ck" / "config.json").write_text(config_text)

    return setup


_OTHER_KIND = json.dumps({"config": {"_type": "SRSTEConfig", "_version": 1}, "nm_sparse": {"model": {}}})

ROWS: list[BadInput] = [
    BadInput("no-subcommand", [AQ], expect="required"),
    # ---------------------------------------------------------------- train
    BadInput("train-bits-beyond-branches", [*TRAIN, "--bits", "2,3", "--groups", "1", "-o", "{tmp}/r"],
             expect="reaches 3 bits but 1 branches"),
    BadInput("train-bits-out-of-range", [*TRAIN, "--bits", "2,10", "-o", "{tmp}/r"], expect="bit-widths 2..8"),
    BadInput("train-bits-wrong-type", [*TRAIN, "--bits", "two", "-o", "{tmp}/r"], expect="comma-separated integers"),
    BadInput("train-groups-too-few", [*TRAIN, "--groups", "2", "--selection", "prefix", "-o", "{tmp}/r"],
             expect="give at most 4"),
    BadInput("train-lsq-two-bits", [*TRAIN, "--method", "lsq", "--bits", "2,4", "-o", "{tmp}/r"],
             expect="trains one bit-width"),
    BadInput("train-unknown-method", [*TRAIN, "--method", "pact", "-o", "{tmp}/r"], expect="invalid choice"),
    BadInput("train-steps-zero", [*TRAIN[:2], "--steps", "0", "-o", "{tmp}/r"], expect="--steps must be >= 1"),
    BadInput("train-unknown-model", [*TRAIN, "--model", "no_such_net", "-o", "{tmp}/r"], expect="unknown model"),
    BadInput("train-data-missing", [*TRAIN, "--data", "{tmp}/nope", "-o", "{tmp}/r"], expect="--data folder not found"),
    BadInput("train-data-empty", [*TRAIN, "--data", "{tmp}/d", "--val-data", "{tmp}/d", "-o", "{tmp}/r"],
             expect="is empty", setup=folder_at("d")),
    BadInput("train-data-is-file", [*TRAIN, "--data", "{tmp}/d", "-o", "{tmp}/r"], expect="is a file",
             setup=file_at("d")),
    BadInput("train-output-is-file", [*TRAIN, "-o", "{tmp}/r"], expect="is a file, expected a folder",
             setup=file_at("r")),
    BadInput("train-output-other-kind", [*TRAIN, "-o", "{tmp}/out"], expect="holds a nm-sparse train output",
             setup=output_of("nm-sparse train")),
    BadInput("train-output-unwritable", [*TRAIN, "-o", "{tmp}/f/r"], expect="is a file, not a folder",
             setup=file_at("f")),
    # ---------------------------------------------------------------- eval
    BadInput("eval-missing", [AQ, "eval", "{tmp}/nope"], expect="checkpoint not found"),
    BadInput("eval-no-weights", [AQ, "eval", "{tmp}/ck"], expect="no model.safetensors", setup=folder_at("ck", "a")),
    BadInput("eval-corrupt-weights", [AQ, "eval", "{tmp}/ck"], expect="corrupt", setup=_saved(weights=b"\x00" * 64)),
    BadInput("eval-corrupt-config", [AQ, "eval", "{tmp}/ck"], expect="corrupt", setup=_saved(config_text="{oops")),
    BadInput("eval-other-kind", [AQ, "eval", "{tmp}/ck"], expect="is not an arbitrary-quant model",
             setup=_saved(config_text=_OTHER_KIND)),
    BadInput("eval-untrained-bits", [AQ, "eval", "{tmp}/ck", "--bits", "6,3"],
             expect="--bits [3] not in the trained bit_list", setup=_saved()),
    # ---------------------------------------------------------------- export
    BadInput("export-missing", [AQ, "export", "{tmp}/nope", "-o", "{tmp}/x.safetensors"], expect="checkpoint not found"),
    BadInput("export-wrong-suffix", [AQ, "export", "{tmp}/ck", "-o", "{tmp}/x.pt"], expect="use one of .safetensors",
             setup=_saved()),
    BadInput("export-output-is-folder", [AQ, "export", "{tmp}/ck", "-o", "{tmp}/x.safetensors"],
             expect="is a folder, expected a file", setup=folder_at("x.safetensors")),
    BadInput("export-unwritable", [AQ, "export", "{tmp}/ck", "-o", "{tmp}/f/x.safetensors"],
             expect="is a file, not a folder", setup=file_at("f")),
    # ---------------------------------------------------------------- calibrate
    BadInput("calibrate-missing", [AQ, "calibrate", "{tmp}/nope", "-o", "{tmp}/x.safetensors"], expect="not found"),
    BadInput("calibrate-other-kind", [AQ, "calibrate", "{tmp}/ck", "-o", "{tmp}/x.safetensors"],
             expect="is not an arbitrary-quant EDSR model",
             setup=_saved()),
    BadInput("calibrate-bits-out-of-range", [AQ, "calibrate", "{tmp}/ck", "--bits", "1", "-o", "{tmp}/x.safetensors"],
             expect="bits must be 2..8", setup=_saved()),
    # ---------------------------------------------------------------- bops / demo
    BadInput("bops-image-too-small", [AQ, "bops", "--image-size", "2"], expect="--image-size must be >= 4"),
    BadInput("bops-unknown-model", [AQ, "bops", "--model", "no_such_net"], expect="unknown model"),
    BadInput("demo-steps-zero", [AQ, "demo", "--steps", "0", "-o", "{tmp}/d"], expect="--steps must be >= 1"),
    BadInput("demo-output-other-kind", [AQ, "demo", "-o", "{tmp}/out"], expect="holds a nm-sparse train output",
             setup=output_of("nm-sparse train")),
]
