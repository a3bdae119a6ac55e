"""The arbitrary-quant console script: train / eval / export / bops end to end, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from arbitrary_quant.bivit import BinaryLinear
from arbitrary_quant.checkpoints import load_quant_model
from arbitrary_quant.cli import build_parser, main
from arbitrary_quant.config import BiViTConfig, LSQConfig, MultiQuantConfig
from arbitrary_quant.edsr import EDSR
from arbitrary_quant.export import load_exported
from arbitrary_quant.multiquant import set_bits
from arbitrary_quant.sr import sr_eval_pairs
from arbitrary_quant.sr_training import evaluate_psnr, save_sr_model
from slimkit.data import digits
from slimkit.zoo import load_model


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    code, out, err = _run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def multiquant_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mq") / "run"
    assert main(["train", "--steps", "12", "--no-progress", "-o", str(out)]) == 0
    return out


def test_train_writes_a_reloadable_model_and_the_per_bit_report(multiquant_run: Path, capsys) -> None:
    result = json.loads((multiquant_run / "result.json").read_text())
    assert [r["bits"] for r in result["rows"]] == [2, 4, 6, 8] and result["steps"] == 12
    # BOPs(k) = k^2 x the MACs of the original layers (= one branch, the 2-bit row)
    one_branch = result["rows"][0]["body_macs"]
    assert [r["body_bops"] for r in result["rows"]] == [k * k * one_branch for k in (2, 4, 6, 8)]
    _, spec, config, extra = load_quant_model(multiquant_run / "model")
    assert isinstance(config, MultiQuantConfig) and (spec.name, spec.in_chans, spec.image_size) == ("small_resnet", 1, 8)
    assert extra["val_top1"] == {str(r["bits"]): r["top1"] for r in result["rows"]}
    evaluated = _json(capsys, "eval", str(multiquant_run / "model"))
    assert [r["top1"] for r in evaluated["rows"]] == [r["top1"] for r in result["rows"]]
    run = json.loads((multiquant_run / "run.json").read_text())
    assert run["config"]["_type"] == "MultiQuantConfig" and run["train"]["max_steps"] == 12


def test_export_is_packed_and_reloads_to_the_same_outputs(multiquant_run: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "packed.safetensors"
    report = _json(capsys, "export", str(multiquant_run / "model"), "-o", str(target))
    assert report["output"] == str(target) and target.stat().st_size == report["file_bytes"]
    assert 7.9 < report["bits_per_weight"] < 8.5  # G = 4 branches x 2 bits per original weight
    model, spec, config, _ = load_quant_model(multiquant_run / "model")
    fresh = load_exported(target, load_model(spec.name, spec.num_classes, spec.in_chans))
    x = digits("val").tensors[0][:16]
    model.eval()
    for bits in config.bit_list:
        set_bits(model, bits)
        set_bits(fresh, bits)
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=1e-4)


def test_baselines_train_through_the_same_command(tmp_path: Path, capsys) -> None:
    ap = _json(capsys, "train", "--method", "any-precision", "--bits", "2,8", "--steps", "3", "-o", str(tmp_path / "ap"))
    assert [r["bits"] for r in ap["rows"]] == [2, 8]
    assert ap["rows"][1]["body_bops"] == 16 * ap["rows"][0]["body_bops"]  # same MACs, (8/2)^2 more BOPs
    lsq = _json(capsys, "train", "--method", "lsq", "--bits", "4", "--steps", "3", "-o", str(tmp_path / "lsq"))
    assert [r["bits"] for r in lsq["rows"]] == [4]
    assert lsq["rows"][0]["body_bops"] == 16 * lsq["rows"][0]["body_macs"]
    _, _, config, _ = load_quant_model(tmp_path / "lsq" / "model")
    assert config == LSQConfig(w_bits=4, a_bits=4)


def test_bops_of_a_torchvision_resnet18_are_k_squared_macs(capsys) -> None:
    res = _json(capsys, "bops", "--model", "tv/resnet18", "--image-size", "224")
    assert res["fp_macs"] == 1_813_566_464  # the published 1.8 GMACs
    for row in res["rows"]:
        assert row["bops_over_macs"] == row["bits"] ** 2


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--bits", "2,3", "--groups", "1", "-o", "{tmp}/r"], "reaches 3 bits but 1 branches of 2 bits"),
        (["train", "--bits", "two", "-o", "{tmp}/r"], "--bits must be comma-separated integers"),
        (["train", "--method", "bivit", "--model", "small_resnet", "-o", "{tmp}/r"], "binarizes a timm ViT; 'small_resnet' is a CNN"),
        (["train", "--method", "bivit", "--image-size", "30", "-o", "{tmp}/r"], "not a multiple of the small ViT's 4x4"),
        (["train", "--method", "bivit", "--teacher", "{tmp}/none", "-o", "{tmp}/r"], "file not found"),
        (["train", "--method", "bivit", "--teacher-steps", "0", "-o", "{tmp}/r"], "--teacher-steps must be >= 1"),
        (["train", "--method", "lsq", "--bits", "2,4", "-o", "{tmp}/r"], "--method lsq trains one bit-width"),
        (["train", "--steps", "0", "-o", "{tmp}/r"], "--steps must be >= 1"),
        (["train", "--lr", "0", "-o", "{tmp}/r"], "--lr must be > 0"),
        (["train", "--data", "{tmp}/missing", "-o", "{tmp}/r"], "--data folder not found"),
        (["train", "--val-data", "{tmp}", "-o", "{tmp}/r"], "--val-data needs --data to be an image folder"),
        (["eval", "{tmp}/missing"], "checkpoint not found"),
        (["export", "{tmp}/missing", "-o", "{tmp}/x.safetensors"], "checkpoint not found"),
        (["bops", "--bits", "2,4,6,8,10"], "bit-widths 2..8"),
        (["bops", "--model", "no_such_net"], "unknown model 'no_such_net'"),
        (["bops", "--channels", "0"], "--channels must be >= 1"),
        (["bops", "--num-classes", "0"], "--num-classes must be >= 1"),
        (["bops", "--method", "bivit"], "counts a timm ViT"),
        (["calibrate", "{tmp}", "--eval-max-size", "0", "-o", "{tmp}/x.safetensors"], "--eval-max-size must be >= 1"),
        (["table", "--methods", "pact"], "--methods: unknown method 'pact'"),
        (["bench", "--repeats", "0"], "--repeats must be >= 1"),
        (["dfsq-table", "--bits", "a"], "--bits: cannot read 'a'"),
        (["dfsq-table", "--train-steps", "0"], "train_steps must be an integer >= 1"),
        (["bivit-table", "--seeds", "x"], "--seeds: cannot read 'x'"),
        (["calibrate", "{tmp}/missing", "-o", "{tmp}/x.safetensors"], "not found"),
        (["calibrate", "{tmp}", "-o", "{tmp}/x.pt"], "use one of .safetensors"),
        (["calibrate", "{tmp}", "--bits", "9", "-o", "{tmp}/x.safetensors"], "bits must be 2..8"),
        (["calibrate", "{tmp}", "--calib-data", "{tmp}/nope", "-o", "{tmp}/x.safetensors"], "--calib-data folder not found"),
        (["bench", "-o", "{tmp}/b.txt"], "use one of .json"),
        (["calibrate", "{tmp}", "--arch", "nocolon", "-o", "{tmp}/x.safetensors"], "--arch must be MODULE:CALLABLE"),
        (["calibrate", "{tmp}/w.pth", "--arch", "no_such_module_xyz:f", "-o", "{tmp}/x.safetensors"], "cannot import 'no_such_module_xyz'"),
        (["calibrate", "{tmp}", "--arch", "json:nothing", "-o", "{tmp}/x.safetensors"], "'json' has no callable 'nothing'"),
        (["calibrate", "{tmp}", "--arch", "json:loads", "--arch-kwargs", "[1]", "-o", "{tmp}/x.safetensors"], "--arch-kwargs must be a JSON object"),
        (["calibrate", "{tmp}", "--scale", "2", "-o", "{tmp}/x.safetensors"], "--scale and --arch-kwargs go with --arch"),
        (["table", "--seeds", "a"], "--seeds must be comma-separated integers"),
        (["table", "--bits", "1"], "bit-widths 2..8, got 1"),
        (["table", "--data", "{tmp}"], "--data must be one of"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], needle: str, tmp_path: Path, capsys) -> None:
    code, out, err = _run(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == 2 and out == ""
    assert err.startswith("arbitrary-quant: error: ") and err.count("\n") == 1 and needle in err
    assert not (tmp_path / "r").exists()


def test_eval_refuses_bit_widths_the_model_was_not_trained_for(multiquant_run: Path, capsys) -> None:
    code, _, err = _run(capsys, "eval", str(multiquant_run / "model"), "--bits", "3")
    assert code == 2 and err.strip() == "arbitrary-quant: error: --bits [3] not in the trained bit_list [2, 4, 6, 8]"


def test_every_subcommand_dispatches_through_func() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == [
        "bench", "bivit-table", "bops", "calibrate", "demo", "dfsq-table", "eval", "export", "table", "train",
    ]  # fmt: skip


def test_calibrate_quantizes_a_saved_edsr_and_writes_the_packed_model(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    save_sr_model(tmp_path / "sr", EDSR(scale=2, n_resblocks=2, n_feats=16))
    target = tmp_path / "w4.safetensors"
    res = _json(capsys, "calibrate", str(tmp_path / "sr"), "--bits", "4", "--patches", "8", "--calib-batch", "4",
                "--eval-max-size", "64", "-o", str(target))  # fmt: skip
    assert (res["method"], res["bits"], res["images"], res["calibration_patches"]) == ("dfsq", 4, 3, 8)
    assert res["gap_db"] == res["quantized"]["psnr"] - res["fp"]["psnr"]
    assert target.is_file() and target.stat().st_size == res["export"]["file_bytes"]
    assert [row["bits"] for row in res["export"]["layers"]] == [4] * 4  # the two convs of both residual blocks


_USER_SR = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, feats):
        super().__init__()
        self.conv_a = nn.Conv2d(feats, feats, 3, padding=1)
        self.act = nn.ReLU()
        self.conv_b = nn.Conv2d(feats, feats, 3, padding=1)

    def forward(self, x):
        return x + self.conv_b(self.act(self.conv_a(x)))


class UserSR(nn.Module):
    def __init__(self, feats):
        super().__init__()
        self.entry = nn.Conv2d(3, feats, 3, padding=1)
        self.blocks = nn.Sequential(Block(feats), Block(feats))
        self.up = nn.Sequential(nn.Conv2d(feats, 3 * 4, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, x):
        return self.up(self.blocks(self.entry(x)))


def build(feats=8):
    return UserSR(feats)
"""


def test_calibrate_takes_any_sr_network_by_import_path(tmp_path: Path, capsys, monkeypatch) -> None:
    """Not an EDSR: a user's own module, built by MODULE:CALLABLE, weights from a .pth; no .scale attribute."""
    (tmp_path / "user_sr_net.py").write_text(_USER_SR)
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_sr_net  # type: ignore[import-not-found]

    torch.manual_seed(0)
    torch.save(user_sr_net.build(feats=8).state_dict(), tmp_path / "w.pth")
    common = ["--arch", "user_sr_net:build", "--arch-kwargs", '{"feats": 8}', "--scale", "2", "--patches", "8",
              "--calib-batch", "4", "--eval-max-size", "64"]  # fmt: skip
    res = _json(capsys, "calibrate", str(tmp_path / "w.pth"), *common, "-o", str(tmp_path / "q.safetensors"))
    assert [row["name"] for row in res["export"]["layers"]] == [f"blocks.{i}.{c}" for i in (0, 1) for c in ("conv_a", "conv_b")]
    loaded = load_exported(tmp_path / "q.safetensors", user_sr_net.build(feats=8))
    pairs = sr_eval_pairs("test", 2, max_size=64)
    assert evaluate_psnr(loaded, pairs, 2)["psnr"] == pytest.approx(res["quantized"]["psnr"], abs=1e-9)
    one = _json(capsys, "calibrate", str(tmp_path / "w.pth"), *common, "--include", "blocks.1.conv_b",
                "-o", str(tmp_path / "one.safetensors"))  # fmt: skip
    assert [row["name"] for row in one["export"]["layers"]] == ["blocks.1.conv_b"]
    code, _, err = _run(capsys, "calibrate", str(tmp_path / "w.pth"), *common[:4], "-o", str(tmp_path / "x.safetensors"))
    assert code == 2 and "--scale: the upscaling factor of the --arch model" in err
    code, _, err = _run(capsys, "calibrate", str(tmp_path / "w.pth"), "--arch", "user_sr_net:build",
                        "--arch-kwargs", '{"feats": 16}', "--scale", "2", "-o", str(tmp_path / "x.safetensors"))  # fmt: skip
    assert code == 2 and "checkpoint does not fit the model: shape mismatch" in err and not (tmp_path / "x.safetensors").exists()


def test_bops_of_a_bivit_vit_count_binary_ops(capsys) -> None:
    res = _json(capsys, "bops", "--method", "bivit", "--model", "vit_tiny_patch16_224", "--image-size", "32")
    bivit = res["bivit"]
    assert bivit["ops"] == bivit["fp_flops"] + bivit["bops"] / 64
    assert res["ratio"] == res["fp_model"]["fp_flops"] / bivit["ops"] and res["paper_ratio"] == 61.5


def test_dfsq_table_command_reproduces_itself(tmp_path: Path, capsys) -> None:
    res = _json(
        capsys, "dfsq-table", "--blocks", "1", "--features", "8", "--train-steps", "2", "--train-patches", "32",
        "--bits", "8", "--seeds", "0", "--methods", "dfsq,minmax", "--selection-channels", "1",
        "--selection-values", "64", "-o", str(tmp_path / "t"),
    )  # fmt: skip
    assert [(r["method"], r["bits"]) for r in res["rows"] if r["method"] != "fp"][:2] == [("dfsq", 8), ("minmax", 8)]
    assert " --blocks 1 --features 8 " in res["command"] and " --bits 8 --seeds 0 --methods dfsq,minmax " in res["command"]
    assert (tmp_path / "t" / "table.md").read_text().strip() == res["markdown"]


def test_bench_quick_writes_its_json(tmp_path: Path, capsys) -> None:
    res = _json(capsys, "bench", "--quick", "--repeats", "1", "--device", "cpu", "-o", str(tmp_path / "b.json"))
    sections = [r["section"] for r in res["rows"]]
    assert sections == [s for s in ("packed_matmul_2bit", "packed_matmul_4bit", "packed_matmul_8bit", "binary_matmul",
                                    "dfsq_quantize") for _ in range(2)]
    assert all(r["median_s"] > 0 for r in res["rows"]) and res["env"]["torch_threads"] >= 1
    assert json.loads((tmp_path / "b.json").read_text())["rows"] == res["rows"]


BIVIT_TINY = ("--steps", "4", "--teacher-steps", "6", "--batch-size", "8", "--image-size", "16", "--no-progress")


def test_train_bivit_trains_a_teacher_then_its_binary_copy(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bv"
    result = _json(capsys, "train", "--method", "bivit", *BIVIT_TINY, "-o", str(out))
    assert result["steps"] == 4 and len(result["rows"]) == 1
    row = result["rows"][0]
    assert row["bits"] == 1 and row["body_bops"] == row["body_macs"] > 0  # every block product is 1 x 1 bit
    teacher_run = json.loads((out / "teacher" / "metrics.jsonl").read_text().splitlines()[-1])
    assert teacher_run["step"] == 6 and (out / "teacher" / "model.safetensors").is_file()
    model, spec, config, extra = load_quant_model(out / "model")
    assert isinstance(config, BiViTConfig) and config.ranking_loss == "pairwise" and config.attention == "learnable"
    assert (spec.image_size, spec.kwargs["img_size"], spec.kwargs["depth"]) == (16, 16, 4)
    assert sum(isinstance(m, BinaryLinear) for m in model.modules()) == 4 * 4  # qkv, proj, fc1, fc2 per block
    assert extra["teacher_top1"] == result["teacher_top1"] and extra["val_top1"] == {"1": row["top1"]}
    evaluated = _json(capsys, "eval", str(out / "model"))
    assert evaluated["rows"] == result["rows"]
    packed = _json(capsys, "export", str(out / "model"), "-o", str(tmp_path / "bv.safetensors"))
    assert 1.0 < packed["bits_per_weight"] <= 1.5  # sign bits + one fp32 scale per row of 64 or 128 weights
    # the trained teacher, given back with --teacher: no teacher is trained, the same one is used
    again = _json(capsys, "train", "--method", "bivit", *BIVIT_TINY, "--distill", "none", "--attention", "sign",
                  "--teacher", str(out / "teacher"), "-o", str(tmp_path / "bv2"))  # fmt: skip
    assert again["teacher_top1"] == result["teacher_top1"] and not (tmp_path / "bv2" / "teacher").exists()
    _, _, plain, _ = load_quant_model(tmp_path / "bv2" / "model")
    assert (plain.attention, plain.ranking_loss, plain.kd_weight) == ("sign", None, 0.0)
