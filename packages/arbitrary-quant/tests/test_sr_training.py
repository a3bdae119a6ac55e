"""FP EDSR training (L1 through slimkit.train), the saved-model folder, and Y-channel PSNR / SSIM scoring."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arbitrary_quant.config import DFSQConfig
from arbitrary_quant.edsr import EDSR
from arbitrary_quant.sr import evaluate_sr, psnr, sr_eval_pairs, sr_patches, ssim
from arbitrary_quant.sr_training import (
    META_KEY,
    EDSRSpec,
    evaluate_psnr,
    l1_loss,
    load_sr_model,
    save_sr_model,
    train_edsr,
)
from slimkit.errors import BadInputError, CorruptFileError
from slimkit.io import save_json, save_model
from slimkit.train import TrainConfig


def _full_l1(model: nn.Module, data: torch.utils.data.Dataset) -> float:
    lr = torch.stack([data[i][0] for i in range(len(data))])
    hr = torch.stack([data[i][1] for i in range(len(data))])
    with torch.no_grad():
        return float(l1_loss(model, (lr, hr)))


# --------------------------------------------------------------------------- training


def test_train_edsr_lowers_the_l1_loss(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = EDSR(scale=2, n_resblocks=1, n_feats=8)
    data = sr_patches("train", scale=2, patch_size=16, num_patches=32, seed=0)
    before = _full_l1(model, data)
    config = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=12, batch_size=8, lr=5e-3, cpu=True,
                         progress=False, log_every=1)  # fmt: skip
    result = train_edsr(model, data, config)
    after = _full_l1(model, data)
    assert result.steps == 12 and len(result.metrics) == 12
    assert after < 0.7 * before, (before, after)
    assert result.metrics[-1]["loss"] < result.metrics[0]["loss"]
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


def test_l1_loss_is_the_mean_absolute_error() -> None:
    model = nn.Upsample(scale_factor=2, mode="nearest")
    lr, hr = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 8, 8)
    assert float(l1_loss(model, (lr, hr))) == pytest.approx(float((model(lr) - hr).abs().mean()))
    assert torch.equal(l1_loss(model, [lr, hr]), F.l1_loss(model(lr), hr))


def test_train_edsr_refuses_bad_pairs_before_writing(tmp_path: Path) -> None:
    config = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=1, cpu=True, progress=False)
    images = torch.utils.data.TensorDataset(torch.rand(4, 3, 8, 8))
    with pytest.raises(BadInputError, match="pairs"):
        train_edsr(EDSR(), images, config)
    x3 = torch.utils.data.TensorDataset(torch.rand(4, 3, 8, 8), torch.rand(4, 3, 24, 24))
    with pytest.raises(BadInputError, match="2x the LR"):
        train_edsr(EDSR(scale=2), x3, config)
    with pytest.raises(BadInputError, match="empty"):
        train_edsr(EDSR(), torch.utils.data.TensorDataset(torch.rand(0, 3, 8, 8), torch.rand(0, 3, 16, 16)), config)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- save / load


def test_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = EDSR(scale=3, n_resblocks=2, n_feats=8, res_scale=0.5).eval()
    with torch.no_grad():
        model.rgb_mean.add_(0.01)  # a non-default buffer must come back too
    save_sr_model(tmp_path / "m", model, extra={"steps": 7})
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["config"]["_type"] == "EDSRSpec" and config[META_KEY] == {"steps": 7}
    for path in (tmp_path / "m", tmp_path / "m" / "model.safetensors"):
        loaded, extra = load_sr_model(path)
        assert extra == {"steps": 7}
        assert EDSRSpec.from_model(loaded) == EDSRSpec(scale=3, n_resblocks=2, n_feats=8, res_scale=0.5)
        own, back = model.state_dict(), loaded.state_dict()
        assert own.keys() == back.keys() and all(torch.equal(own[k], back[k]) for k in own)
        x = torch.rand(1, 3, 6, 6)
        assert torch.equal(model(x), loaded(x))


def test_save_refuses_a_non_edsr(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="EDSR"):
        save_sr_model(tmp_path / "m", nn.Conv2d(3, 3, 3))  # type: ignore[arg-type]


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_missing_corrupt_and_foreign_files_are_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="not found") as exc:
        load_sr_model(tmp_path / "nothing")
    _one_line(exc)
    good = tmp_path / "good"
    save_sr_model(good, EDSR(n_resblocks=1, n_feats=8))

    truncated = tmp_path / "truncated"
    save_sr_model(truncated, EDSR(n_resblocks=1, n_feats=8))
    blob = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CorruptFileError, match="corrupt") as exc:
        load_sr_model(truncated)
    _one_line(exc)

    garbled = tmp_path / "garbled"
    save_sr_model(garbled, EDSR(n_resblocks=1, n_feats=8))
    (garbled / "config.json").write_text("{not json")
    with pytest.raises(CorruptFileError) as exc:
        load_sr_model(garbled)
    _one_line(exc)

    foreign = tmp_path / "foreign"  # a quantized-model folder, say
    save_model(foreign, EDSR(n_resblocks=1, n_feats=8), DFSQConfig(bits=4))
    with pytest.raises(CorruptFileError, match="not an arbitrary-quant EDSR") as exc:
        load_sr_model(foreign)
    _one_line(exc)

    bad_field = tmp_path / "bad_field"
    save_sr_model(bad_field, EDSR(n_resblocks=1, n_feats=8))
    meta = json.loads((bad_field / "config.json").read_text())
    meta["config"]["n_feats"] = "eight"
    save_json(bad_field / "config.json", meta)
    with pytest.raises(CorruptFileError, match="bad EDSR description") as exc:
        load_sr_model(bad_field)
    _one_line(exc)

    mismatch = tmp_path / "mismatch"
    save_sr_model(mismatch, EDSR(n_resblocks=1, n_feats=8))
    meta = json.loads((mismatch / "config.json").read_text())
    meta["config"]["n_feats"] = 16
    save_json(mismatch / "config.json", meta)
    with pytest.raises(CorruptFileError, match="does not match") as exc:
        load_sr_model(mismatch)
    _one_line(exc)

    (good / "config.json").unlink()
    with pytest.raises(BadInputError, match=r"no config\.json") as exc:
        load_sr_model(good)
    _one_line(exc)


# --------------------------------------------------------------------------- scoring


def test_evaluate_psnr_of_bicubic_matches_sr_metrics() -> None:
    pairs = sr_eval_pairs("test", scale=2, max_size=64)
    model = nn.Upsample(scale_factor=2, mode="bicubic", align_corners=False)
    result = evaluate_psnr(model, pairs, 2)
    expected_psnr, expected_ssim = [], []
    for lr, hr in pairs:
        out = torch.round(model(lr[None])[0].clamp(0, 1) * 255) / 255
        expected_psnr.append(psnr(out, hr, 2))
        expected_ssim.append(ssim(out, hr, 2))
    assert result["images"] == len(pairs) == 3
    assert all(math.isfinite(v) and 20 < v < 60 for v in result["psnr_per_image"])
    assert result["psnr_per_image"] == pytest.approx(expected_psnr, abs=1e-9)
    assert result["ssim_per_image"] == pytest.approx(expected_ssim, abs=1e-9)
    assert result["psnr"] == pytest.approx(sum(expected_psnr) / 3, abs=1e-9)
    assert result["psnr"] == pytest.approx(evaluate_sr(model, pairs, 2)["psnr"], abs=1e-12)
    assert result["ssim"] == pytest.approx(evaluate_sr(model, pairs, 2)["ssim"], abs=1e-12)


def test_evaluate_psnr_refuses_mismatched_scales() -> None:
    pairs = sr_eval_pairs("test", scale=2, max_size=64)
    with pytest.raises(BadInputError, match="x3"):
        evaluate_psnr(EDSR(scale=3), pairs, 2)
    with pytest.raises(BadInputError, match="3x the LR"):
        evaluate_psnr(nn.Identity(), pairs, 3)
    with pytest.raises(BadInputError, match="empty"):
        evaluate_psnr(nn.Identity(), [], 2)
