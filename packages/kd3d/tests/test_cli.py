"""The ``kd3d`` console script end to end on the tiny grid: simulate, train (teacher, RDD student), eval, visualize, flops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kd3d import __version__
from kd3d.api import TINY_GRID, tiny_config
from kd3d.cli import build_parser, main
from kd3d.config import preset
from kd3d.detector import build_detector
from kd3d.kitti import default_calib, write_bin, write_calib
from kd3d.training import save_detector


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_version_and_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
    assert capsys.readouterr().out.strip() == f"kd3d {__version__}"


@pytest.mark.slow
def test_simulate_train_eval_visualize(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "sim"
    sim = _run(capsys, "simulate", "--grid", "tiny", "--train", "2", "--val", "1", "--beams", "16", "-o", str(data))
    assert sim["train"]["scenes"] == 2 and (data / "val" / "velodyne" / "000000.bin").is_file()
    teacher = _run(capsys, "train", "--role", "teacher", "--grid", "tiny", "--preset", "XS", "--data", str(data / "train"),
                   "--steps", "1", "--no-progress", "-o", str(tmp_path / "t"))  # fmt: skip
    assert teacher["steps"] == 1 and (tmp_path / "t" / "model" / "model.safetensors").is_file()
    student = _run(capsys, "train", "--role", "student", "--preset", "XXS", "--kd", "rdd", "--teacher", str(tmp_path / "t" / "model"),
                   "--data", str(data / "train"), "--val-data", str(data / "val"), "--steps", "1", "--no-progress",
                   "--kd-option", "logit_reduction=sum", "--kd-option", "lam=0.2", "-o", str(tmp_path / "s"))  # fmt: skip
    assert student["kd"] == "rdd" and 0 <= student["val"]["NDS"] <= 1
    run = json.loads((tmp_path / "s" / "run.json").read_text())
    assert run["kd_config"]["logit_reduction"] == "sum" and run["kd_config"]["lam"] == 0.2
    ev = _run(capsys, "eval", str(tmp_path / "s" / "model"), "--data", str(data / "val"))
    assert ev["preset"] == "XXS" and "bev_AP_R40" in ev
    vis = _run(capsys, "visualize", str(tmp_path / "s" / "model"), "--data", str(data / "val"), "--threshold", "0.0",
               "-o", str(tmp_path / "v"))  # fmt: skip
    assert Path(vis["bev_png"]).read_bytes()[:4] == b"\x89PNG"


def test_flops_on_the_tiny_grid(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(capsys, "flops", "--grid", "tiny", "--depth", "cpu")
    rows = {r["preset"]: r for r in out["rows"]}
    assert rows["teacher"]["flops_ratio"] == 1.0
    assert rows["XXS"]["flops_ratio"] < rows["XS"]["flops_ratio"] <= rows["S"]["flops_ratio"] < 1.0
    assert rows["S"]["sparse_gflops"] == rows["teacher"]["sparse_gflops"]  # S keeps the encoder's widths


def test_simulate_then_eval_and_visualize_a_saved_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "sim"
    sim = _run(capsys, "simulate", "--grid", "tiny", "--train", "1", "--val", "1", "--beams", "16", "-o", str(data))
    assert sim["val"]["scenes"] == 1 and (data / "val" / "label_2" / "000000.txt").is_file()
    save_detector(tmp_path / "m", build_detector(tiny_config(), seed=0))
    ev = _run(capsys, "eval", str(tmp_path / "m"), "--data", str(data / "val"))
    assert ev["scenes"] == 1 and 0.0 <= ev["NDS"] <= 1.0
    vis = _run(capsys, "visualize", str(tmp_path / "m"), "--data", str(data / "val"), "--threshold", "0.0", "-o", str(tmp_path / "v"))
    assert Path(vis["bev_png"]).read_bytes()[:4] == b"\x89PNG" and vis["boxes"] > 0


@pytest.mark.slow
def test_rdd_student_trains_under_accelerate_launch_with_two_processes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(capsys, "simulate", "--grid", "tiny", "--train", "4", "--val", "1", "--beams", "16", "-o", str(tmp_path / "sim"))
    teacher = preset("XS", **TINY_GRID, encoder_layers=[1, 1, 1, 1, 1, 1], bev_layers=[1, 1])
    save_detector(tmp_path / "t", build_detector(teacher, seed=0))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]  # fmt: skip
    cmd = [*launch, "-m", "kd3d.cli", "train", "--role", "student", "--kd", "rdd", "--preset", "XXS", "--teacher",
           str(tmp_path / "t"), "--data", str(tmp_path / "sim" / "train"), "--steps", "3", "--checkpoint-every", "2",
           "--no-progress", "--json", "-o", str(tmp_path / "run")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["steps"] == 3  # one JSON document: only rank 0 prints
    assert (tmp_path / "run" / "checkpoints" / "step_2" / "trainer_state.json").is_file()


def _kitti_folder(root: Path, points: np.ndarray, label: str = "Car 0 0 0 0 0 0 0 1.5 1.8 4.0 1 1.7 5 0\n") -> Path:
    for sub in ("velodyne", "label_2", "calib"):
        (root / sub).mkdir(parents=True)
    write_bin(root / "velodyne" / "000000.bin", points)
    (root / "label_2" / "000000.txt").write_text(label)
    write_calib(root / "calib" / "000000.txt", default_calib())
    return root


def _fails_cleanly(capsys: pytest.CaptureFixture[str], out: Path, *argv: str) -> str:
    """Exit code 2, one stderr line, no traceback, and nothing written at ``out``."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kd3d: error: ") and "\n" not in err and "Traceback" not in err
    assert not out.exists()
    return err


def test_bad_inputs_are_one_line_errors_with_exit_2_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pts = np.random.default_rng(0).uniform(-5, 5, size=(7, 4)).astype(np.float32)
    out = tmp_path / "out"
    bad_bin = _kitti_folder(tmp_path / "bad_bin", pts)
    (bad_bin / "velodyne" / "000000.bin").write_bytes(b"\0" * 20)
    assert "multiple of 16 bytes" in _fails_cleanly(capsys, out, "train", "--grid", "tiny", "--data", str(bad_bin), "-o", str(out))
    short = _kitti_folder(tmp_path / "short_label", pts, label="Car 0 0 0 1 2 3 4\n")
    assert "expected 15" in _fails_cleanly(capsys, out, "train", "--grid", "tiny", "--data", str(short), "-o", str(out))
    (tmp_path / "empty").mkdir()
    assert "empty" in _fails_cleanly(capsys, out, "train", "--grid", "tiny", "--data", str(tmp_path / "empty"), "-o", str(out))
    good = _kitti_folder(tmp_path / "good", pts)
    save_detector(tmp_path / "t", build_detector(preset("XXS", **TINY_GRID, encoder_layers=[1] * 6, bev_layers=[1, 1]), seed=0))
    err = _fails_cleanly(capsys, out, "train", "--role", "student", "--preset", "S", "--kd", "rdd", "--teacher", str(tmp_path / "t"),
                         "--data", str(good), "-o", str(out))  # fmt: skip
    assert "wider than its teacher" in err
    for option, message in (("nope=1", "rdd has no such option"), ("logit_reduction=max", "logit_reduction"), ("lam", "name=value")):
        err = _fails_cleanly(capsys, out, "train", "--role", "student", "--preset", "XXS", "--kd", "rdd", "--teacher",
                             str(tmp_path / "t"), "--kd-option", option, "--data", str(good), "-o", str(out))  # fmt: skip
        assert message in err


def test_scans_are_read_with_the_models_point_features(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 5-feature model (nuScenes-style scans: x, y, z, intensity, time) reads 20-byte points; 4-feature
    scans are refused before anything is written."""
    pts4 = np.random.default_rng(0).uniform(-5, 5, size=(7, 4)).astype(np.float32)
    out = tmp_path / "out"
    kitti = _kitti_folder(tmp_path / "kitti", pts4)
    err = _fails_cleanly(capsys, out, "train", "--grid", "nuscenes", "--data", str(kitti), "-o", str(out))
    assert "multiple of 20 bytes" in err
    pts5 = np.random.default_rng(1).uniform(-5, 5, size=(300, 5)).astype(np.float32)
    nus = _kitti_folder(tmp_path / "nus", pts5)
    save_detector(tmp_path / "m", build_detector(tiny_config(point_features=4 + 1), seed=0))
    ev = _run(capsys, "eval", str(tmp_path / "m"), "--data", str(nus))
    assert ev["scenes"] == 1 and 0.0 <= ev["NDS"] <= 1.0
