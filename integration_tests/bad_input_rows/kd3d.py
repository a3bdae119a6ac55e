"""Bad inputs for the ``kd3d`` console script: broken KITTI folders, model folders, presets and output paths.

Every row fails during validation, before training and before the first write. The damaged scene
folders are KITTI layouts (``velodyne/``, ``label_2/``, ``calib/``) broken one way each; the teacher
folder is a real tiny XXS detector written by :func:`kd3d.training.save_detector`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

from bad_input_harness import BadInput, file_at, folder_at, output_of

K = "kd3d"
ONE_POINT = struct.pack("<4f", 1.0, 2.0, -1.0, 0.5)  # one x, y, z, intensity record (16 bytes)


def _scenes(bin_bytes: bytes = ONE_POINT, label: str | None = None) -> Callable[[Path], None]:
    """``{tmp}/d``: a one-scene KITTI folder whose scan and label are given."""

    def setup(tmp: Path) -> None:
        from kd3d.kitti import calib_text, default_calib

        (tmp / "d" / "velodyne").mkdir(parents=True)
        (tmp / "d" / "velodyne" / "000000.bin").write_bytes(bin_bytes)
        if label is not None:
            (tmp / "d" / "label_2").mkdir()
            (tmp / "d" / "label_2" / "000000.txt").write_text(label)
            (tmp / "d" / "calib").mkdir()
            (tmp / "d" / "calib" / "000000.txt").write_text(calib_text(default_calib()))

    return setup


def _teacher(name: str = "t", preset: str = "XXS") -> Callable[[Path], None]:
    """``{tmp}/<name>``: a saved detector of ``preset`` widths on the tiny grid (quiet, no forward)."""

    def setup(tmp: Path) -> None:
        from kd3d.api import TINY_GRID
        from kd3d.config import preset as make_preset
        from kd3d.detector import build_detector
        from kd3d.training import save_detector

        save_detector(tmp / name, build_detector(make_preset(preset, **TINY_GRID), seed=0), {"role": "teacher"})

    return setup


def _all(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        for step in setups:
            step(tmp)

    return setup


TRAIN = [K, "train", "--data", "{tmp}/d", "--steps", "1", "--no-progress"]

ROWS: list[BadInput] = [
    BadInput("no-subcommand", [K], expect="required"),
    # ---------------------------------------------------------------- simulate
    BadInput("simulate-zero-scenes", [K, "simulate", "--train", "0", "-o", "{tmp}/s"], expect="--train must be >= 1"),
    BadInput("simulate-output-is-file", [K, "simulate", "--train", "1", "-o", "{tmp}/s"],
             expect="is a file, expected a folder", setup=file_at("s")),
    BadInput("simulate-output-other-kind", [K, "simulate", "--train", "1", "-o", "{tmp}/out"],
             expect="holds a kd3d train output", setup=output_of("kd3d train")),
    # ---------------------------------------------------------------- train: data
    BadInput("train-bin-not-whole-points", [*TRAIN, "-o", "{tmp}/r"], expect="is not a multiple of 16 bytes",
             setup=_scenes(bin_bytes=b"\0" * 20)),
    BadInput("train-label-missing-fields", [*TRAIN, "-o", "{tmp}/r"], expect="has 8 fields, expected 15",
             setup=_scenes(label="Car 0.00 0 0.1 0 0 10 10\n")),
    BadInput("train-empty-scene-folder", [*TRAIN, "-o", "{tmp}/r"], expect="is empty", setup=folder_at("d")),
    BadInput("train-no-scans", [*TRAIN, "-o", "{tmp}/r"], expect="no .bin scans", setup=folder_at("d", "velodyne/readme.txt")),
    BadInput("train-data-missing", [K, "train", "--data", "{tmp}/nope", "-o", "{tmp}/r"], expect="not found"),
    BadInput("train-steps-zero", [K, "train", "--data", "{tmp}/d", "--steps", "0", "-o", "{tmp}/r"],
             expect="--steps must be >= 1", setup=_scenes()),
    # ---------------------------------------------------------------- train: roles, presets, teachers
    BadInput("train-student-wider-than-teacher",
             [*TRAIN, "--role", "student", "--preset", "S", "--kd", "rdd", "--teacher", "{tmp}/t", "-o", "{tmp}/r"],
             expect="wider than its teacher", setup=_all(_scenes(), _teacher("t", "XXS"))),
    BadInput("train-kd-without-teacher", [*TRAIN, "--role", "student", "--kd", "rdd", "-o", "{tmp}/r"],
             expect="distils from a trained teacher", setup=_scenes()),
    BadInput("train-teacher-with-kd", [*TRAIN, "--role", "teacher", "--kd", "logit", "-o", "{tmp}/r"],
             expect="trains without distillation", setup=_scenes()),
    BadInput("train-teacher-folder-missing", [*TRAIN, "--role", "student", "--kd", "rdd", "--teacher", "{tmp}/nope",
                                              "-o", "{tmp}/r"], expect="teacher model folder not found", setup=_scenes()),
    BadInput("train-unknown-kd", [*TRAIN, "--kd", "mimic", "-o", "{tmp}/r"], expect="invalid choice"),
    BadInput("train-output-is-file", [*TRAIN, "-o", "{tmp}/r"], expect="is a file, expected a folder",
             setup=_all(_scenes(), file_at("r"))),
    BadInput("train-output-other-kind", [*TRAIN, "-o", "{tmp}/out"], expect="holds a qdetr train output",
             setup=_all(_scenes(), output_of("qdetr train"))),
    # ---------------------------------------------------------------- eval / visualize
    BadInput("eval-missing-model", [K, "eval", "{tmp}/nope", "--data", "{tmp}/d"], expect="not found", setup=_scenes()),
    BadInput("eval-not-a-model", [K, "eval", "{tmp}/m", "--data", "{tmp}/d"], expect="not a kd3d model folder",
             setup=_all(_scenes(), folder_at("m", "x.txt"))),
    BadInput("eval-unlabeled-data", [K, "eval", "{tmp}/t", "--data", "{tmp}/d"], expect="has no label_2/",
             setup=_all(_scenes(), _teacher("t"))),
    BadInput("visualize-threshold-out-of-range", [K, "visualize", "{tmp}/t", "--data", "{tmp}/d", "--threshold", "2",
                                                  "-o", "{tmp}/v"], expect="--threshold must be in [0, 1]"),
    BadInput("visualize-scene-out-of-range", [K, "visualize", "{tmp}/t", "--data", "{tmp}/d", "--scene", "5", "-o", "{tmp}/v"],
             expect="--scene 5 is out of range", setup=_all(_scenes(), _teacher("t"))),
    # ---------------------------------------------------------------- flops / bench / table / demo
    BadInput("flops-scan-missing", [K, "flops", "--scan", "{tmp}/nope.bin"], expect="scan not found"),
    BadInput("flops-scan-wrong-suffix", [K, "flops", "--scan", "{tmp}/a.xyz"], expect="is not one of .bin, .pcd, .ply", setup=file_at("a.xyz")),
    BadInput("flops-scan-not-whole-points", [K, "flops", "--scan", "{tmp}/a.bin"], expect="is not a multiple of 16 bytes",
             setup=file_at("a.bin", b"\0" * 20)),
    BadInput("bench-zero-repeats", [K, "bench", "--repeats", "0"], expect="--repeats must be >= 1"),
    BadInput("table-no-seeds", [K, "table", "--seeds", ",", "-o", "{tmp}/tb"], expect="--seeds must list"),
    BadInput("table-unknown-method", [K, "table", "--methods", "none,mimic", "-o", "{tmp}/tb"], expect="--methods takes"),
    BadInput("demo-output-is-file", [K, "demo", "-o", "{tmp}/f"], expect="is a file, expected a folder", setup=file_at("f")),
]
