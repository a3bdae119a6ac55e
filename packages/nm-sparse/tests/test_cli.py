"""``nm-sparse`` CLI: happy paths on tiny runs, resume, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nm_sparse
import nm_sparse.sweep as sweep
from nm_sparse.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict | None, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    payload = json.loads(captured.out) if captured.out.strip().startswith("{") else None
    return code, payload, captured.err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny SpRe run shared by the tests below (6 steps, checkpoint every 3)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(
        [
            "train", "--method", "spre", "--pattern", "2:4", "--steps", "6", "--batch-size", "16",
            "--checkpoint-every", "3", "--output", str(out), "--device", "cpu", "--json",
        ]
    )  # fmt: skip
    assert code == 0
    return out


def test_train_writes_run_model_and_checkpoints(trained_run: Path) -> None:
    assert (trained_run / "run.json").is_file()
    assert (trained_run / "model" / "model.safetensors").is_file()
    assert (trained_run / "checkpoints" / "step_3").is_dir()
    meta = json.loads((trained_run / "model" / "config.json").read_text())
    assert meta["nm_sparse"]["stage"] == "trained" and meta["config"]["method"] == "spre"
    assert 0.0 <= meta["nm_sparse"]["val_top1"] <= 1.0


def test_resume_continues_from_checkpoint(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    code, out, _ = _run(
        capsys, "train", "--method", "spre", "--steps", "8", "--batch-size", "16", "--output", str(run),
        "--resume", str(run / "checkpoints" / "step_3"), "--device", "cpu", "--json",
    )  # fmt: skip
    assert code == 0 and out is not None and out["steps"] == 8
    # a different NMConfig cannot resume this run
    code, _, err = _run(capsys, "train", "--method", "srste", "--steps", "9", "--output", str(run), "--resume", "latest")
    assert code == 2 and "different" in err and err.count("\n") == 1


def test_deploy_then_inspect(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "deploy", str(trained_run), "--output", str(tmp_path / "dep"), "--json")
    assert code == 0 and out is not None
    assert out["all_valid"] is True and out["max_abs_diff"] < 1e-3
    assert all(Path(f).is_file() for f in out["files"])
    code, out, _ = _run(capsys, "inspect", str(tmp_path / "dep"), "--plot", str(tmp_path / "h.png"), "--json")
    assert code == 0 and out is not None and out["stage"] == "deployed" and out["all_valid"] is True
    assert (tmp_path / "h.png").read_bytes()[:8] == PNG_MAGIC
    nm_layers = [layer for layer in out["layers"] if layer["pattern"] == "2:4"]
    assert len(nm_layers) == 5 and all(layer["max_nz_per_group"] == 2 for layer in nm_layers)
    # every kernel position of a deployed (cin-layout) 2:4 conv is exactly 50% sparse
    assert len(out["kernel_positions"]) == 4  # the four 3x3 convs (the stem stays dense and is not listed)
    for row in out["kernel_positions"]:
        assert row["nm"] == [[0.5] * 3] * 3
    # deploying a deployed model is refused
    code, _, err = _run(capsys, "deploy", str(tmp_path / "dep"), "--output", str(tmp_path / "again"))
    assert code == 2 and "already deployed" in err


def test_deploy_without_bn_folding_reloads(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "deploy", str(trained_run), "--no-fold-bn", "-o", str(tmp_path / "dep"), "--json")
    assert code == 0 and out is not None and out["folded_bn"] == 0 and out["max_abs_diff"] < 1e-3
    code, out, _ = _run(capsys, "inspect", str(tmp_path / "dep"), "--json")
    assert code == 0 and out is not None and out["all_valid"] is True


def test_inspect_trained_checkpoint_human(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = _run(capsys, "inspect", str(trained_run / "checkpoints" / "step_3"))
    assert code == 0
    # a dense check of every layer against 2:4 fails on the dense stem -> exit 1
    code = main(["inspect", str(trained_run), "--pattern", "2:4"])
    out = capsys.readouterr().out
    assert code == 1 and "INVALID" in out


def test_train_on_image_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(4):
            pixels = (torch.rand(12, 12, 3, generator=gen) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "imgs" / cls / f"{i}.png")
    code, out, _ = _run(
        capsys, "train", "--data", str(tmp_path / "imgs"), "--val-data", str(tmp_path / "imgs"), "--method", "bimask",
        "--pattern", "1:4", "--image-size", "8", "--steps", "2", "--batch-size", "4", "--output", str(tmp_path / "r"),
        "--json",
    )  # fmt: skip
    assert code == 0 and out is not None and out["steps"] == 2 and "val_top1" in out
    meta = json.loads((tmp_path / "r" / "model" / "config.json").read_text())
    assert meta["nm_sparse"]["model"]["num_classes"] == 2 and meta["nm_sparse"]["model"]["in_chans"] == 3


def test_bench_quick_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "bench", "--quick", "--repeats", "1", "--pattern", "1:4", "--json", "-o", str(tmp_path / "b.json"))
    assert code == 0 and out is not None and out["pattern"] == "1:4"
    assert {row["section"] for row in out["rows"]} == {"nm_mask", "permutation_scores", "nm_matmul", "semi_structured"}
    assert json.loads((tmp_path / "b.json").read_text())["pattern"] == "1:4"


def test_table_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys, "table", "--methods", "dense,bimask", "--patterns", "2:4", "--seeds", "0,1", "--steps", "2",
        "--output", str(tmp_path), "--json",
    )  # fmt: skip
    assert code == 0 and out is not None
    rows = {(r["method"], r["pattern"]): r for r in out["rows"]}
    assert set(rows) == {("dense", "-"), ("bimask", "2:4")}
    assert all(len(r["top1"]) == 2 for r in rows.values())
    assert len(out["diagnostics"]["bimask_backward"]) == 2
    assert "nm-sparse table" in out["command"]
    assert (tmp_path / "table.md").read_text().count("|") > 6


def test_table_training_options_reach_every_run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """--weight-decay and --warmup-steps reach both phases of a prune-after-dense run and the
    dynamic methods' run, and the reproducing command repeats them."""
    seen: list[tuple[str, float, int]] = []

    def spy(real):  # type: ignore[no-untyped-def]
        def call(model, data, config, *rest):  # type: ignore[no-untyped-def]
            seen.append((Path(config.output_dir).name, config.weight_decay, config.warmup_steps))
            return real(model, data, config, *rest)

        return call

    monkeypatch.setattr(sweep, "train", spy(sweep.train))
    monkeypatch.setattr(sweep, "fit", spy(sweep.fit))
    code, out, _ = _run(
        capsys, "table", "--methods", "asp,srste,transposable", "--patterns", "2:4", "--seeds", "0", "--steps", "4",
        "--weight-decay", "0.01", "--warmup-steps", "3", "--json",
    )  # fmt: skip
    assert code == 0 and out is not None
    # transposable is a dynamic (SR-STE, from scratch) method like Bi-Mask, which it is compared with
    assert seen == [
        ("asp_2of4_0_dense", 0.01, 3), ("asp_2of4_0_sparse", 0.01, 3), ("srste_2of4_0_train", 0.01, 3),
        ("transposable_2of4_0_train", 0.01, 3),
    ]  # fmt: skip
    assert " --weight-decay 0.01 --warmup-steps 3 " in out["command"]


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train", "--pattern", "5:4", "--steps", "1"], "5:4"),
        (["train", "--pattern", "two:four", "--steps", "1"], "two:four"),
        (["train", "--model", "no_such_model_xyz", "--steps", "1"], "unknown model"),
        (["train", "--data", "/nonexistent/folder", "--steps", "1"], "/nonexistent/folder"),
        (["train", "--steps", "0"], "max_steps"),
        (["inspect", "/nonexistent/ckpt"], "not found"),
        (["deploy", "/nonexistent/ckpt", "-o", "/tmp/x"], "not found"),
        (["bench", "--pattern", "3:2"], "3:2"),
        (["table", "--methods", "magic"], "magic"),
        (["table", "--seeds", "a,b"], "--seeds"),
        (["bench", "--device", "cuda:7"] if not torch.cuda.is_available() else ["bench", "--device", "tpu"], "device"),
    ],
)
def test_bad_input_exit_2_one_line(argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if argv[0] == "train":
        argv = [*argv, "--output", str(tmp_path / "o")]
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert err.startswith("nm-sparse") and err.count("\n") == 1 and "Traceback" not in err
    assert needle in err


def test_corrupt_checkpoint_exit_2(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(trained_run / "model", bad)
    (bad / "model.safetensors").write_bytes(b"\x00garbage")
    for argv in (["inspect", str(bad)], ["deploy", str(bad), "-o", str(tmp_path / "d")]):
        code, _, err = _run(capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and "safetensors" in err
    (bad / "config.json").write_text("{not json")
    code, _, err = _run(capsys, "inspect", str(bad))
    assert code == 2 and "JSON" in err
    # resuming from a damaged checkpoint is refused before training starts
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "checkpoints" / "step_3" / "model.safetensors").write_bytes(b"junk")
    code, _, err = _run(
        capsys, "train", "--method", "spre", "--steps", "8", "--output", str(run),
        "--resume", str(run / "checkpoints" / "step_3"),
    )  # fmt: skip
    assert code == 2 and "safetensors" in err


def test_module_entry_point_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nm_sparse.cli", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0
    for command in ("train", "deploy", "inspect", "bench", "table"):
        assert command in proc.stdout


@pytest.mark.slow
def test_accelerate_launch_train(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
            "-m", "nm_sparse.cli", "train", "--steps", "2", "--batch-size", "8", "--output", str(tmp_path / "r"), "--json",
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "r" / "model" / "model.safetensors").is_file()


# --------------------------------------------------------------------------- 0.2: one dispatch style, demo, validate first


def test_parser_dispatches_through_func_and_has_demo() -> None:
    import argparse

    from nm_sparse.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == {"train", "deploy", "inspect", "bench", "table", "demo"}
    assert all(callable(p.get_default("func")) for p in sub.choices.values())


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"nm-sparse {nm_sparse.__version__}"


def test_demo_writes_deployed_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "demo", "--steps", "3", "-o", str(tmp_path / "demo"), "--device", "cpu", "--json")
    assert code == 0 and out is not None and out["pattern_valid"]
    assert (tmp_path / "demo" / "deployed" / "model.safetensors").is_file()
    # a re-run reuses its own folder; another command's folder is refused
    assert _run(capsys, "demo", "--steps", "1", "-o", str(tmp_path / "demo"), "--device", "cpu", "--json")[0] == 0
    code, _, err = _run(capsys, "train", "--steps", "1", "-o", str(tmp_path / "demo"))
    assert code == 2 and "nm-sparse demo output" in err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--include", "nothing.*"], "matches no Linear/Conv layer"),
        (["--resume", "latest"], "nothing to resume"),
        (["--batch-size", "0"], "--batch-size"),
        (["--checkpoint-every", "-2"], "--checkpoint-every"),
        # a sparse method that fits no layer would train and save a dense model under its name
        (["--method", "transposable", "--pattern", "2:8"], "transposable 2:8 applies to no layer"),
        (["--pattern", "2:3"], "srste 2:3 applies to no layer"),
    ],
)
def test_failed_train_writes_nothing(
    extra: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code, _, err = _run(capsys, "train", "--steps", "2", "-o", str(out), *extra)
    assert code == 2 and needle in err and err.count("\n") == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_deploy_refuses_a_run_folder_as_output(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(p.name for p in trained_run.iterdir())
    code, _, err = _run(capsys, "deploy", str(trained_run), "-o", str(trained_run))
    assert code == 2 and "nm-sparse train output" in err
    assert sorted(p.name for p in trained_run.iterdir()) == before


def test_inspect_plot_must_be_png(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "inspect", str(trained_run), "--plot", str(tmp_path / "heat.svg"))
    assert code == 2 and ".png" in err and not (tmp_path / "heat.svg").exists()


def test_resume_accepts_a_0_1_run_json(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run folder written by 0.1 (flat NMConfig in run.json, no output marker) still resumes."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / ".slimkit-output.json").unlink()
    code, out, err = _run(
        capsys, "train", "--method", "spre", "--steps", "8", "--batch-size", "16", "--output", str(run),
        "--resume", "latest", "--device", "cpu", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert out is not None and out["steps"] == 8


def test_table_on_a_generated_set_uses_its_test_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys, "table", "--data", "crops", "--methods", "dense", "--patterns", "2:4", "--seeds", "0",
        "--steps", "1", "--output", str(tmp_path / "t"), "--json",
    )  # fmt: skip
    assert code == 0 and out is not None
    assert (out["data"], out["eval_split"]) == ("crops", "test")
    assert "--data crops" in out["command"]
    (acc,) = out["rows"][0]["top1"]
    assert acc * 2000 == pytest.approx(round(acc * 2000), abs=1e-6)  # a share of the 2,000 test crops
    assert (tmp_path / "t" / "table.md").read_text().startswith("crops (test) top-1 (%)")


def test_table_refuses_a_method_that_fits_no_layer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "table"
    code, _, err = _run(
        capsys, "table", "--methods", "dense,transposable", "--patterns", "2:4,2:8", "--seeds", "0",
        "--steps", "1", "-o", str(out),
    )  # fmt: skip
    assert code == 2 and "transposable 2:8 applies to no layer" in err and "m <= 4" in err
    assert err.count("\n") == 1 and not out.exists()
