"""The ``token-rate`` CLI end to end (in process), and model / checkpoint loading."""

from __future__ import annotations

import json

import pytest
import torch

import token_rate
from slimkit.data import digits
from slimkit.errors import BadInputError, CorruptFileError
from token_rate import ToMeConfig, load_schedule
from token_rate.bench import matched_tome_r
from token_rate.cli import main
from token_rate.flops import analytic_macs, tome_token_counts
from token_rate.models import digits_vit, load_model, read_checkpoint, save_trained
from token_rate.patch import model_dims


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys, *argv):
    code, out, err = _run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def _bad(capsys, *argv):
    code, _, err = _run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("token-rate") and ": error: " in lines[0], err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny digits ViT trained for a few steps through `token-rate train`."""
    out = tmp_path_factory.mktemp("cli") / "model"
    code = main(["train", "--output", str(out), "--steps", "4", "--batch-size", "32", "--json"])
    assert code == 0
    return out


def test_schedules_lists_published(capsys):
    rows = {r["name"]: r for r in _json(capsys, "schedules")["schedules"]}
    assert rows["deit_small@2.9"]["gmacs"] == pytest.approx(2.905, abs=1e-3)
    assert rows["deit_small@2.9"]["kept_per_block"] == [197, 194, 176, 156, 141, 133, 121, 107, 88, 64, 56, 3]
    code, out, _ = _run(capsys, "schedules")
    assert code == 0 and "deit_small@2.9" in out


def test_flops_published_schedule_and_tome(capsys):
    res = _json(capsys, "flops", "--model", "deit_small_patch16_224", "--schedule", "deit_small@2.9")
    assert res["baseline_gmacs"] == pytest.approx(4.599, abs=2e-3)
    assert res["gmacs"] == pytest.approx(2.905, abs=1e-3)
    # The counted figure adds the small matmuls the method itself runs (class attention, matching).
    assert res["counted_gmacs"] == pytest.approx(res["gmacs"], rel=0.02)
    assert res["baseline_counted_gmacs"] == pytest.approx(res["baseline_gmacs"], rel=0.005)
    res = _json(capsys, "flops", "--model", "deit_small_patch16_224", "--tome-r", "13", "--no-count")
    assert res["gmacs"] == pytest.approx(2.71, abs=0.01)
    assert "counted_gmacs" not in res


def test_train_eval_search_on_digits(capsys, trained, tmp_path):
    assert (trained / "model.safetensors").is_file() and (trained / "config.json").is_file()
    base = _json(capsys, "eval", "--checkpoint", str(trained))
    assert 0.0 <= base["top1"] <= 1.0 and base["images"] == len(digits("val"))
    sched_path = tmp_path / "sched.json"
    res = _json(
        capsys, "search", "--checkpoint", str(trained), "--target-ratio", "0.6", "--steps", "3",
        "--batch-size", "16", "--output", str(sched_path), "--checkpoint-every", "2",
    )  # fmt: skip
    sched = load_schedule(sched_path)
    assert sched.merge == res["merge"] and res["steps"] == 3
    assert res["searched_gmacs"] == pytest.approx(sched.meta["searched_gmacs"])
    # --resume continues the same run to a larger step budget.
    res2 = _json(
        capsys, "search", "--checkpoint", str(trained), "--target-ratio", "0.6", "--steps", "5",
        "--batch-size", "16", "--output", str(sched_path), "--resume",
    )  # fmt: skip
    assert res2["steps"] == 5
    comp = _json(capsys, "eval", "--checkpoint", str(trained), "--schedule", str(sched_path))
    assert comp["gmacs"] == pytest.approx(res2["searched_gmacs"])
    tome = _json(capsys, "eval", "--checkpoint", str(trained), "--tome-r", "8")
    dims = model_dims(digits_vit())
    assert base["gmacs"] == pytest.approx(analytic_macs(dims) / 1e9, rel=1e-12)
    assert tome["gmacs"] == pytest.approx(token_rate.gmacs(dims, ToMeConfig(r=8)), rel=1e-12)


def test_label_free_search_on_unlabelled_folder(capsys, trained, tmp_path):
    from PIL import Image

    for i in range(6):
        Image.fromarray((torch.rand(16, 16, 3) * 255).byte().numpy()).save(tmp_path / f"{i}.png")
    out = tmp_path / "s.json"
    res = _json(
        capsys, "search", "--checkpoint", str(trained), "--data", str(tmp_path), "--label-free",
        "--target-ratio", "0.7", "--steps", "2", "--batch-size", "4", "--output", str(out),
    )  # fmt: skip
    assert out.is_file() and res["steps"] == 2


def test_bench_and_visualize_small_model(capsys, trained, tmp_path):
    res = _json(
        capsys, "bench", "--checkpoint", str(trained), "--tome-r", "8", "--batch-size", "4",
        "--warmup", "1", "--repeats", "2", "--output", str(tmp_path / "bench.json"),
    )  # fmt: skip
    names = [r["name"] for r in res["rows"]]
    assert names == ["baseline", "tome_r8"]
    assert res["rows"][0]["ratio_vs_baseline"] == pytest.approx(1.0)
    dims = model_dims(digits_vit())
    assert res["rows"][0]["gmacs"] == pytest.approx(analytic_macs(dims) / 1e9, rel=1e-12)
    assert res["rows"][1]["gmacs"] == pytest.approx(token_rate.gmacs(dims, ToMeConfig(r=8)), rel=1e-12)
    assert "torch" in res["env"]["versions"]
    assert json.loads((tmp_path / "bench.json").read_text())["rows"][1]["name"] == "tome_r8"
    png = tmp_path / "groups.png"
    res = _json(
        capsys, "visualize", "--checkpoint", str(trained), "--tome-r", "6", "--image", "coffee", "--output", str(png)
    )
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert res["panels"]["ToMe r=6"]["tokens"] == tome_token_counts(dims, [6] * dims.depth)[-1] == 29


def test_bench_matches_tome_to_the_schedule(capsys, trained, tmp_path):
    from token_rate import Schedule

    path = tmp_path / "s.json"
    Schedule([65] * 6, [65, 60, 50, 40, 30, 20], num_tokens=65).save(path)
    res = _json(
        capsys, "bench", "--checkpoint", str(trained), "--schedule", str(path), "--batch-size", "2",
        "--warmup", "0", "--repeats", "1",
    )  # fmt: skip
    rows = {r["name"]: r for r in res["rows"]}
    (name,) = [n for n in rows if n.startswith("tome_r")]
    dims = model_dims(digits_vit())
    assert rows["diffrate"]["gmacs"] == pytest.approx(analytic_macs(dims, [65, 60, 50, 40, 30, 20]) / 1e9, rel=1e-12)
    # The matched ToMe r is the one whose GMACs are closest to the schedule's.
    matched = int(name.removeprefix("tome_r"))
    gap = {r: abs(token_rate.gmacs(dims, ToMeConfig(r=r)) - rows["diffrate"]["gmacs"]) for r in range(33)}
    assert gap[matched] == min(gap.values())
    assert rows[name]["gmacs"] == pytest.approx(token_rate.gmacs(dims, ToMeConfig(r=matched)), rel=1e-12)


def test_bad_inputs_are_one_line_errors(capsys, trained, tmp_path):
    assert "checkpoint not found" in _bad(capsys, "eval", "--checkpoint", str(tmp_path / "nope"))
    assert "unknown schedule" in _bad(capsys, "eval", "--checkpoint", str(trained), "--schedule", "deit_small@9.9")
    assert "either" in _bad(capsys, "eval", "--checkpoint", str(trained), "--schedule", "x@1", "--tome-r", "2")
    corrupt = tmp_path / "bad.safetensors"
    corrupt.write_bytes(b"not a safetensors file at all")
    assert "not a readable safetensors" in _bad(capsys, "eval", "--model", "digits_vit", "--checkpoint", str(corrupt))
    # Published DeiT-S schedule on the 65-token digits model.
    assert "input tokens" in _bad(capsys, "eval", "--checkpoint", str(trained), "--schedule", "deit_small@2.9")
    assert "exactly one" in _bad(capsys, "search", "--checkpoint", str(trained), "--output", str(tmp_path / "o.json"))
    assert "not below" in _bad(
        capsys, "search", "--checkpoint", str(trained), "--output", str(tmp_path / "o.json"), "--target-gmacs", "5"
    )
    assert "--steps" in _bad(
        capsys, "search", "--checkpoint", str(trained), "--output", "o.json", "--target-ratio", ".5", "--steps", "0"
    )
    assert "--data" in _bad(capsys, "eval", "--checkpoint", str(trained), "--data", str(tmp_path / "missing"))
    assert "unknown model" in _bad(capsys, "flops", "--model", "resnet_nonexistent_42")
    assert "pass --model" in _bad(capsys, "eval")
    assert "invalid choice" in _bad(capsys, "eval", "--mode", "median")
    assert not (tmp_path / "o.json").exists()


def test_load_model_checkpoint_formats(tmp_path):
    torch.manual_seed(0)
    model = digits_vit(depth=2, embed_dim=32, num_heads=2).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ref = model(x)
    # 1) a `token-rate train` folder rebuilds itself from config.json
    save_trained(tmp_path / "run", model, "digits_vit", {"depth": 2, "embed_dim": 32, "num_heads": 2})
    with torch.no_grad():
        assert torch.equal(load_model(checkpoint=tmp_path / "run")(x), ref)
    # 2) the bare safetensors file carries the same metadata
    with torch.no_grad():
        assert torch.equal(load_model(checkpoint=tmp_path / "run" / "model.safetensors")(x), ref)
    # 3) a timm-style .pth wrapped in {"state_dict": ...} with DDP "module." prefixes
    pth = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, pth)
    state, spec = read_checkpoint(pth)
    assert spec is None and set(state) == set(model.state_dict())
    with torch.no_grad():
        assert torch.equal(load_model("digits_vit", checkpoint=pth, depth=2, embed_dim=32, num_heads=2)(x), ref)
    # Mismatched architecture: a clear error naming the problem.
    with pytest.raises(BadInputError, match="does not fit"):
        load_model("digits_vit", checkpoint=pth)
    with pytest.raises(BadInputError, match="no model given"):
        load_model(checkpoint=pth)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00\x01 definitely not a pickle")
    with pytest.raises(CorruptFileError):
        load_model("digits_vit", checkpoint=garbage)
    with pytest.raises(BadInputError, match="unsupported checkpoint"):
        load_model("digits_vit", checkpoint=tmp_path / "run" / "config.json")


def test_timm_model_by_name_num_classes():
    model = load_model("deit_tiny_patch16_224", num_classes=7)
    assert model.head.out_features == 7 and not model.training


@pytest.mark.slow
def test_demo_quickstart(capsys, tmp_path):
    res = _json(capsys, "demo", "--output", str(tmp_path / "demo"))
    assert abs(res["relative_error"]) < 0.05
    for f in res["files"]:
        assert (tmp_path / "demo").exists() and f
    names = [r["name"] for r in res["rows"]]
    assert names[0] == "uncompressed" and names[1] == "diffrate"


def test_search_warm_start_from_kept_counts(capsys, trained, tmp_path):
    # with a learning rate of ~0 the searched schedule stays at the warm start (to the candidate grid)
    res = _json(
        capsys, "search", "--checkpoint", str(trained), "--target-ratio", "0.5", "--steps", "1", "--lr", "1e-9",
        "--batch-size", "8", "--output", str(tmp_path / "w.json"), "--init-schedule", "53,41,29,21,13,5",
    )  # fmt: skip
    kept = res["kept_per_block"]
    assert kept[0] == 65 and all(abs(k - w) <= 4 for k, w in zip(kept[1:], [41, 29, 21, 13, 5]))
    assert kept == sorted(kept, reverse=True)
    _bad(capsys, "search", "--checkpoint", str(trained), "--target-ratio", "0.5", "--steps", "1",
         "--output", str(tmp_path / "x.json"), "--init-schedule", "53,41")
    assert not (tmp_path / "x.json").exists()


def test_version_and_parser_contract(capsys):
    from token_rate.cli import build_parser

    code, out, _ = _run(capsys, "--version")
    assert code == 0 and out.strip() == f"token-rate {token_rate.__version__}"
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "demo" in sub.choices
    for name, p in sub.choices.items():
        assert callable(p.get_default("func")), name


def test_validation_happens_before_any_write(capsys, tmp_path):
    # a value or input that cannot work is refused before the first file is written
    assert "--batch-size must be >= 1" in _bad(capsys, "eval", "--model", "digits_vit", "--batch-size", "0")
    assert "use one of .png" in _bad(capsys, "visualize", "--model", "digits_vit", "--tome-r", "2",
                                      "--output", str(tmp_path / "g.jpg"))
    assert "larger than the 32 merges" in _bad(capsys, "eval", "--model", "digits_vit", "--tome-r", "33")
    assert "--checkpoint-every must be >= 0" in _bad(
        capsys, "search", "--model", "digits_vit", "--target-ratio", "0.5", "--checkpoint-every", "-2",
        "--output", str(tmp_path / "s.json"))
    assert "nothing to resume" in _bad(capsys, "search", "--model", "digits_vit", "--target-ratio", "0.5",
                                       "--output", str(tmp_path / "s.json"), "--resume")
    (tmp_path / "file").write_text("x")
    assert "is a file, expected a folder" in _bad(capsys, "train", "--output", str(tmp_path / "file"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"prune": [65, "sixty"], "merge": [65, 33]}))
    assert "Schedule.prune must be" in _bad(capsys, "flops", "--model", "digits_vit", "--schedule", str(bad))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "file"]


def test_corrupt_checkpoint_files_are_named_as_corrupt(tmp_path):
    torch.manual_seed(0)
    save_trained(tmp_path / "run", digits_vit(depth=1, embed_dim=16, num_heads=2), "digits_vit",
                 {"depth": 1, "embed_dim": 16, "num_heads": 2})
    (tmp_path / "run" / "config.json").write_text("{\"config\": ")
    with pytest.raises(CorruptFileError, match=r"config\.json is corrupt"):
        read_checkpoint(tmp_path / "run")
    data = (tmp_path / "run" / "model.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="corrupt or truncated"):
        read_checkpoint(tmp_path / "trunc.safetensors")


def test_existing_json_output_is_replaced(capsys, tmp_path):
    out = tmp_path / "bench.json"
    out.write_text("old")
    _json(capsys, "bench", "--model", "digits_vit", "--tome-r", "4", "--batch-size", "2", "--warmup", "0",
          "--repeats", "1", "--output", str(out))
    assert json.loads(out.read_text())["rows"][0]["name"] == "baseline"


def test_table_cells_and_matching(capsys, tmp_path):
    """Every cell present, ToMe matched to the budget, means over the seeds, files = the report."""
    res = _json(
        capsys, "table", "--seeds", "5,6", "--ratios", "0.5", "--train-steps", "2", "--batch-size", "16",
        "--search-steps", "1", "--search-batch-size", "8", "--output", str(tmp_path / "t"),
    )  # fmt: skip
    assert (res["data"], res["eval_split"], res["seeds"], res["ratios"]) == ("digits", "val", [5, 6], [0.5])
    assert res["command"].startswith("token-rate table --data digits --seeds 5,6 --ratios 0.5 --train-steps 2 ")
    assert " --train-warmup-steps 1 " in res["command"] and res["settings"]["train_warmup_steps"] is None
    rows = {(r["variant"], r["budget"]): r for r in res["rows"]}
    assert list(rows) == [("uncompressed", 1.0), ("diffrate", 0.5), ("diffrate_warm", 0.5), ("tome", 0.5)]
    assert rows[("uncompressed", 1.0)]["gmacs_ratio"] == 1.0
    assert len(res["runs"]) == 2 * 4
    dims = model_dims(digits_vit())
    r = matched_tome_r(dims, 0.5 * analytic_macs(dims) / 1e9)
    assert rows[("tome", 0.5)]["tome_r"] == [r, r]
    tome_g = analytic_macs(dims, tome_token_counts(dims, [r] * dims.depth)) / analytic_macs(dims)
    assert rows[("tome", 0.5)]["gmacs_ratio"] == pytest.approx(tome_g, rel=1e-6)
    for row in res["rows"]:
        top1 = torch.tensor(row["top1"], dtype=torch.float64)
        assert row["top1_mean"] == pytest.approx(top1.mean().item(), abs=1e-12)
        assert row["top1_std"] == pytest.approx(top1.std().item(), abs=1e-12)
    assert json.loads((tmp_path / "t" / "results.json").read_text())["rows"] == res["rows"]
    assert (tmp_path / "t" / "table.md").read_text().strip() == res["markdown"]
    assert len(res["markdown"].splitlines()) == 2 + 4
    code, _, err = _run(capsys, "table", "--ratios", "0.5,1.2")
    assert code == 2 and err.strip().endswith("--ratios must each be in (0, 1), got 1.2")
    code, _, err = _run(capsys, "table", "--train-warmup-steps", "-1")
    assert code == 2 and err.strip().endswith("--train-warmup-steps must be >= 0, got -1")
