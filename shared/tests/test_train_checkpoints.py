"""The pieces of slimkit.train that need no training run: checkpoint markers, which checkpoint is
the newest complete one, start-up recovery, the default optimizer and schedule, mixed precision per
device, the data order, and config validation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from slimkit.train import (
    EpochSampler,
    TrainConfig,
    clear_run,
    default_optimizer,
    default_scheduler,
    find_latest_checkpoint,
    read_checkpoint_marker,
    recover_checkpoints,
    resolve_mixed_precision,
)
from slimkit.train import _switch_into_place as switch_into_place


def _ckpt(path: Path, step: int | None, micro: int | None = None, payload: bytes = b"x") -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(payload)
    if step is not None:
        (path / "trainer_state.json").write_text(json.dumps({"step": step, "micro": step if micro is None else micro}))
    return path


# --- the switch of a finished checkpoint into place -------------------------------------------


def test_switch_into_a_free_name_moves_nothing_aside(tmp_path: Path) -> None:
    new = _ckpt(tmp_path / ".tmp-step_2-aaaaaaaaaaaa", 2, payload=b"new")
    assert switch_into_place(new, tmp_path / "step_2", tmp_path / ".old-step_2-aaaaaaaaaaaa") is None
    assert (tmp_path / "step_2" / "model.safetensors").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_2"]


def test_switch_over_a_folder_already_there_moves_it_aside_first(tmp_path: Path) -> None:
    """The rename is tried first, so a folder that appears after any check is still moved aside."""
    _ckpt(tmp_path / "step_2", 2, payload=b"old")
    new = _ckpt(tmp_path / ".tmp-step_2-aaaaaaaaaaaa", 2, payload=b"new")
    old = switch_into_place(new, tmp_path / "step_2", tmp_path / ".old-step_2-aaaaaaaaaaaa")
    assert old == tmp_path / ".old-step_2-aaaaaaaaaaaa"
    assert (tmp_path / "step_2" / "model.safetensors").read_bytes() == b"new"
    assert (old / "model.safetensors").read_bytes() == b"old"
    assert not new.exists()


# --- read_checkpoint_marker -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"step": 0, "micro": 0}', {"step": 0, "micro": 0}),  # zero is a valid count
        ('{"step": 3, "micro": 0}', {"step": 3, "micro": 0}),
        ('{"step": 0, "micro": 7}', {"step": 0, "micro": 7}),
        ('{"step": 4, "micro": 12, "note": "extra keys are ignored"}', {"step": 4, "micro": 12}),
        ('{"step": -1, "micro": 0}', None),
        ('{"step": 0, "micro": -1}', None),
        ('{"step": "4", "micro": 0}', None),
        ('{"step": 4, "micro": "x"}', None),
        ('{"step": 4.0, "micro": 4}', None),
        ('{"step": 4}', None),
        ("[4, 4]", None),
        ('{"step": 4, "mic', None),  # torn write
    ],
)
def test_read_checkpoint_marker_accepts_only_two_non_negative_ints(tmp_path: Path, text: str, expected: Any) -> None:
    (tmp_path / "trainer_state.json").write_text(text)
    assert read_checkpoint_marker(tmp_path) == expected


def test_read_checkpoint_marker_without_marker_is_none(tmp_path: Path) -> None:
    assert read_checkpoint_marker(tmp_path) is None
    assert read_checkpoint_marker(tmp_path / "missing") is None


# --- which checkpoint is the newest complete one ------------------------------------------------


def test_same_step_rewrite_killed_mid_switch_prefers_the_new_write(tmp_path: Path) -> None:
    # A finished 8-step run resumed with max_steps=8 rewrites `final` at the same step; killed after
    # the old one was moved aside and before the new one was renamed in, both are complete.
    root = tmp_path / "checkpoints"
    _ckpt(root / ".old-final-0123456789ab", 8, payload=b"old")
    new = _ckpt(root / ".tmp-final-ffffffffffff", 8, payload=b"new")
    assert find_latest_checkpoint(tmp_path) == new
    recover_checkpoints(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["final"]
    assert (root / "final" / "model.safetensors").read_bytes() == b"new"


def test_newest_stand_in_wins_whatever_its_token(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    _ckpt(root / ".tmp-final-000000000000", 12, payload=b"twelve")
    _ckpt(root / ".tmp-final-ffffffffffff", 8, payload=b"eight")
    _ckpt(root / ".old-step_4-000000000000", 4, payload=b"four-old")
    _ckpt(root / ".tmp-step_4-ffffffffffff", 3, payload=b"three")
    assert find_latest_checkpoint(tmp_path) == root / ".tmp-final-000000000000"
    recover_checkpoints(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["final", "step_4"]
    assert (root / "final" / "model.safetensors").read_bytes() == b"twelve"
    assert (root / "step_4" / "model.safetensors").read_bytes() == b"four-old"


def test_other_hidden_folders_are_never_checkpoints(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    _ckpt(root / "step_4", 4)
    _ckpt(root / ".backup-final", 99)  # hidden, not one of ours: never chosen, never touched
    _ckpt(root / ".tmp-step_8-unfinished", 8)  # a `.tmp-*` folder without our token: deleted
    assert find_latest_checkpoint(tmp_path) == root / "step_4"
    recover_checkpoints(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == [".backup-final", "step_4"]


def test_recovery_removes_every_stray_temp_file_and_survives_what_it_cannot_remove(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    names = ["final", "step_2", "step_4", "step_6"]
    for name in names:
        _ckpt(root / name, int(name.split("_")[-1]) if "_" in name else 8)
        (root / name / ".optimizer.bin.abcd1234.tmp").write_text("partial")
    for i in range(4):  # plain files among the checkpoint folders
        (root / f".trainer_state.json.abcdef{i:02d}.tmp").write_text("{")
        (root / f"notes{i}.txt").write_text("kept")
    (tmp_path / ".metrics.jsonl.abcd1234.tmp").write_text("partial")
    (root / ".tmp-final-0123456789ab").write_text("a file where a folder was expected")
    recover_checkpoints(tmp_path)  # does not raise on a leftover it cannot delete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]
    assert sorted(p.name for p in root.iterdir()) == sorted([*names, *(f"notes{i}.txt" for i in range(4)),
                                                             ".tmp-final-0123456789ab"])
    for name in names:
        assert sorted(p.name for p in (root / name).iterdir()) == ["model.safetensors", "trainer_state.json"]


def test_clear_run_removes_checkpoints_and_metrics_only(tmp_path: Path) -> None:
    _ckpt(tmp_path / "checkpoints" / "final", 8)
    (tmp_path / "metrics.jsonl").write_text('{"step": 8}\n')
    (tmp_path / "report.json").write_text("{}")
    clear_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    clear_run(tmp_path)  # nothing left to remove is fine
    clear_run(tmp_path / "missing")


# --- defaults: optimizer, schedule, mixed precision, data order --------------------------------


def _config(**kw: Any) -> TrainConfig:
    return TrainConfig(output_dir="unused", **{"max_steps": 4, **kw})


def test_default_optimizers_and_their_settings() -> None:
    p = nn.Parameter(torch.zeros(3))
    sgd = default_optimizer([p], _config(optimizer="sgd", lr=0.2, weight_decay=0.01))
    assert type(sgd) is torch.optim.SGD
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (0.2, 0.9, 0.01)
    adamw = default_optimizer([p], _config(lr=0.3, weight_decay=0.05))
    assert type(adamw) is torch.optim.AdamW
    assert (adamw.defaults["lr"], adamw.defaults["weight_decay"], adamw.defaults["betas"]) == (0.3, 0.05, (0.9, 0.999))


def _rates(steps: int, **kw: Any) -> list[float]:
    p = nn.Parameter(torch.zeros(1))
    cfg = _config(**kw)
    opt = torch.optim.SGD([p], lr=cfg.lr)
    sched = default_scheduler(opt, cfg)
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


def test_cosine_reaches_min_lr_on_the_last_step_and_stays_there() -> None:
    # one step after a two-step warm-up: that single step runs at lr, the schedule then sits at min_lr
    assert _rates(6, max_steps=3, warmup_steps=2, lr=0.1, min_lr=0.01) == pytest.approx([0.05, 0.1, 0.1, 0.01, 0.01, 0.01])
    # a one-step run: lr for its step, min_lr after it
    assert _rates(3, max_steps=1, lr=0.1, min_lr=0.02) == pytest.approx([0.1, 0.02, 0.02])
    cos = [0.02 + 0.08 * 0.5 * (1 + math.cos(math.pi * i / 4)) for i in range(5)]
    assert _rates(7, max_steps=4, lr=0.1, min_lr=0.02) == pytest.approx([*cos, 0.02, 0.02])
    assert _rates(5, max_steps=2, scheduler="constant", warmup_steps=2, lr=0.1) == pytest.approx([0.05, 0.1, 0.1, 0.1, 0.1])


@pytest.mark.parametrize(
    ("requested", "cpu", "cuda", "bf16", "expected"),
    [
        ("auto", False, True, True, "bf16"),
        ("auto", False, True, False, "fp16"),
        ("auto", False, False, False, "no"),
        ("auto", True, True, True, "no"),  # cpu=True: full precision even where a GPU is present
        ("auto", True, False, False, "no"),
        ("no", False, True, True, "no"),  # an explicit choice is kept as given
        ("fp16", False, True, True, "fp16"),
        ("bf16", True, False, False, "bf16"),
        ("fp16", True, False, False, "fp16"),
    ],
)
def test_resolve_mixed_precision_per_device(monkeypatch: pytest.MonkeyPatch, requested: str, cpu: bool, cuda: bool,
                                            bf16: bool, expected: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert resolve_mixed_precision(requested, cpu) == expected


def test_resolve_mixed_precision_defaults_to_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_mixed_precision("auto") == "bf16"


def test_epoch_sampler_order_is_a_fixed_function_of_seed_and_epoch() -> None:
    # The order of (seed, epoch) must not change between versions: a run resumed after an upgrade
    # would otherwise see different batches than the run it continues.
    def expected(seed: int, epoch: int) -> list[int]:
        return torch.randperm(10, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()

    sampler = EpochSampler(10, seed=3)  # shuffles by default, starting at epoch 0
    assert sampler.shuffle and len(sampler) == 10
    assert list(sampler) == expected(3, 0)
    sampler.use_epoch(2)
    assert list(sampler) == expected(3, 2)
    assert list(EpochSampler(10, seed=3, shuffle=False)) == list(range(10))


# --- config validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_steps", 0, "max_steps must be >= 1, got 0"),
        ("grad_accum_steps", 0, "grad_accum_steps must be >= 1, got 0"),
        ("mixed_precision", "fp8", "mixed_precision must be one of ('auto', 'no', 'fp16', 'bf16'), got 'fp8'"),
        ("optimizer", "adam", "optimizer must be 'adamw' or 'sgd', got 'adam'"),
        ("scheduler", "linear", "scheduler must be one of cosine, constant, step, got 'linear'"),
        ("step_at", 1.0, "step_at must be in (0, 1) and step_gamma in (0, 1], got 1.0 and 0.1"),
        ("step_gamma", 0.0, "step_at must be in (0, 1) and step_gamma in (0, 1], got 0.6666666666666666 and 0.0"),
        # accelerate's set_seed takes 0..2^32-1 and raised a ValueError (a traceback) for others
        ("seed", -1, "seed must be in 0..4294967295, got -1"),
        ("seed", 2**32, "seed must be in 0..4294967295, got 4294967296"),
    ],
)
def test_config_validation_messages(field: str, value: Any, message: str) -> None:
    import re

    from slimkit.errors import BadInputError

    with pytest.raises(BadInputError, match=f"^{re.escape(message)}$"):
        _config(**{field: value})


def test_smallest_valid_config_is_accepted() -> None:
    cfg = TrainConfig(output_dir="x", max_steps=1, batch_size=1, grad_accum_steps=1, log_every=1, warmup_steps=0,
                      checkpoint_every=0, num_workers=0, weight_decay=0.0, min_lr=0.0, lr=1e-9, max_grad_norm=1e-9)
    assert (cfg.max_steps, cfg.batch_size, cfg.grad_accum_steps) == (1, 1, 1)
