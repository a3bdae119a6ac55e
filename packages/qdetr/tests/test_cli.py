"""The qdetr console script end to end on a tiny generated set: data, FP teacher, Q-DETR student, eval, bops, demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qdetr.checkpoints import load_model_folder
from qdetr.cli import build_parser, main
from qdetr.config import QDetrConfig
from qdetr.data import CocoDetectionSet
from qdetr.evaluate import evaluate_model


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


def test_make_data_writes_coco_train_and_val_folders(runs: Path) -> None:
    train, val = CocoDetectionSet(runs / "data" / "train"), CocoDetectionSet(runs / "data" / "val")
    assert (len(train), len(val)) == (8, 4) and train.categories == val.categories == [1, 2, 3]


def test_fp_then_qdetr_runs_save_reloadable_models_with_their_scores(runs: Path, capsys) -> None:
    fp_result = json.loads((runs / "fp" / "result.json").read_text())
    assert 0 <= fp_result["backbone_pretraining"]["val_crop_acc"] <= 1 and (runs / "fp" / "pretrain").is_dir()
    fp, quant, extra = load_model_folder(runs / "fp" / "model")
    assert quant is None and extra["method"] == "fp" and type(fp).__name__ == "DetrForObjectDetection"
    assert (runs / "fp" / "model" / "config.json").is_file()  # a transformers save_pretrained folder
    model, quant, extra = load_model_folder(runs / "q" / "model")
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
    run = json.loads((runs / "q" / "run.json").read_text())
    assert run["drd"]["tau"] == 0.0 and run["quant"]["_type"] == "QDetrConfig"


def test_bops_of_the_tiny_model_follow_the_convention(capsys) -> None:
    r = _json(capsys, "bops", "--model", "tiny", "--height", "64", "--width", "64")
    q = r["quantized"]
    assert q["ops"] == q["fp_flops"] + q["bops"] / 64 and r["speedup"] == r["fp"]["ops"] / q["ops"]
    assert set(q["quantized_macs_by_bits"]) == {"W4A4", "W8A8"} and r["paper_speedup"] == 6.6


def test_demo_short_run_scores_both_models(tmp_path: Path, capsys) -> None:
    r = _json(capsys, "demo", "--steps", "2", "-o", str(tmp_path / "demo"))
    assert set(r["fp"]) == set(r["qdetr"]) >= {"AP", "AP50", "AP75"}
    assert (tmp_path / "demo" / "qdetr" / "model" / "qdetr.json").is_file()
    again = _json(capsys, "demo", "--steps", "2", "-o", str(tmp_path / "demo"))  # a re-run into the same folder
    assert again["fp"] == r["fp"]


def test_every_subcommand_dispatches_through_func() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == ["bench", "bops", "demo", "eval", "export", "make-data", "train", "visualize"]
