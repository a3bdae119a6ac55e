"""The qdetr console script end to end on a tiny generated set: data, FP teacher, Q-DETR student, eval, bops, demo."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from qdetr.attention import QuantAttention
from qdetr.bops import detr_ops
from qdetr.checkpoints import load_model_folder
from qdetr.cli import build_parser, main
from qdetr.config import QDetrConfig
from qdetr.data import CocoDetectionSet
from qdetr.evaluate import evaluate_model
from qdetr.models import tiny_detr


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("qdetr-cli")
    assert main(["make-data", "shapes", "--train", "8", "--val", "4", "-o", str(root / "data")]) == 0
    common = ["--data", str(root / "data" / "train"), "--val-data", str(root / "data" / "val"), "--batch-size", "4",
              "--no-progress"]  # fmt: skip
    assert main(["train", "--method", "fp", *common, "--steps", "3", "--pretrain-steps", "2", "-o", str(root / "fp")]) == 0
    assert main(["train", "--method", "qdetr", *common, "--model", str(root / "fp" / "model"), "--steps", "3",
                 "--backbone-steps", "1", "--tau", "0.0", "-o", str(root / "q")]) == 0  # fmt: skip
    return root


def test_make_data_coins_checks_both_folders_before_writing(tmp_path: Path, capsys) -> None:
    (tmp_path / "c" / "val").mkdir(parents=True)
    (tmp_path / "c" / "val" / "mine.txt").write_text("keep")
    assert main(["make-data", "coins", "--train", "1", "--val", "1", "-o", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not empty" in err
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["val"]  # no half-written train/


def test_make_data_writes_coco_train_and_val_folders(runs: Path) -> None:
    train, val = CocoDetectionSet(runs / "data" / "train"), CocoDetectionSet(runs / "data" / "val")
    assert (len(train), len(val)) == (8, 4) and train.categories == val.categories == [1, 2, 3]


def test_fp_then_qdetr_runs_save_reloadable_models_with_their_scores(runs: Path, capsys) -> None:
    fp_result = json.loads((runs / "fp" / "result.json").read_text())
    assert 0 <= fp_result["backbone_pretraining"]["val_crop_acc"] <= 1 and (runs / "fp" / "pretrain").is_dir()
    fp, quant, extra = load_model_folder(runs / "fp" / "model")
    assert quant is None and extra["method"] == "fp" and type(fp).__name__ == "DetrForObjectDetection"
    assert extra["categories"] == [(1, "square"), (2, "disk"), (3, "triangle")]  # what label i stands for
    assert fp.config.id2label == {0: "square", 1: "disk", 2: "triangle"}
    assert (runs / "fp" / "model" / "config.json").is_file()  # a transformers save_pretrained folder
    model, quant, extra = load_model_folder(runs / "q" / "model")
    conv = "model.backbone.model.encoder.stages.1.layers.0.layer.0.convolution"  # the student trained its backbone
    assert not torch.equal(model.get_submodule(conv).latent_weight, fp.get_submodule(conv).weight)
    assert all(p.requires_grad for p in model.parameters())  # a reloaded quantized model can be fine-tuned
    assert isinstance(quant, QDetrConfig) and (quant.w_bits, quant.a_bits, quant.attn_bits, quant.alignment) == (4, 4, 8, "cross")
    result = json.loads((runs / "q" / "result.json").read_text())
    assert result["steps"] == 3 and result["bits"] == "4-4-8"
    stages = sorted(p.name for p in (runs / "q").iterdir() if p.name.startswith("stage"))
    assert stages == ["stage1", "stage2"]
    assert [json.loads(line)["step"] for line in (runs / "q" / "stage2" / "metrics.jsonl").read_text().splitlines()][-1] == 2
    val = CocoDetectionSet(runs / "data" / "val")
    assert evaluate_model(model, val) == result["val"] == extra["val"]  # the reloaded model scores as trained
    evaluated = _json(capsys, "eval", str(runs / "q" / "model"), "--data", str(runs / "data" / "val"))
    assert {k: evaluated[k] for k in result["val"]} == result["val"] and evaluated["bits"] == "4-4-8"
    assert evaluated["categories_checked"] is True and extra["categories"][2] == (3, "triangle")
    run = json.loads((runs / "q" / "run.json").read_text())
    assert run["drd"]["tau"] == 0.0 and run["quant"]["_type"] == "QDetrConfig"


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--drd-layers", "last"], "--drd-layers must be comma-separated integers"),
        (["--drd-layers", "0,5"], r"decoder layers \[5\] out of range"),
        (["--w-bits", "9"], r"w_bits must be 2\.\.8, got 9"),
        (["--tau", "1.5"], r"tau must be in \[0, 1\]"),
    ],
)
def test_train_refuses_bad_arguments_in_one_line_before_writing(
    runs: Path, tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    out = tmp_path / "bad"
    code = main(["train", "--method", "qdetr", "--data", str(runs / "data" / "train"), "--val-data",
                 str(runs / "data" / "val"), "--model", str(runs / "fp" / "model"), *extra, "-o", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and re.search(message, err), err
    assert not out.exists()


def test_logit_kd_from_a_random_student_is_refused(tmp_path: Path, capsys) -> None:
    """Logit KD pairs query slot i with the teacher's slot i: a random student's slots mean nothing to it."""
    out = tmp_path / "kd"
    code = main(["train", "--method", "logit-kd", "--model", "tiny", "--teacher", str(tmp_path / "fp"),
                 "--data", str(tmp_path / "data"), "--val-data", str(tmp_path / "val"), "-o", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "start the student from the FP teacher" in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    "edit,message",
    [
        ("outside", "lies outside its image"),
        ("category", "which is not in categories"),
        ("image", "unreadable image"),
    ],
)
def test_train_refuses_bad_coco_files_in_one_line(runs: Path, tmp_path: Path, capsys, edit: str, message: str) -> None:
    data = tmp_path / "data"
    shutil.copytree(runs / "data" / "train", data)
    ann = json.loads((data / "annotations.json").read_text())
    if edit == "outside":
        ann["annotations"][0]["bbox"][0] = ann["images"][0]["width"] - 1
    elif edit == "category":
        ann["categories"] = ann["categories"][1:]
        ann["annotations"][0]["category_id"] = 1
    else:
        (data / "images" / ann["images"][0]["file_name"]).write_bytes(b"not a png")
    (data / "annotations.json").write_text(json.dumps(ann))
    out = tmp_path / "run"
    code = main(["train", "--method", "fp", "--data", str(data), "--val-data", str(runs / "data" / "val"), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_resuming_a_run_with_backbone_pretraining(runs: Path, tmp_path: Path, capsys) -> None:
    shutil.copytree(runs / "fp", tmp_path / "fp")
    result = _json(capsys, "train", "--method", "fp", "--data", str(runs / "data" / "train"), "--val-data",
                   str(runs / "data" / "val"), "--batch-size", "4", "--steps", "3", "--pretrain-steps", "2",
                   "--resume", "latest", "-o", str(tmp_path / "fp"))  # fmt: skip
    assert result["steps"] == 3 and result["backbone_pretraining"] is None  # the checkpoint holds the backbone


def test_bops_of_the_tiny_model_follow_the_convention(capsys) -> None:
    r = _json(capsys, "bops", "--model", "tiny", "--height", "64", "--width", "64")
    q = r["quantized"]
    assert q["ops"] == q["fp_flops"] + q["bops"] / 64 and r["speedup"] == r["fp"]["ops"] / q["ops"]
    assert set(q["quantized_macs_by_bits"]) == {"W4A4", "W8A8"} and r["paper_speedup"] == 6.6


def test_bops_leaves_the_models_mode_alone() -> None:
    model = tiny_detr(3).train()
    r = detr_ops(model, QDetrConfig(), 32, 32)
    assert model.training and r["speedup"] > 1
    assert not any(isinstance(m, QuantAttention) for m in model.modules())  # a copy was quantized


def test_demo_short_run_scores_both_models(tmp_path: Path, capsys) -> None:
    r = _json(capsys, "demo", "--steps", "2", "-o", str(tmp_path / "demo"))
    assert set(r["fp"]) == set(r["qdetr"]) >= {"AP", "AP50", "AP75"}
    assert (tmp_path / "demo" / "qdetr" / "model" / "qdetr.json").is_file()
    for name in ("fp", "qdetr"):  # both models record the shapes' categories
        assert load_model_folder(tmp_path / "demo" / name / "model")[2]["categories"][0] == (1, "square")
    again = _json(capsys, "demo", "--steps", "2", "-o", str(tmp_path / "demo"))  # a re-run into the same folder
    assert again["fp"] == r["fp"]


def test_every_subcommand_dispatches_through_func() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == ["bench", "bops", "demo", "eval", "export", "make-data", "train", "visualize"]
