"""Bad inputs for the ``token-rate`` console script: every subcommand, every kind of mistake.

Kinds covered: missing, empty, corrupt, wrong-type, wrong-kind, unwritable, out-of-range. Rows use
``--model digits_vit`` (a random-init 65-token ViT built in milliseconds) or tiny files, so each
fails during validation, before any model work or write.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from bad_input_harness import BadInput, file_at, folder_at, output_of

TR = "token-rate"
M = ["--model", "digits_vit"]
SEARCH = [TR, "search", *M, "--target-ratio", "0.5"]












def _train_folder(config_text: str) -> Callable[[Path], None]:
    """A real `token-rate train`-style folder (tiny digits ViT weights) with the given config.json."""
    def setup(tmp: Path) -> None:
        from token_rate.models import digits_vit, save_trained

        save_trained(tmp / "ck", digits_vit(depth=1, embed_dim=16, num_heads=2), "digits_vit", {})
        (tmp / "ck" / "config.json").write_text(config_text)
    return setup


_SCHEDULE_WRONG_TYPE = json.dumps({"_type": "Schedule", "prune": "all of them", "merge": [65, 33]})
_SCHEDULE_OTHER_KIND = json.dumps({"_type": "ToMeConfig", "_version": 1, "r": 4})

ROWS: list[BadInput] = [
    # schedules / top level
    BadInput("no-subcommand", [TR], expect="required"),
    BadInput("schedules-unknown-option", [TR, "schedules", "--fast"], expect="unrecognized arguments"),
    # flops
    BadInput("flops-unknown-model", [TR, "flops", "--model", "vit_nonexistent_42"], expect="unknown model"),
    BadInput("flops-schedule-missing", [TR, "flops", *M, "--schedule", "{tmp}/missing.json"],
             expect="--schedule file not found"),
    BadInput("flops-schedule-empty", [TR, "flops", *M, "--schedule", "{tmp}/s.json"], expect="is empty",
             setup=file_at("s.json", "")),
    BadInput("flops-schedule-corrupt", [TR, "flops", *M, "--schedule", "{tmp}/s.json"], expect="not valid JSON",
             setup=file_at("s.json", "{prune: [65")),
    BadInput("flops-schedule-wrong-type", [TR, "flops", *M, "--schedule", "{tmp}/s.json"],
             expect="Schedule.prune must be", setup=file_at("s.json", _SCHEDULE_WRONG_TYPE)),
    BadInput("flops-schedule-wrong-kind", [TR, "flops", *M, "--schedule", "{tmp}/s.json"],
             expect="expected a Schedule", setup=file_at("s.json", _SCHEDULE_OTHER_KIND)),
    BadInput("flops-schedule-wrong-suffix", [TR, "flops", *M, "--schedule", "{tmp}/s.txt"],
             expect="is not one of .json", setup=file_at("s.txt", "{}")),
    BadInput("flops-schedule-for-another-model",
             [TR, "flops", "--model", "deit_tiny_patch16_224", "--schedule", "deit_small@2.9", "--no-count"],
             expect="was made for another model (deit_small_patch16_224): embed_dim 384 (model: 192)"),
    BadInput("flops-tome-r-too-large", [TR, "flops", *M, "--tome-r", "40"], expect="larger than the 32 merges"),
    BadInput("flops-tome-r-negative", [TR, "flops", *M, "--tome-r", "-1"], expect="--tome-r must be >= 0"),
    BadInput("flops-mode-without-schedule", [TR, "flops", *M, "--tome-r", "2", "--mode", "weighted"],
             expect="--mode applies to a DiffRate --schedule"),
    # eval
    BadInput("eval-checkpoint-missing", [TR, "eval", "--checkpoint", "{tmp}/nope"], expect="checkpoint not found"),
    BadInput("eval-checkpoint-empty", [TR, "eval", *M, "--checkpoint", "{tmp}/w.safetensors"], expect="is empty",
             setup=file_at("w.safetensors", "")),
    BadInput("eval-checkpoint-truncated", [TR, "eval", *M, "--checkpoint", "{tmp}/w.safetensors"],
             expect="is corrupt or truncated", setup=file_at("w.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\"")),
    BadInput("eval-checkpoint-folder-empty", [TR, "eval", "--checkpoint", "{tmp}/ck"], expect="is empty",
             setup=folder_at("ck")),
    BadInput("eval-checkpoint-config-corrupt", [TR, "eval", "--checkpoint", "{tmp}/ck"],
             expect="config.json is corrupt", setup=_train_folder("{\"config\": ")),
    BadInput("eval-checkpoint-config-wrong-type", [TR, "eval", "--checkpoint", "{tmp}/ck"],
             expect="wrong field types", setup=_train_folder(json.dumps({"config": {"name": 5, "kwargs": {}}}))),
    BadInput("eval-checkpoint-wrong-kind", [TR, "eval", *M, "--checkpoint", "{tmp}/c.txt"],
             expect="unsupported checkpoint", setup=file_at("c.txt", "weights?")),
    BadInput("eval-batch-size-zero", [TR, "eval", *M, "--batch-size", "0"], expect="--batch-size must be >= 1"),
    BadInput("eval-data-missing", [TR, "eval", *M, "--data", "{tmp}/val"], expect="not found"),
    BadInput("eval-data-empty", [TR, "eval", *M, "--data", "{tmp}/val"], expect="is empty", setup=folder_at("val")),
    BadInput("eval-data-unknown-name", [TR, "eval", *M, "--data", "crop"],
             expect="--data must be one of digits, crops, cluttered-digits or an image folder; not found: crop"),
    BadInput("eval-data-is-a-file", [TR, "eval", *M, "--data", "{tmp}/val"], expect="is a file, expected a folder",
             setup=file_at("val")),
    BadInput("eval-schedule-token-mismatch", [TR, "eval", *M, "--schedule", "deit_small@2.9"],
             expect="made for 197 input tokens"),
    BadInput("eval-schedule-and-tome", [TR, "eval", *M, "--schedule", "deit_small@2.9", "--tome-r", "2"],
             expect="either --schedule or --tome-r"),
    # search
    BadInput("search-steps-zero", [*SEARCH, "--steps", "0", "--output", "{tmp}/s.json"],
             expect="--steps must be >= 1"),
    BadInput("search-checkpoint-every-negative", [*SEARCH, "--checkpoint-every", "-1", "--output", "{tmp}/s.json"],
             expect="--checkpoint-every must be >= 0"),
    BadInput("search-target-ratio-out-of-range", [TR, "search", *M, "--target-ratio", "1.5", "--output",
                                                  "{tmp}/s.json"], expect="target_ratio must be in (0, 1)"),
    BadInput("search-target-not-below", [TR, "search", *M, "--target-gmacs", "5", "--output", "{tmp}/s.json"],
             expect="is not below the uncompressed"),
    BadInput("search-output-wrong-suffix", [*SEARCH, "--output", "{tmp}/s.yaml"], expect="use one of .json"),
    BadInput("search-output-is-a-folder", [*SEARCH, "--output", "{tmp}/s.json"], expect="is a folder, expected a file",
             setup=folder_at("s.json")),
    BadInput("search-output-under-a-file", [*SEARCH, "--output", "{tmp}/f.txt/s.json"],
             expect="f.txt is a file, not a folder", setup=file_at("f.txt")),
    BadInput("search-resume-nothing", [*SEARCH, "--output", "{tmp}/s.json", "--resume"],
             expect="nothing to resume"),
    BadInput("search-work-dir-other-kind", [*SEARCH, "--output", "{tmp}/s.json", "--work-dir", "{tmp}/run"],
             expect="holds a nm-sparse train output", setup=output_of("nm-sparse train", "run")),
    BadInput("search-init-schedule-wrong-length", [*SEARCH, "--output", "{tmp}/s.json", "--init-schedule", "53,41"],
             expect="lists 2 counts for a 6-block model"),
    BadInput("search-data-missing", [*SEARCH, "--output", "{tmp}/s.json", "--data", "{tmp}/imgs"],
             expect="not found"),
    # train
    BadInput("train-output-is-a-file", [TR, "train", "--output", "{tmp}/f.txt"], expect="is a file, expected a folder",
             setup=file_at("f.txt")),
    BadInput("train-output-not-empty", [TR, "train", "--output", "{tmp}/notes"],
             expect="is not empty and was not written by token-rate train", setup=folder_at("notes", "todo.txt")),
    BadInput("train-steps-negative", [TR, "train", "--output", "{tmp}/m", "--steps", "-3"],
             expect="--steps must be >= 1"),
    BadInput("train-lr-zero", [TR, "train", "--output", "{tmp}/m", "--lr", "0"], expect="--lr must be > 0"),
    # bench
    BadInput("bench-output-wrong-suffix", [TR, "bench", *M, "--tome-r", "4", "--output", "{tmp}/b.csv"],
             expect="use one of .json"),
    BadInput("bench-repeats-zero", [TR, "bench", *M, "--tome-r", "4", "--repeats", "0"],
             expect="--repeats must be >= 1"),
    BadInput("bench-no-tome-with-tome-r", [TR, "bench", *M, "--tome-r", "4", "--no-tome"],
             expect="contradict"),
    # visualize
    BadInput("visualize-output-not-png", [TR, "visualize", *M, "--tome-r", "2", "--output", "{tmp}/g.jpg"],
             expect="use one of .png"),
    BadInput("visualize-output-under-a-file", [TR, "visualize", *M, "--tome-r", "2", "--output", "{tmp}/f.txt/g.png"],
             expect="f.txt is a file, not a folder", setup=file_at("f.txt")),
    BadInput("visualize-image-missing", [TR, "visualize", *M, "--tome-r", "2", "--image", "{tmp}/none.png",
                                         "--output", "{tmp}/g.png"], expect="--image not found"),
    BadInput("visualize-block-out-of-range", [TR, "visualize", *M, "--tome-r", "2", "--block", "9",
                                              "--image", "coffee", "--output", "{tmp}/g.png"],
             expect="out of range"),
    # demo
    BadInput("demo-output-is-a-file", [TR, "demo", "--output", "{tmp}/f.txt"], expect="is a file, expected a folder",
             setup=file_at("f.txt")),
    BadInput("demo-output-of-another-kind", [TR, "demo", "--output", "{tmp}/run"],
             expect="holds a nm-sparse train output", setup=output_of("nm-sparse train", "run")),
]
