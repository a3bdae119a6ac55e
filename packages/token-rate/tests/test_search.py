"""The DiffRate search loop: convergence toward the GMACs target, frozen backbone, label-free, resume."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

import token_rate
from slimkit.errors import BadInputError
from token_rate.models import digits_vit
from token_rate.search import SearchSettings, UnlabelledImages, search, search_train_config

TINY = dict(embed_dim=32, depth=4, num_heads=2, mlp_ratio=2.0)  # 64 patches + CLS, 4 blocks


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return digits_vit(**TINY).eval()


def _data(n: int = 96, seed: int = 0):
    from slimkit.data import digits

    ds = digits("train", size=32, seed=seed)
    x, y = ds.tensors
    return x[:n], y[:n]


def _cfg(tmp_path, steps, **kw):
    base = dict(batch_size=16, progress=False, log_every=1, cpu=True, lr=0.1, min_lr=0.01)
    return search_train_config(str(tmp_path), steps, **{**base, **kw})


def _gmacs_log(tmp_path):
    return [json.loads(line)["gmacs"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_search_moves_gmacs_toward_target(tmp_path):
    model = _model()
    baseline = token_rate.gmacs(model)
    settings = SearchSettings(target_ratio=0.6, flops_weight=20.0)
    sched = search(model, _data(), settings, train_config=_cfg(tmp_path, 30))
    target = 0.6 * baseline
    log = _gmacs_log(tmp_path)
    assert abs(log[-1] - target) < 0.5 * abs(log[0] - target)
    searched = sched.meta["searched_gmacs"]
    assert abs(searched - target) / target < 0.08
    # The reported GMACs are the analytic count of the exported schedule.
    dims = token_rate.model_dims(model)
    assert searched == pytest.approx(token_rate.gmacs(dims, sched))
    assert sched.target_gmacs == pytest.approx(target)
    # Effective counts are monotone, block 0 is never compressed.
    eff = sched.effective(dims.num_tokens)
    assert eff[0] == dims.num_tokens and all(a >= b for a, b in itertools.pairwise(eff))


def test_search_trains_only_the_logits_and_restores_the_model(tmp_path):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    search(model, _data(48), SearchSettings(target_ratio=0.5), train_config=_cfg(tmp_path, 3))
    assert not token_rate.is_patched(model)
    after = model.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags


def test_searched_schedule_applies_and_matches_its_gmacs(tmp_path):
    model = _model()
    out = tmp_path / "sched.json"
    sched = search(model, _data(48), SearchSettings(target_ratio=0.5, output=str(out)), train_config=_cfg(tmp_path, 4))
    loaded = token_rate.load_schedule(out)
    assert loaded.prune == sched.prune and loaded.merge == sched.merge
    assert loaded.meta["searched_gmacs"] == pytest.approx(sched.meta["searched_gmacs"])
    token_rate.patch(model, loaded)
    with torch.no_grad():
        logits = model(_data(4)[0])
    assert logits.shape == (4, 10)
    assert token_rate.last_token_counts(model) == loaded.effective(loaded.num_tokens)
    assert token_rate.gmacs(model) == pytest.approx(sched.meta["searched_gmacs"])


def test_label_free_search_needs_no_labels(tmp_path):
    model = _model()
    images = _data(48)[0]
    sched = search(
        model,
        images,
        SearchSettings(target_ratio=0.5, label_free=True, flops_weight=20.0),
        train_config=_cfg(tmp_path, 6),
    )
    assert sched.meta["settings"]["label_free"] is True
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # Distillation loss is a KL divergence: non-negative, and finite.
    assert all(row["task"] >= -1e-6 and row["task"] == row["task"] for row in log)
    target = 0.5 * token_rate.gmacs(model)
    assert abs(log[-1]["gmacs"] - target) < abs(log[0]["gmacs"] - target)


def test_labelled_search_without_labels_is_a_clear_error(tmp_path):
    with pytest.raises(BadInputError, match="label"):
        search(_model(), _data(32)[0], SearchSettings(target_ratio=0.5), train_config=_cfg(tmp_path, 1))


def test_resume_reproduces_an_uninterrupted_search(tmp_path):
    data = _data(64)
    full = search(_model(), data, SearchSettings(target_ratio=0.5), train_config=_cfg(tmp_path / "a", 6))
    run = tmp_path / "b"
    search(_model(), data, SearchSettings(target_ratio=0.5), train_config=_cfg(run, 6, checkpoint_every=3))
    assert (run / "checkpoints" / "step_3").is_dir()
    resumed = search(
        _model(),
        data,
        SearchSettings(target_ratio=0.5),
        train_config=_cfg(run, 6, resume_from=str(run / "checkpoints" / "step_3")),
    )
    assert resumed.prune == full.prune and resumed.merge == full.merge
    assert resumed.meta["final_loss"] == pytest.approx(full.meta["final_loss"], rel=1e-5)


def test_flops_warmup_keeps_lambda_off(tmp_path):
    settings = SearchSettings(target_ratio=0.3, flops_weight=50.0, flops_warmup_steps=100)
    search(_model(), _data(48), settings, train_config=_cfg(tmp_path, 3))
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # With lambda = 0 the loss is the task loss alone.
    for row in log:
        assert row["loss"] == pytest.approx(row["task"], rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one"),
        ({"target_gmacs": 1.0, "target_ratio": 0.5}, "exactly one"),
        ({"target_ratio": 1.5}, "target_ratio"),
        ({"target_gmacs": -1.0}, "target_gmacs"),
        ({"target_ratio": 0.5, "penalty": "cubic"}, "penalty"),
        ({"target_ratio": 0.5, "distill": "l1"}, "distill"),
    ],
)
def test_settings_validation(kwargs, match):
    with pytest.raises(BadInputError, match=match):
        SearchSettings(**kwargs)


def test_target_above_baseline_is_rejected(tmp_path):
    model = _model()
    with pytest.raises(BadInputError, match="not below"):
        search(model, _data(16), SearchSettings(target_gmacs=10.0), train_config=_cfg(tmp_path, 1))
    assert not token_rate.is_patched(model)


def test_unlabelled_folder(tmp_path):
    from PIL import Image

    (tmp_path / "sub").mkdir()
    for i, where in enumerate([tmp_path, tmp_path / "sub"]):
        Image.fromarray((torch.rand(10, 12, 3) * 255).byte().numpy()).save(where / f"im{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = UnlabelledImages(tmp_path, image_size=32, channels=1)
    assert len(ds) == 2 and ds[0].shape == (1, 32, 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no images"):
        UnlabelledImages(tmp_path / "empty", 32)
    with pytest.raises(BadInputError, match="not found"):
        UnlabelledImages(tmp_path / "missing", 32)
