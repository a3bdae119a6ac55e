"""Bad inputs for the ``nm-sparse`` console script: every subcommand, every kind of mistake.

Kinds covered: missing, empty, corrupt, wrong-type, wrong-kind, unwritable, out-of-range. Each
row fails during validation (arguments, input paths, output paths, the model and config), before
any training and before the first write. "Unwritable" rows put the output under a file, which
holds for root too (permission bits do not).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bad_input_harness import BadInput, file_at, folder_at, output_of

NM = "nm-sparse"
TRAIN = [NM, "train", "--steps", "1", "--no-progress"]








def _saved_model(
    stage: str = "trained", weights: bytes | None = None, config_text: str | None = None
) -> Callable[[Path], None]:
    """``{tmp}/ck``: a real saved SR-STE small ResNet, optionally with damaged files."""

    def setup(tmp: Path) -> None:
        from nm_sparse import SRSTEConfig, deploy
        from nm_sparse.checkpoints import ModelSpec, build_sparse, save_sparse_model

        spec, config = ModelSpec(), SRSTEConfig()
        model = build_sparse(spec, config)
        if stage == "deployed":
            deploy(model)
        save_sparse_model(tmp / "ck", model, spec, config, stage)
        if weights is not None:
            (tmp / "ck" / "model.safetensors").write_bytes(weights)
        if config_text is not None:
            (tmp / "ck" / "config.json").write_text(config_text)

    return setup


ROWS: list[BadInput] = [
    # ---------------------------------------------------------------- train
    BadInput("train-pattern-out-of-range", [*TRAIN, "--pattern", "5:4", "-o", "{tmp}/r"], "5:4"),
    BadInput("train-steps-zero", [*TRAIN[:2], "--steps", "0", "-o", "{tmp}/r"], "max_steps"),
    BadInput("train-batch-size-zero", [*TRAIN, "--batch-size", "0", "-o", "{tmp}/r"], "--batch-size must be >= 1"),
    BadInput(
        "train-checkpoint-every-negative",
        [*TRAIN, "--checkpoint-every", "-1", "-o", "{tmp}/r"],
        "--checkpoint-every must be >= 0",
    ),
    BadInput("train-steps-wrong-type", [*TRAIN[:2], "--steps", "many", "-o", "{tmp}/r"], "invalid int value"),
    BadInput(
        "train-bimask-interval-zero",
        [*TRAIN, "--method", "bimask", "--bimask-interval", "0", "-o", "{tmp}/r"],
        "--bimask-interval must be >= 1",
    ),
    BadInput("train-data-missing", [*TRAIN, "--data", "{tmp}/nope", "-o", "{tmp}/r"], "--data folder not found"),
    BadInput("train-data-empty", [*TRAIN, "--data", "{tmp}/imgs", "-o", "{tmp}/r"], "is empty", folder_at("imgs")),
    BadInput(
        "train-data-is-a-file",
        [*TRAIN, "--data", "{tmp}/x.png", "-o", "{tmp}/r"],
        "is a file, expected a folder",
        file_at("x.png"),
    ),
    BadInput(
        "train-val-data-missing",
        [*TRAIN, "--data", "{tmp}/imgs", "--val-data", "{tmp}/nope", "-o", "{tmp}/r"],
        "--val-data folder not found",
        folder_at("imgs", "a/x.png"),
    ),
    BadInput(
        "train-val-data-with-digits",
        [*TRAIN, "--val-data", "{tmp}/imgs", "-o", "{tmp}/r"],
        "--val-data needs --data",
        folder_at("imgs", "a/x.png"),
    ),
    BadInput(
        "train-val-data-with-crops",
        [*TRAIN, "--data", "crops", "--val-data", "{tmp}/imgs", "-o", "{tmp}/r"],
        "--val-data needs --data to be an image folder (crops has its own held-out split)",
        folder_at("imgs", "a/x.png"),
    ),
    BadInput(
        "train-cluttered-digits-image-size-too-small",
        [*TRAIN, "--data", "cluttered-digits", "--image-size", "4", "-o", "{tmp}/r"],
        "image size must be >= 8 for cluttered-digits",
    ),
    BadInput(
        "train-include-matches-nothing",
        [*TRAIN, "--include", "nothing.*", "-o", "{tmp}/r"],
        "matches no Linear/Conv layer",
    ),
    BadInput("train-unknown-model", [*TRAIN, "--model", "no_such_model_xyz", "-o", "{tmp}/r"], "unknown model"),
    BadInput("train-output-is-a-file", [*TRAIN, "-o", "{tmp}/f.txt"], "is a file, expected a folder", file_at("f.txt")),
    BadInput(
        "train-output-other-kind",
        [*TRAIN, "-o", "{tmp}/out"],
        "holds a nm-sparse deploy output",
        output_of("nm-sparse deploy"),
    ),
    BadInput("train-output-not-empty", [*TRAIN, "-o", "{tmp}/notes"], "is not empty", folder_at("notes", "todo.txt")),
    BadInput("train-output-unwritable", [*TRAIN, "-o", "{tmp}/f.txt/run"], "is a file, not a folder", file_at("f.txt")),
    BadInput("train-resume-nothing", [*TRAIN, "-o", "{tmp}/r", "--resume", "latest"], "nothing to resume"),
    BadInput(
        "train-resume-not-a-checkpoint",
        [*TRAIN, "-o", "{tmp}/r", "--resume", "{tmp}/ck"],
        "not a complete slimkit checkpoint",
        folder_at("ck", "notes.txt"),
    ),
    # ---------------------------------------------------------------- deploy
    BadInput("deploy-missing", [NM, "deploy", "{tmp}/nope", "-o", "{tmp}/d"], "not found"),
    BadInput("deploy-empty-folder", [NM, "deploy", "{tmp}/ck", "-o", "{tmp}/d"], "no model.safetensors", folder_at("ck")),
    BadInput(
        "deploy-corrupt-weights",
        [NM, "deploy", "{tmp}/ck", "-o", "{tmp}/d"],
        "corrupt",
        _saved_model(weights=b"\x00garbage"),
    ),
    BadInput(
        "deploy-corrupt-config",
        [NM, "deploy", "{tmp}/ck", "-o", "{tmp}/d"],
        "corrupt",
        _saved_model(config_text="{not json"),
    ),
    BadInput(
        "deploy-truncated-bare-safetensors",
        [NM, "deploy", "{tmp}/w.safetensors", "-o", "{tmp}/d"],
        "corrupt",
        file_at("w.safetensors", b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":'),
    ),
    BadInput(
        "deploy-wrong-file-type",
        [NM, "deploy", "{tmp}/w.pt", "-o", "{tmp}/d"],
        "is not one of .safetensors",
        file_at("w.pt"),
    ),
    BadInput(
        "deploy-already-deployed",
        [NM, "deploy", "{tmp}/ck", "-o", "{tmp}/d"],
        "already deployed",
        _saved_model(stage="deployed"),
    ),
    BadInput(
        "deploy-output-is-a-run-folder",
        [NM, "deploy", "{tmp}/nope", "-o", "{tmp}/out"],
        "holds a nm-sparse train output",
        output_of("nm-sparse train"),
    ),
    # ---------------------------------------------------------------- inspect
    BadInput("inspect-missing", [NM, "inspect", "{tmp}/nope"], "not found"),
    BadInput("inspect-empty-weights", [NM, "inspect", "{tmp}/w.safetensors"], "is empty", file_at("w.safetensors", b"")),
    BadInput("inspect-plot-not-png", [NM, "inspect", "{tmp}/nope", "--plot", "{tmp}/heat.jpg"], "use one of .png"),
    BadInput(
        "inspect-plot-is-a-folder",
        [NM, "inspect", "{tmp}/nope", "--plot", "{tmp}/plots"],
        "is a folder, expected a file",
        folder_at("plots"),
    ),
    BadInput("inspect-pattern-out-of-range", [NM, "inspect", "{tmp}/nope", "--pattern", "3:2"], "3:2"),
    # ---------------------------------------------------------------- bench
    BadInput("bench-repeats-zero", [NM, "bench", "--quick", "--repeats", "0"], "--repeats must be >= 1"),
    BadInput("bench-output-not-json", [NM, "bench", "--quick", "-o", "{tmp}/bench.txt"], "use one of .json"),
    BadInput(
        "bench-output-unwritable",
        [NM, "bench", "--quick", "-o", "{tmp}/f.txt/bench.json"],
        "is a file, not a folder",
        file_at("f.txt"),
    ),
    # ---------------------------------------------------------------- table
    BadInput("table-unknown-method", [NM, "table", "--methods", "magic"], "magic"),
    BadInput("table-seeds-wrong-type", [NM, "table", "--seeds", "a,b"], "--seeds must be integers"),
    BadInput(
        "table-output-other-kind",
        [NM, "table", "--steps", "1", "-o", "{tmp}/out"],
        "holds a nm-sparse train output",
        output_of("nm-sparse train"),
    ),
    # ---------------------------------------------------------------- demo
    BadInput("demo-steps-zero", [NM, "demo", "--steps", "0", "-o", "{tmp}/demo"], "--steps must be >= 1"),
    BadInput(
        "demo-output-is-a-file", [NM, "demo", "-o", "{tmp}/f.txt"], "is a file, expected a folder", file_at("f.txt")
    ),
]
