"""The DFSQ method table on tiny settings: every row, the FP row, exact gaps, the files, the selection study."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from arbitrary_quant.dfsq_table import METHODS, DFSQTableSettings, dfsq_table
from slimkit.bench import mean_std
from slimkit.errors import BadInputError

TINY = DFSQTableSettings(
    blocks=1, features=8, train_steps=3, batch_size=4, patch_size=16, train_patches=16, calibration_patches=8,
    calibration_batch=4, bits=(4,), seeds=(0, 1), eval_max_size=64, selection_channels=2, selection_values=100,
    selection_stride=32, selection_points=3,
)  # fmt: skip
ROW_KEYS = {"method", "bits", "seeds", "psnr", "psnr_mean", "psnr_std", "ssim", "ssim_mean", "ssim_std",
            "gap_db", "gap_mean", "gap_std"}  # fmt: skip


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("dfsq-table")
    return dfsq_table(TINY, out, show_progress=False), out


def test_every_row_is_present_with_its_keys(table: tuple[dict[str, Any], Path]) -> None:
    result, _ = table
    rows = result["rows"]
    assert [(r["method"], r["bits"]) for r in rows] == [("fp", None), ("dfsq", 4), ("minmax", 4), ("percentile", 4)]
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["seeds"] == [0, 1] and len(row["psnr"]) == len(row["ssim"]) == len(row["gap_db"]) == 2
        assert (row["psnr_mean"], row["psnr_std"]) == mean_std(row["psnr"])
        assert (row["ssim_mean"], row["ssim_std"]) == mean_std(row["ssim"])
        assert row["gap_std"] == mean_std(row["gap_db"])[1]
    assert len(result["runs"]) == 2 * (1 + len(METHODS))
    assert [t["seed"] for t in result["train"]] == [0, 1]
    assert set(result["bicubic"]) == {"psnr", "ssim"}


def test_gap_is_method_minus_fp_exactly(table: tuple[dict[str, Any], Path]) -> None:
    rows = table[0]["rows"]
    fp = rows[0]
    assert fp["gap_db"] == [0.0, 0.0] and fp["gap_mean"] == 0.0
    for row in rows[1:]:
        assert row["gap_mean"] == row["psnr_mean"] - fp["psnr_mean"]
        assert row["gap_db"] == [p - f for p, f in zip(row["psnr"], fp["psnr"], strict=True)]


def test_files_equal_the_returned_markdown_and_json(table: tuple[dict[str, Any], Path]) -> None:
    result, out = table
    assert (out / "table.md").read_text(encoding="utf-8") == result["markdown"] + "\n"
    assert json.loads((out / "results.json").read_text(encoding="utf-8")) == result
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "table.md"]  # no temp files left
    md = result["markdown"]
    for label in ("FP32", "DFSQ", "MinMax", "Percentile", "gap to FP", "K-means", "median"):
        assert label in md


def test_command_reproduces_the_settings(table: tuple[dict[str, Any], Path]) -> None:
    result, out = table
    command = result["command"]
    assert command.startswith("arbitrary-quant dfsq-table ") and command.endswith(f"-o {out}")
    for flag in ("--bits 4", "--seeds 0,1", "--methods dfsq,minmax,percentile", "--train-steps 3",
                 "--calibration-patches 8", "--eval-max-size 64"):  # fmt: skip
        assert flag in command
    assert "DFSQTableSettings(blocks=1, features=8" in result["python_command"]
    assert result["settings"]["bits"] == [4] and result["env"]["torch_threads"] >= 1


def test_selection_compares_kmeans_with_the_exhaustive_optimum(table: tuple[dict[str, Any], Path]) -> None:
    sel = table[0]["selection"]
    assert sel["points"] == 3 and sel["universal_size"] >= 3
    assert {c["post_relu"] for c in sel["channels"]} == {False, True}  # both kinds of block input
    for c in sel["channels"]:
        assert c["values"] == 100 and c["kmeans_s"] > 0 and c["exhaustive_s"] > 0
        assert c["kmeans_sse"] >= c["exhaustive_sse"] * (1 - 1e-5)  # exhaustive is the optimum over the same subsets
        assert c["sse_ratio"] >= 1 - 1e-5
    assert sel["median_sse_ratio"] <= sel["max_sse_ratio"]


def test_settings_defaults_and_validation() -> None:
    s = DFSQTableSettings()
    assert (s.blocks, s.features, s.scale, s.calibration_patches) == (4, 32, 2, 32)
    assert (s.bits, s.seeds, s.methods) == ((8, 6, 4), (0, 1, 2), ("dfsq", "minmax", "percentile"))
    bad: list[tuple[dict[str, Any], str]] = [
        ({"bits": (9,)}, "bits must be"),
        ({"bits": ()}, "at least one of bits"),
        ({"seeds": ()}, "at least one of seeds"),
        ({"seeds": (0, 0)}, "repeats"),
        ({"seeds": (-1,)}, "seed"),
        ({"methods": ("dfsq", "lsq")}, "unknown method"),
        ({"patch_size": 15}, "multiple of scale"),
        ({"scale": 5}, "scale must be"),
        ({"train_steps": 0}, "train_steps"),
        ({"lr": 0.0}, "lr must be"),
        ({"selection_points": 1}, "selection_points"),
    ]
    for kwargs, match in bad:
        with pytest.raises(BadInputError, match=match):
            DFSQTableSettings(**kwargs)
