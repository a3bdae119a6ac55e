"""The package CLIs train under `accelerate launch` with two CPU processes (gloo via torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LAUNCH = [
    sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
]  # fmt: skip


def _run(cmd: list[str], cwd: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # exactly one JSON document: only rank 0 prints


def test_nm_sparse_train_two_processes(tmp_path: Path) -> None:
    pytest.importorskip("nm_sparse")
    out = _run([*LAUNCH, "-m", "nm_sparse.cli", "train", "--method", "srste", "--pattern", "2:4", "--steps", "6",
                "--output", "run", "--checkpoint-every", "3", "--json", "--no-progress"], tmp_path)
    assert out["steps"] == 6
    assert (tmp_path / "run" / "checkpoints" / "step_3" / "trainer_state.json").is_file()


def test_token_rate_search_two_processes(tmp_path: Path) -> None:
    pytest.importorskip("token_rate")
    subprocess.run([sys.executable, "-m", "token_rate.cli", "train", "--output", "model", "--steps", "5"],
                   cwd=tmp_path, check=True, capture_output=True)
    out = _run([*LAUNCH, "-m", "token_rate.cli", "search", "--checkpoint", "model", "--target-ratio", "0.5",
                "--steps", "4", "--batch-size", "8", "--output", "sched.json", "--json"], tmp_path)
    assert out["steps"] == 4
    schedule = json.loads((tmp_path / "sched.json").read_text())
    assert len(schedule["prune"]) == len(schedule["merge"]) == len(out["kept_per_block"])


def test_arbitrary_quant_multiquant_train_two_processes(tmp_path: Path) -> None:
    """Every bit-width runs inside one DDP forward (AllBitsForward), so one backward per step syncs them all."""
    pytest.importorskip("arbitrary_quant")
    out = _run([*LAUNCH, "-m", "arbitrary_quant.cli", "train", "--steps", "4", "--output", "run",
                "--checkpoint-every", "2", "--json", "--no-progress"], tmp_path)
    assert out["steps"] == 4 and [r["bits"] for r in out["rows"]] == [2, 4, 6, 8]
    assert (tmp_path / "run" / "checkpoints" / "step_2" / "trainer_state.json").is_file()
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_qdetr_two_stage_qdetr_train_two_processes(tmp_path: Path) -> None:
    """Both stages (quantized backbone, then all) run under DDP with the FP teacher beside each process."""
    pytest.importorskip("qdetr")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    qdetr = [sys.executable, "-m", "qdetr.cli"]
    subprocess.run([*qdetr, "make-data", "shapes", "--train", "8", "--val", "4", "-o", "data"],
                   cwd=tmp_path, check=True, capture_output=True, env=env)
    data = ["--data", "data/train", "--val-data", "data/val", "--batch-size", "2", "--no-progress", "--json"]
    subprocess.run([*qdetr, "train", "--method", "fp", "--steps", "2", "--output", "fp", *data],
                   cwd=tmp_path, check=True, capture_output=True, env=env)
    out = _run([*LAUNCH, "-m", "qdetr.cli", "train", "--method", "qdetr", "--model", "fp/model", "--steps", "4",
                "--backbone-steps", "2", "--output", "run", *data], tmp_path)
    assert out["steps"] == 4 and out["bits"] == "4-4-8" and 0.0 <= out["val"]["AP50"] <= 1.0
    for stage in ("stage1", "stage2"):
        assert (tmp_path / "run" / stage / "checkpoints" / "final" / "trainer_state.json").is_file()
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_two_launched_processes_form_one_group_on_cpu(tmp_path: Path) -> None:
    """slimkit.train.process_state: on a GPU-less machine each launched process is one rank of two, not rank 0 of 1
    (a bare PartialState() there made two independent runs race on one output folder)."""
    script = tmp_path / "ranks.py"
    script.write_text(  # one file per process: two processes printing at once interleave their lines
        "from pathlib import Path\n"
        "from slimkit.train import process_state\n"
        "s = process_state()\n"
        "Path(f'rank{s.process_index}.txt').write_text(f'{s.process_index} {s.num_processes}')\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*LAUNCH, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.read_text() for p in tmp_path.glob("rank*.txt")) == ["0 2", "1 2"]
