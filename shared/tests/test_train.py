from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from slimkit.errors import BadInputError
from slimkit.train import TrainConfig, TrainContext, find_latest_checkpoint, train


def _data(n: int = 96) -> TensorDataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return TensorDataset(x, y)


def _model() -> nn.Module:
    torch.manual_seed(1)
    # Dropout makes resume depend on restored RNG state, which is what we want to test.
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))


def _cfg(tmp: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(output_dir=str(tmp), max_steps=12, batch_size=16, lr=0.05, progress=False, cpu=True)
    base.update(kw)
    return TrainConfig(**base)


class Recorder:
    """A stateful callback: counts steps, and is checkpointed with the run."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls = 0
        self.stop_at = stop_at

    def on_step_end(self, ctx: TrainContext) -> None:
        self.calls += 1
        if self.stop_at is not None and ctx.step == self.stop_at:
            raise KeyboardInterrupt  # simulates a run killed mid-way

    def state_dict(self) -> dict[str, int]:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.calls = state["calls"]


def _params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_loss_decreases_and_metrics_written(tmp_path: Path) -> None:
    model = _model()
    result = train(model, _data(), _cfg(tmp_path, max_steps=30, log_every=5))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in lines] == [5, 10, 15, 20, 25, 30]
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert result.steps == 30 and Path(result.checkpoint_dir).name == "final"
    # cosine schedule ends at min_lr (0)
    assert lines[-1]["lr"] == pytest.approx(0.0, abs=1e-9)


def test_killed_and_resumed_run_matches_uninterrupted(tmp_path: Path) -> None:
    ref_model = _model()
    ref_cb = Recorder()
    train(ref_model, _data(), _cfg(tmp_path / "ref", checkpoint_every=4), callbacks=[ref_cb])

    model = _model()
    with pytest.raises(KeyboardInterrupt):
        train(model, _data(), _cfg(tmp_path / "run", checkpoint_every=4), callbacks=[Recorder(stop_at=10)])
    latest = find_latest_checkpoint(tmp_path / "run")
    assert latest is not None and latest.name == "step_8"

    resumed = _model()  # fresh process state: weights come only from the checkpoint
    cb = Recorder()
    result = train(resumed, _data(), _cfg(tmp_path / "run", checkpoint_every=4, resume_from="latest"), callbacks=[cb])
    assert result.steps == 12
    assert cb.calls == ref_cb.calls == 12  # callback state restored from the checkpoint
    torch.testing.assert_close(_params(resumed), _params(ref_model), rtol=1e-6, atol=1e-7)


def test_gradient_accumulation_matches_large_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    big = nn.Linear(6, 2)
    small = nn.Linear(6, 2)
    small.load_state_dict(big.state_dict())
    train(big, _data(), _cfg(tmp_path / "a", batch_size=32, shuffle=False, optimizer="sgd"))
    train(small, _data(), _cfg(tmp_path / "b", batch_size=16, grad_accum_steps=2, shuffle=False, optimizer="sgd"))
    torch.testing.assert_close(_params(big), _params(small), rtol=1e-5, atol=1e-6)


def test_only_given_params_train(tmp_path: Path) -> None:
    model = _model()
    frozen = model[0].weight.detach().clone()
    train(model, _data(), _cfg(tmp_path, max_steps=3), params=list(model[3].parameters()))
    assert torch.equal(model[0].weight, frozen)


def test_bad_config_and_resume_path(tmp_path: Path) -> None:
    with pytest.raises(BadInputError):
        _cfg(tmp_path, mixed_precision="fp8")
    with pytest.raises(BadInputError, match="not a slimkit checkpoint"):
        train(_model(), _data(), _cfg(tmp_path, resume_from=str(tmp_path)))


_WORKER = """
import sys
from pathlib import Path
import torch
from accelerate import PartialState
sys.path.insert(0, {tests!r})
from test_train import _cfg, _data, _model, _params
from slimkit.train import train

out = Path({out!r})


def loss_fn(model, batch):
    x, y = batch
    rank = PartialState().process_index  # not before train(): it sets up the CPU process group
    extra = {{"rank": float(rank)}} | ({{"only_rank0": 7.0}} if rank == 0 else {{}})
    return torch.nn.functional.cross_entropy(model(x), y), extra


model = _model()
train(model, _data(), _cfg(out / "run", max_steps=6, batch_size=8, checkpoint_every=3, log_every=1), loss_fn=loss_fn)
torch.save(_params(model), out / f"rank{{PartialState().process_index}}.pt")
"""


def test_accelerate_launch_two_cpu_processes_end_identical(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # `--cpu` alone starts one process in accelerate 1.x (multi-CPU goes through mpirun);
    # `--multi_gpu` launches through torchrun, and slimkit falls back to CPU + gloo.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "0", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    w0, w1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(w0, w1)
    assert not torch.equal(w0, _params(_model()))  # it trained
    assert (tmp_path / "run" / "checkpoints" / "step_3" / "trainer_state.json").is_file()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6  # extras are averaged over processes like the loss; a name one process lacks, over the rest
    assert all(row["rank"] == 0.5 and row["only_rank0"] == 7.0 for row in rows)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("checkpoint_every", -1, "checkpoint_every must be >= 0, got -1"),
        ("log_every", 0, "log_every must be >= 1, got 0"),
        ("lr", 0.0, "lr must be > 0, got 0.0"),
        ("lr", float("nan"), "lr must be > 0, got nan"),
        ("warmup_steps", -2, "warmup_steps must be >= 0, got -2"),
        ("max_grad_norm", 0.0, "max_grad_norm must be > 0 (or None), got 0.0"),
        ("num_workers", -1, "num_workers must be >= 0, got -1"),
        ("weight_decay", -0.1, "weight_decay must be >= 0, got -0.1"),
        ("min_lr", -1e-3, "min_lr must be >= 0, got -0.001"),
        ("batch_size", 0, "batch_size must be >= 1, got 0"),
    ],
)
def test_config_validation(tmp_path: Path, field: str, value: Any, message: str) -> None:
    with pytest.raises(BadInputError, match=f"^{re.escape(message)}$"):
        _cfg(tmp_path, **{field: value})
    assert not any(tmp_path.iterdir())


def _fake_checkpoint(path: Path, step: int | None, marker: str | None = None) -> None:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"x")
    if marker is not None:
        (path / "trainer_state.json").write_text(marker)
    elif step is not None:
        (path / "trainer_state.json").write_text(json.dumps({"step": step, "micro": step}))


def test_find_latest_checkpoint_reads_the_marker_and_skips_incomplete(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    assert find_latest_checkpoint(tmp_path) is None
    _fake_checkpoint(root / "step_4", 4)
    _fake_checkpoint(root / "step_12", None)  # save_state finished, marker never written
    _fake_checkpoint(root / "step_16", None, marker='{"step": 16')  # torn marker
    _fake_checkpoint(root / ".tmp-step_20-0123456789ab", 20)  # complete but never switched in...
    _fake_checkpoint(root / "step_20", 8)  # ...because step_20 holds a complete one: the visible one wins
    assert find_latest_checkpoint(tmp_path) == root / "step_20"  # newest by marker step (8 > 4)
    _fake_checkpoint(root / "final", 8)
    assert find_latest_checkpoint(tmp_path) == root / "final"  # a tie goes to final
    _fake_checkpoint(root / ".old-final-0123456789ab", 6)  # left by a finished switch
    assert find_latest_checkpoint(tmp_path) == root / "final"


def test_mid_switch_stand_in_is_recovered(tmp_path: Path) -> None:
    from slimkit.train import recover_checkpoints

    root = tmp_path / "checkpoints"
    _fake_checkpoint(root / "step_4", 4)
    _fake_checkpoint(root / ".old-final-0123456789ab", 8)  # killed after moving the old final aside
    _fake_checkpoint(root / ".tmp-final-0123456789ab", 12)  # and before renaming the new one in
    _fake_checkpoint(root / ".tmp-step_16-aaaaaaaaaaaa", None)  # an unfinished write
    (tmp_path / ".metrics.jsonl.abcd1234.tmp").write_text("partial")
    (root / "step_4" / ".trainer_state.json.abcd_123.tmp").write_text("{")
    assert find_latest_checkpoint(tmp_path) == root / ".tmp-final-0123456789ab"
    recover_checkpoints(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["final", "step_4"]
    assert json.loads((root / "final" / "trainer_state.json").read_text())["step"] == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]
    assert sorted(p.name for p in (root / "step_4").iterdir()) == ["model.safetensors", "trainer_state.json"]
    # only the old one survived: it is put back
    _fake_checkpoint(root / ".old-step_4-0123456789ab", 4)
    import shutil

    shutil.rmtree(root / "step_4")
    recover_checkpoints(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["final", "step_4"]


def test_resume_truncates_metrics_and_fresh_start_refuses_old_checkpoints(tmp_path: Path) -> None:
    model = _model()
    with pytest.raises(KeyboardInterrupt):
        train(model, _data(), _cfg(tmp_path, checkpoint_every=4, log_every=1), callbacks=[Recorder(stop_at=7)])
    metrics = tmp_path / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]  # killed in step 7, before its row
    # a line that cannot be read (or has no numeric step) is dropped, the rows after it are kept
    metrics.write_text("\n".join([*lines[:2], '{"step": 2.5, "lo', '{"step": "3"}', "[3]", *lines[2:]]) + "\n")
    ckpts = tmp_path / "checkpoints"
    resume = str(ckpts / "step_4")  # the latest one, named explicitly
    train(_model(), _data(), _cfg(tmp_path, checkpoint_every=4, log_every=1, resume_from=resume), callbacks=[Recorder()])
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # 5, 6 were dropped and written again, not doubled
    assert sorted(p.name for p in ckpts.iterdir()) == ["final", "step_4", "step_8"]
    # a fresh run in the same folder neither deletes the earlier run's checkpoints nor mixes with them
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    message = (f"{tmp_path} holds checkpoints of an earlier run: resume it (resume_from='latest', --resume latest) "
               "or choose a new output folder")
    with pytest.raises(BadInputError, match=f"^{re.escape(message)}$"):
        train(_model(), _data(), _cfg(tmp_path, max_steps=3))
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def _indexed_data(n: int = 32) -> TensorDataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=gen)
    return TensorDataset(x, (x[:, 0] > 0).long(), torch.arange(n))


def _seen_order(tmp: Path, **kw: Any) -> list[list[int]]:
    """Sample ids of every batch, in the order the loop fed them."""
    seen: list[list[int]] = []

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        seen.append(batch[2].tolist())
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])

    train(_model(), _indexed_data(), _cfg(tmp, batch_size=8, max_steps=12, **kw), loss_fn=loss)
    return seen


def _epochs(batches: list[list[int]], per_epoch: int = 4) -> list[list[int]]:
    """Concatenate batches into epochs (32 samples / batch 8 = 4 steps an epoch)."""
    return [[i for batch in batches[s : s + per_epoch] for i in batch] for s in range(0, len(batches), per_epoch)]


def test_every_epoch_is_a_new_permutation_and_the_order_is_reproducible(tmp_path: Path) -> None:
    seen = _seen_order(tmp_path / "a")
    epochs = _epochs(seen)
    for epoch in epochs:
        assert sorted(epoch) == list(range(32))  # every sample exactly once per epoch
    assert len({tuple(e) for e in epochs}) == 3  # a new order every epoch
    assert all(e != list(range(32)) for e in epochs)
    assert _seen_order(tmp_path / "b") == seen  # same seed, same batches
    assert _seen_order(tmp_path / "c", seed=1) != seen
    plain = _seen_order(tmp_path / "d", shuffle=False)
    assert _epochs(plain) == [list(range(32))] * 3


class LrRecorder:
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def after_backward(self, ctx: TrainContext) -> None:  # the rate the coming optimizer step uses
        self.lrs.append(ctx.optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("scheduler", ["constant", "cosine", "step"])
def test_warmup_then_schedule_gives_the_rate_of_every_step(tmp_path: Path, scheduler: str) -> None:
    rec = LrRecorder()
    lr, low, warm, total = 0.1, 0.01, 4, 12
    cfg = _cfg(tmp_path, lr=lr, min_lr=low, warmup_steps=warm, max_steps=total, scheduler=scheduler, step_at=0.75, step_gamma=0.2)
    train(_model(), _data(), cfg, callbacks=[rec])
    expected = [lr * (i + 1) / warm for i in range(warm)]
    for i in range(warm, total):
        if scheduler == "constant":
            expected.append(lr)
        elif scheduler == "step":  # 6 of the 8 post-warm-up steps at lr, then lr x 0.2
            expected.append(lr if i < warm + 6 else 0.2 * lr)
        else:
            expected.append(low + (lr - low) * 0.5 * (1 + math.cos(math.pi * (i - warm) / (total - warm))))
    assert rec.lrs == pytest.approx(expected, rel=1e-12, abs=1e-15)


class GradRecorder:
    def __init__(self) -> None:
        self.grads: list[torch.Tensor] = []

    def after_backward(self, ctx: TrainContext) -> None:  # before clipping, per the API
        self.grads.append(torch.cat([p.grad.detach().flatten().clone() for p in ctx.model.parameters()]))


def test_max_grad_norm_clips_the_update_to_the_given_norm(tmp_path: Path) -> None:
    model, rec = _model(), GradRecorder()
    before = _params(model).clone()
    cfg = _cfg(tmp_path, max_steps=1, optimizer="sgd", lr=0.5, scheduler="constant", max_grad_norm=0.05)
    train(model, _data(), cfg, callbacks=[rec])
    (grad,) = rec.grads
    norm = float(grad.norm())
    assert norm > 0.05  # the clip is active
    # first SGD step (momentum buffer = gradient): the update is lr times the clipped gradient
    expected = before - 0.5 * grad * (0.05 / (norm + 1e-6))
    assert torch.allclose(_params(model), expected, rtol=0, atol=1e-7)
    assert float((before - _params(model)).norm()) == pytest.approx(0.5 * 0.05, rel=1e-4)


def test_fp16_with_max_grad_norm_unscales_once_per_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_accelerate_state: None
) -> None:
    """fp16 unscales before after_backward; the clip must not unscale again (GradScaler raises on a second
    unscale_ in one step, so a CUDA fp16 run with max_grad_norm failed on its first step)."""
    from accelerate import Accelerator

    real = Accelerator.unscale_gradients
    unscaled: list[int] = []

    def unscale_once(self: Any, optimizer: Any = None) -> None:
        step = len(rec.grads)  # after_backward has not run yet for the step being unscaled
        if step in unscaled:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update().")
        unscaled.append(step)
        real(self, optimizer)

    monkeypatch.setattr(Accelerator, "unscale_gradients", unscale_once)
    model, rec = _model(), GradRecorder()
    before = _params(model).clone()
    cfg = _cfg(tmp_path, max_steps=1, optimizer="sgd", lr=0.5, scheduler="constant", max_grad_norm=0.05,
               mixed_precision="fp16")
    train(model, _data(), cfg, callbacks=[rec])
    assert unscaled == [0]
    (grad,) = rec.grads
    assert float(grad.norm()) > 0.05  # the clip is active and still applied
    assert float((before - _params(model)).norm()) == pytest.approx(0.5 * 0.05, rel=1e-4)


# --- one small run checked for everything a user reads back ------------------------------------


class _Samples(torch.utils.data.Dataset):
    """``n`` samples ``(x, y, id, in_worker)``; ``in_worker`` says a loader worker process built it."""

    def __init__(self, n: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 6, generator=gen)
        self.y = self.x[:, 0] - 0.5 * self.x[:, 1]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
        return self.x[i], self.y[i], i, torch.utils.data.get_worker_info() is not None


def _collate(items: list[tuple[torch.Tensor, torch.Tensor, int, bool]]) -> dict[str, Any]:
    return {"x": torch.stack([it[0] for it in items]), "y": torch.stack([it[1] for it in items]),
            "ids": [it[2] for it in items], "in_worker": all(it[3] for it in items)}


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.lin = nn.Linear(6, 1)
        self.aux = nn.Parameter(torch.tensor([0.5]))  # only the very first micro-batch uses it


class _Loss:
    """Records every micro-batch's ids, loss and extra metric, as the loop saw them."""

    def __init__(self) -> None:
        self.ids: list[list[int]] = []
        self.losses: list[float] = []
        self.errs: list[float] = []
        self.in_worker: list[bool] = []

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        pred = model.lin(batch["x"]).squeeze(-1)
        loss = torch.nn.functional.mse_loss(pred.float(), batch["y"])
        if not self.ids:
            loss = loss + model.aux.square().sum()
        err = float((pred.detach().float() - batch["y"]).abs().mean())
        self.ids.append(batch["ids"])
        self.in_worker.append(batch["in_worker"])
        self.losses.append(float(loss.detach()))
        self.errs.append(err)
        return loss, {"err": err}


class _Hooks:
    """Every hook call in order; has ``state_dict`` but no ``load_state_dict``, so it is not checkpointed."""

    def __init__(self, loss: _Loss | None = None) -> None:
        self.loss = loss
        self.events: list[tuple[Any, ...]] = []
        self.start: dict[str, Any] = {}

    def on_train_start(self, ctx: TrainContext) -> None:
        self.events.append(("start", ctx.step))
        self.start = {"model": ctx.model, "accelerator": ctx.accelerator, "config": ctx.config,
                      "lr": ctx.optimizer.param_groups[0]["lr"], "scheduler_lr": ctx.scheduler.get_last_lr()}

    def after_backward(self, ctx: TrainContext) -> None:
        self.events.append(("backward", ctx.step, len(self.loss.ids) if self.loss else None))

    def on_step_end(self, ctx: TrainContext) -> None:
        self.events.append(("step", ctx.step, dict(ctx.metrics), float(ctx.model.aux.detach())))

    def on_train_end(self, ctx: TrainContext) -> None:
        self.events.append(("end", ctx.step))

    def state_dict(self) -> dict[str, int]:
        return {"events": len(self.events)}


class _Terminal:
    """A stand-in for a terminal on stderr."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def _f32(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.float32))


def test_one_run_logs_exact_metrics_hooks_checkpoints_and_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "not" / "yet" / "run"  # parent folders are created
    # 22 samples, batch 4: 5 full batches an epoch, the last 2 samples are dropped; 3 micro-batches
    # a step, so 4 steps read 12 batches across 3 epochs (and one loader worker builds them).
    cfg = _cfg(out, max_steps=4, batch_size=4, grad_accum_steps=3, shuffle=False, optimizer="sgd", lr=0.1,
               min_lr=0.01, warmup_steps=1, log_every=3, checkpoint_every=2, num_workers=1, progress=True)
    loss, tty = _Loss(), _Terminal()
    hooks = _Hooks(loss)
    monkeypatch.setattr("sys.stderr", tty)
    model = _Net()
    result = train(model, _Samples(22), cfg, loss_fn=loss, callbacks=[hooks], collate_fn=_collate)

    # the data: in order, full batches only, built in a worker
    assert loss.ids == [list(range(4 * (k % 5), 4 * (k % 5) + 4)) for k in range(12)]
    assert all(loss.in_worker)
    # the hooks: 3 micro-batches before each after_backward, then on_step_end
    assert hooks.events[0] == ("start", 0) and hooks.events[-1] == ("end", 4)
    assert [e[:3] for e in hooks.events[1:-1] if e[0] == "backward"] == [("backward", s, 3 * (s + 1)) for s in range(4)]
    steps = [e for e in hooks.events if e[0] == "step"]
    assert [e[1] for e in steps] == [1, 2, 3, 4]
    assert [e[0] for e in hooks.events[1:-1]] == ["backward", "step"] * 4
    start = hooks.start
    assert start["model"] is model and start["config"] is cfg
    assert start["lr"] == start["scheduler_lr"][0] == pytest.approx(0.1)  # step 0 of a one-step warm-up
    assert start["accelerator"].is_main_process and start["accelerator"].project_dir == str(out)
    # a parameter the loss did not touch in a step is left alone by that step (no stale momentum)
    assert len({e[3] for e in steps}) == 1 and steps[0][3] != 0.5

    # the metrics: each step's loss and extra metrics are the means over its 3 micro-batches;
    # lr is the rate after the scheduler stepped (cosine from 0.1 after the warm-up to 0.01)
    def expected(step: int) -> dict[str, float]:
        window = slice(3 * (step - 1), 3 * step)
        lr = 0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * (step - 1) / 3))
        return {"step": step, "loss": _f32(sum(loss.losses[window]) / 3), "lr": lr, "err": sum(loss.errs[window]) / 3}

    for event in steps:
        assert event[2] == pytest.approx(expected(event[1]), rel=1e-12)
        assert list(event[2]) == ["step", "loss", "lr", "err"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows == [steps[2][2], steps[3][2]]  # every log_every=3 steps, and the last step
    assert result.metrics == rows
    assert result.steps == 4 and result.final_loss == rows[-1]["loss"]
    assert result.checkpoint_dir == str(out / "checkpoints" / "final") and result.output_dir == str(out)
    assert result.to_dict() == {"steps": 4, "final_loss": rows[-1]["loss"], "metrics": rows,
                                "checkpoint_dir": str(out / "checkpoints" / "final"), "output_dir": str(out)}
    # checkpoints: step_2 (every 2 steps, but not at the last step: that is `final`)
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["final", "step_2"]
    assert json.loads((ckpts / "step_2" / "trainer_state.json").read_text()) == {"step": 2, "micro": 6}
    assert json.loads((ckpts / "final" / "trainer_state.json").read_text()) == {"step": 4, "micro": 12}
    # the progress bar on a terminal: "train", optimizer steps out of max_steps, the running loss
    last = tty.text.split("\r")[-1]
    assert last.startswith("train: 100%") and "4/4 [" in last and f"loss={result.final_loss:.4f}]" in last

    # Resuming the finished run at its last step trains nothing and says so; with progress=False
    # no bar is drawn, even on a terminal.
    tty.text = ""
    again = _Hooks()
    resumed = train(_Net(), _Samples(22), dataclasses.replace(cfg, resume_from=str(ckpts / "final"), progress=False),
                    loss_fn=_Loss(), callbacks=[again], collate_fn=_collate)
    assert again.events == [("start", 4), ("end", 4)]
    assert resumed.steps == 4 and math.isnan(resumed.final_loss) and resumed.metrics == []
    assert [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] == rows
    assert sorted(p.name for p in ckpts.iterdir()) == ["final", "step_2"]
    assert "train:" not in tty.text


@pytest.fixture
def fresh_accelerate_state() -> Any:
    """accelerate keeps one process-wide state; a run in another precision needs it reset (and after)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_bf16_run_on_one_sample_flushes_every_checkpoint_file_before_its_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_accelerate_state: None
) -> None:
    """An explicit precision is used as given; a dataset smaller than a batch still trains; every file of a
    checkpoint is flushed before its marker is written, and a filesystem that refuses fsync (on folders, or
    on read-only handles as Windows does) does not fail the save."""
    import errno
    import os

    fcntl = pytest.importorskip("fcntl")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.isdir(path):  # as some filesystems do: fsync on a folder is refused
            raise OSError(errno.EINVAL, "Invalid argument")
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:  # as on Windows: needs a writable handle
            raise OSError(errno.EBADF, "Bad file descriptor")
        real_fsync(fd)
        synced.append(path)  # only the flushes that took effect

    if Path("/proc/self/fd").is_dir():
        monkeypatch.setattr(os, "fsync", fsync)
    # one sample, smaller than a batch: every step sees that one sample; each step is logged
    loss, hooks = _Loss(), _Hooks()
    cfg = _cfg(tmp_path, max_steps=2, batch_size=4, shuffle=False, mixed_precision="bf16", log_every=1,
               scheduler="constant", lr=0.1)
    result = train(_Net(), _Samples(1), cfg, loss_fn=loss, callbacks=[hooks], collate_fn=_collate)
    assert hooks.start["accelerator"].mixed_precision == "bf16"
    assert loss.ids == [[0], [0]] and not any(loss.in_worker)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == result.metrics == [{"step": s + 1, "loss": _f32(loss.losses[s]), "lr": 0.1, "err": loss.errs[s]}
                                      for s in range(2)]
    if Path("/proc/self/fd").is_dir():
        final = tmp_path / "checkpoints" / "final"
        files = sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file())
        assert "model.safetensors" in files and "trainer_state.json" in files
        order = {}
        for i, path in enumerate(synced):
            inside = path.split("/.tmp-final-", 1)[-1].split("/", 1)  # [token, name] for a file in the folder
            if "/.tmp-final-" in path and len(inside) == 2:
                order.setdefault(inside[1], i)
        marker = [i for name, i in order.items() if name.startswith(".trainer_state.json.")]
        assert len(marker) == 1
        assert all(order[name] < marker[0] for name in files if name != "trainer_state.json")


def test_train_refuses_nothing_to_train_and_an_empty_dataset(tmp_path: Path) -> None:
    model = _model()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(BadInputError, match=r"^nothing to train: no parameter requires grad$"):
        train(model, _data(), _cfg(tmp_path / "a"))
    with pytest.raises(BadInputError, match=f"^{re.escape('the training dataset is empty')}$"):
        train(_model(), TensorDataset(torch.empty(0, 6), torch.empty(0, dtype=torch.long)), _cfg(tmp_path / "b"))


class _TorchOnABf16Gpu:
    """``torch`` as slimkit.train sees it on a machine with a bf16-capable GPU (accelerate still runs on CPU)."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.cuda = SimpleNamespace(is_available=lambda: True, is_bf16_supported=lambda *a, **k: True)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


@pytest.mark.parametrize(("cpu", "expected"), [(True, "no"), (False, "bf16")])
def test_auto_precision_on_a_bf16_gpu_machine_unless_cpu_is_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_accelerate_state: None, cpu: bool, expected: str
) -> None:
    import slimkit.train as slim_train

    monkeypatch.setattr(slim_train, "torch", _TorchOnABf16Gpu())
    hooks = _Hooks()
    train(_Net(), _Samples(4), _cfg(tmp_path, max_steps=1, batch_size=4, cpu=cpu), loss_fn=_Loss(), callbacks=[hooks],
          collate_fn=_collate)
    assert hooks.start["accelerator"].mixed_precision == expected
