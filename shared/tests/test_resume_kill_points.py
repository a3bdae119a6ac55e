"""A run killed at any phase of any checkpoint write resumes to the uninterrupted result, bit for bit.

``slimkit.train._checkpoint_phase`` is called between the steps of every checkpoint write
(``start``, ``state_saved``, ``marker_written``, ``old_moved``, ``switched``,
``old_removed``). A reference run records every call; then, for each recorded call, a run
is stopped there by raising :class:`KillPoint` (a ``BaseException``, so nothing in the loop
catches it; ``_save`` has no ``finally`` either, so the folder is left exactly as a kill
would leave it). The kill also leaves what a kill can leave that the hook does not create
by itself: a half-written line at the end of ``metrics.jsonl`` and stray atomic-write temp
files. Then a fresh model resumes with ``resume_from="latest"`` -- or starts fresh when no
checkpoint had been completed yet, as ``latest`` then refuses with "nothing to resume" --
and the final weights, BatchNorm buffers, optimizer and scheduler state, callback state and
``metrics.jsonl`` must equal the uninterrupted run's exactly.

Scenarios: a 12-step run with ``checkpoint_every=4`` (writes ``step_4``, ``step_8``,
``final``); and extending a finished 8-step run to 12 steps with ``resume_from="latest"``,
killed while ``final`` is rewritten (the case of the original bug report).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

import slimkit.train as slim_train
from slimkit.errors import BadInputError
from slimkit.train import TrainConfig, TrainContext, find_latest_checkpoint, train


class KillPoint(BaseException):
    """Stands for SIGKILL at a checkpoint phase."""


def _data() -> TensorDataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=gen)
    y = (x[:, 0] - 0.5 * x[:, 2] > 0).long()
    return TensorDataset(x, y)


def _model() -> nn.Module:
    torch.manual_seed(1)
    # BatchNorm: running stats and num_batches_tracked double-count on a mixed resume;
    # Dropout: the resumed run must restore the RNG.
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))


def _cfg(out: Path, steps: int, checkpoint_every: int = 4, **kw: Any) -> TrainConfig:
    # 40 samples / batch 8 = 5 batches per epoch: checkpoints fall mid-epoch too.
    return TrainConfig(output_dir=str(out), max_steps=steps, batch_size=8, lr=0.05, checkpoint_every=checkpoint_every,
                       log_every=1, progress=False, cpu=True, **kw)


class Counter:
    """A checkpointed callback."""

    def __init__(self) -> None:
        self.calls = 0

    def on_step_end(self, ctx: TrainContext) -> None:
        self.calls += 1

    def state_dict(self) -> dict[str, int]:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.calls = state["calls"]


def _run(out: Path, steps: int, resume: str | None = None) -> tuple[nn.Module, Counter]:
    model, cb = _model(), Counter()
    train(model, _data(), _cfg(out, steps, resume_from=resume), callbacks=[cb])
    return model, cb


def _resume(out: Path, steps: int) -> tuple[nn.Module, Counter]:
    if find_latest_checkpoint(out) is None:
        with pytest.raises(BadInputError, match="nothing to resume"):
            _run(out, steps, "latest")
        return _run(out, steps)
    return _run(out, steps, "latest")


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _snapshot(out: Path, model: nn.Module, cb: Counter) -> dict[str, Any]:
    final = out / "checkpoints" / "final"
    return {
        "model": {k: v.clone() for k, v in model.state_dict().items()},  # BN buffers included
        "saved_model": load_file(str(final / "model.safetensors")),
        "optimizer": torch.load(final / "optimizer.bin", weights_only=False),
        # scheduler, callback state and every RNG
        "pickles": {p.name: torch.load(p, weights_only=False) for p in sorted(final.glob("*.pkl"))},
        "marker": json.loads((final / "trainer_state.json").read_text()),
        "callback": cb.calls,
        "metrics": (out / "metrics.jsonl").read_text(),
    }


def _leftovers(out: Path) -> list[str]:
    found = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    return found + [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


class _Phases:
    """Replacement for ``_checkpoint_phase``: records calls, or kills at call number ``kill_at``."""

    def __init__(self, out: Path | None = None, kill_at: int | None = None) -> None:
        self.calls: list[str] = []
        self.out, self.kill_at = out, kill_at

    def __call__(self, name: str) -> None:
        self.calls.append(name)
        if self.kill_at is not None and len(self.calls) - 1 == self.kill_at:
            assert self.out is not None
            # what else a kill can leave: a torn metrics line, atomic-write temp files
            with (self.out / "metrics.jsonl").open("a") as fh:
                fh.write('{"step": 99, "lo')
            (self.out / ".metrics.jsonl.k1ll3d_x.tmp").write_text("partial")
            if (self.out / "checkpoints").is_dir():
                (self.out / "checkpoints" / ".trainer_state.json.k1ll3d_x.tmp").write_text("{")
            raise KillPoint(name)


def _label(calls: list[str], index: int, writes: list[str]) -> str:
    write = sum(1 for c in calls[: index + 1] if c == "start") - 1
    return f"{writes[write]}:{calls[index]}"


TABLE: list[tuple[str, str, bool]] = []


def _kill_everywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, scenario: str, steps: int,
                     base: Path | None, writes: list[str], ref: dict[str, Any], n_points: int) -> None:
    rows = []
    for index in range(n_points):
        out = tmp_path / f"{scenario}-{index}"
        if base is not None:
            shutil.copytree(base, out)
        phases = _Phases(out, kill_at=index)
        monkeypatch.setattr(slim_train, "_checkpoint_phase", phases)
        with pytest.raises(KillPoint):
            _run(out, steps, "latest" if base is not None else None)
        monkeypatch.setattr(slim_train, "_checkpoint_phase", _Phases())
        model, cb = _resume(out, steps)
        got = _snapshot(out, model, cb)
        same = all(_equal(got[k], ref[k]) for k in ref)
        label = _label(phases.calls, index, writes)
        rows.append((scenario, label, same))
        assert _leftovers(out) == [], (label, _leftovers(out))
    TABLE.extend(rows)
    width = max(len(r[1]) for r in rows)
    print(f"\n{scenario}: kill point{' ' * (width - 10)}  bit-identical")
    for _, label, same in rows:
        print(f"{scenario}: {label.ljust(width)}  {'yes' if same else 'NO'}")
    print(f"{scenario}: {sum(r[2] for r in rows)}/{len(rows)} kill points bit-identical")
    assert all(r[2] for r in rows), [r[1] for r in rows if not r[2]]


def test_kill_at_every_checkpoint_phase_resumes_bit_identical(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    recorder = _Phases()
    monkeypatch.setattr(slim_train, "_checkpoint_phase", recorder)
    model, cb = _run(tmp_path / "ref", 12)
    ref = _snapshot(tmp_path / "ref", model, cb)
    assert [json.loads(line)["step"] for line in ref["metrics"].splitlines()] == list(range(1, 13))
    assert ref["marker"]["step"] == 12 and int(ref["model"]["1.num_batches_tracked"]) == 12
    writes = ["step_4", "step_8", "final"]
    assert recorder.calls == ["start", "state_saved", "marker_written", "switched"] * 3
    _kill_everywhere(monkeypatch, tmp_path, "run-12", 12, None, writes, ref, len(recorder.calls))


def test_kill_while_extending_a_finished_run_resumes_bit_identical(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    base = tmp_path / "base"
    _run(base, 8)  # finished: step_4 and final (step 8)
    ext = tmp_path / "ext-ref"
    shutil.copytree(base, ext)
    recorder = _Phases()
    monkeypatch.setattr(slim_train, "_checkpoint_phase", recorder)
    model, cb = _run(ext, 12, "latest")
    ref = _snapshot(ext, model, cb)
    assert ref["marker"]["step"] == 12 and int(ref["model"]["1.num_batches_tracked"]) == 12
    assert [json.loads(line)["step"] for line in ref["metrics"].splitlines()] == list(range(1, 13))
    # rewriting `final` goes through every phase, the old one moved aside and removed
    assert recorder.calls == ["start", "state_saved", "marker_written", "old_moved", "switched", "old_removed"]
    _kill_everywhere(monkeypatch, tmp_path, "extend-8-to-12", 12, base, ["final"], ref, len(recorder.calls))


def test_mid_switch_checkpoint_is_found_and_recovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between moving the old ``final`` aside and renaming the new one in: both are complete."""
    out = tmp_path / "run"
    _run(out, 8)

    def kill(name: str) -> None:
        if name == "old_moved":
            raise KillPoint(name)

    monkeypatch.setattr(slim_train, "_checkpoint_phase", kill)
    with pytest.raises(KillPoint):
        _run(out, 12, "latest")
    assert not (out / "checkpoints" / "final").exists()
    latest = find_latest_checkpoint(out)
    assert latest is not None and latest.name.startswith(".tmp-final-")  # the newer, complete one
    assert json.loads((latest / "trainer_state.json").read_text())["step"] == 12


def test_resume_errors_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    with pytest.raises(BadInputError, match=r"^nothing to resume in .*empty$"):
        _run(empty, 4, "latest")
    assert not empty.exists()
    partial = tmp_path / "run" / "checkpoints" / "step_4"
    partial.mkdir(parents=True)
    (partial / "trainer_state.json").write_text('{"step": 4')  # torn marker
    with pytest.raises(BadInputError, match="nothing to resume"):
        _run(tmp_path / "run", 4, "latest")
    with pytest.raises(BadInputError, match=rf"not a slimkit checkpoint .*{re.escape(str(partial))}"):
        _run(tmp_path / "run", 4, str(partial))
    done = tmp_path / "done"
    _run(done, 8)
    with pytest.raises(BadInputError, match=r"step 8.*max_steps 4"):
        _run(done, 4, "latest")


_WORKER = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
import test_resume_kill_points as t
out, steps = Path(sys.argv[1]), int(sys.argv[2])
resume = "latest" if t.find_latest_checkpoint(out) is not None else None
t.train(t._model(), t._data(), t._cfg(out, steps, resume_from=resume, checkpoint_every=1), callbacks=[t.Counter()])
"""


@pytest.mark.slow
def test_real_sigkill_at_random_times_resumes_bit_identical(tmp_path: Path) -> None:
    """Real processes killed with SIGKILL at random moments (checkpoint every step), then resumed."""
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps = 24
    ref_out = tmp_path / "ref"
    subprocess.run([sys.executable, str(script), str(ref_out), str(steps)], check=True, env=env, timeout=300)
    ref_model = load_file(str(ref_out / "checkpoints" / "final" / "model.safetensors"))
    ref_opt = torch.load(ref_out / "checkpoints" / "final" / "optimizer.bin", weights_only=False)
    rng = random.Random(0)
    kills = 0
    for trial in range(4):
        out = tmp_path / f"run{trial}"
        for _ in range(3):  # kill it a few times, each after a random delay
            proc = subprocess.Popen([sys.executable, str(script), str(out), str(steps)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 120
            while not (out / "checkpoints").exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)  # wait for the first checkpoint write
            time.sleep(rng.uniform(0.0, 1.0))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
        subprocess.run([sys.executable, str(script), str(out), str(steps)], check=True, env=env, timeout=300)
        assert _equal(load_file(str(out / "checkpoints" / "final" / "model.safetensors")), ref_model)
        assert _equal(torch.load(out / "checkpoints" / "final" / "optimizer.bin", weights_only=False), ref_opt)
        assert (out / "metrics.jsonl").read_text() == (ref_out / "metrics.jsonl").read_text()
        assert _leftovers(out) == []
    print(f"\nSIGKILL: {kills} real kills, every resumed run bit-identical")
