"""`unidg train` under `accelerate launch` with two CPU processes: one run, both ranks, exact resume.

Two launches of a tiny config (about 15 s each on 2 cores), hence the ``integration`` marker. The
launch flags are the repository's (integration_tests/test_accelerate_launch_clis.py): this
accelerate refuses ``--cpu`` together with ``--multi_gpu``; without a GPU the launched processes
form one gloo group through ``slimkit.train.process_state``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

LAUNCH = [
    sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
    "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
]  # fmt: skip
TINY = ["--identities", "3", "--samples", "24", "--steps", "4", "--batch-size", "4", "--dim", "16", "--depth", "1",
        "--checkpoint-every", "2", "--json", "-o", "run"]  # fmt: skip


def _launch(cwd: Path, *extra: str) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*LAUNCH, "-m", "unidg.cli", "train", *TINY, *extra], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # exactly one JSON document: only rank 0 prints


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.integration
def test_two_process_training_and_exact_resume(tmp_path: Path) -> None:
    out = _launch(tmp_path)
    run = tmp_path / "run"
    assert out["processes"] == 2 and out["steps"] == 4  # one group of two ranks, not two runs of one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # one run folder, nothing beside it
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["final", "step_2"]
    for ckpt in ("step_2", "final"):  # each rank saved its own RNG state: both ran every step
        names = {p.name for p in (run / "checkpoints" / ckpt).iterdir()}
        assert {"random_states_0.pkl", "random_states_1.pkl", "trainer_state.json"} <= names
    meta = json.loads((run / "model" / "config.json").read_text())
    assert meta["processes"] == 2 and meta["steps"] == 4 and meta["config"]["_type"] == "NetConfig"
    assert _steps(run) == [1, 2, 3, 4]
    straight = load_file(str(run / "model" / "model.safetensors"))
    shutil.copy(run / "model" / "model.safetensors", tmp_path / "straight.safetensors")

    resumed = _launch(tmp_path, "--resume", str(run / "checkpoints" / "step_2"))  # steps 3-4 again, from step 2
    assert resumed["steps"] == 4 and resumed["processes"] == 2
    assert _steps(run) == [1, 2, 3, 4]  # the log was cut back to step 2, then continued
    again = load_file(str(run / "model" / "model.safetensors"))
    assert set(again) == set(straight)
    assert all(bool((again[k] == straight[k]).all()) for k in straight)  # bit-identical to the uninterrupted run
