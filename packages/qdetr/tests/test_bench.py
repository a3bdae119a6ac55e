"""qdetr.bench: the baselines compute what the ops compute, and the report has every section."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from qdetr import bench, ops
from qdetr.bench import BenchSizes, _random_boxes, detr_matcher_score, run_benchmarks, unfused_aligned_quantize
from qdetr.quantize import apply_qdetr
from qdetr.reference import MU_GIOU, MU_L1


def test_detr_matcher_baseline_equals_match_score() -> None:
    gen = torch.Generator().manual_seed(0)
    s, t = _random_boxes(7, gen), _random_boxes(5, gen)
    torch.testing.assert_close(detr_matcher_score(s, t, MU_GIOU, MU_L1), ops.match_score(s, t), rtol=1e-5, atol=1e-5)


def test_unfused_baseline_equals_aligned_quantize_on_the_grid() -> None:
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(12, 16, generator=gen)
    gamma, beta = torch.rand(16, generator=gen) + 0.5, torch.randn(16, generator=gen) * 0.1
    step, offset = torch.full((16,), 0.25), torch.zeros(16)
    fused = ops.aligned_quantize(q, gamma, beta, step, offset, -8, 7)
    unfused = unfused_aligned_quantize(q, gamma, beta, step, offset, 7)
    codes = fused / 0.25
    assert torch.equal(codes, codes.round()) and codes.min() >= -8 and codes.max() <= 7
    # Same grid; the two standardizations may differ in the last bit, which can flip a rounding tie.
    assert float((fused - unfused).abs().max()) <= 0.25 + 1e-6
    assert float((fused != unfused).float().mean()) < 0.02


def test_run_benchmarks_reports_every_section_with_positive_ratios() -> None:
    result = run_benchmarks("cpu", BenchSizes.quick(), repeats=1, warmup=0)
    names = {(r["section"], r["name"]) for r in result["rows"]}
    assert names == {
        ("match_score", "detr_matcher"), ("match_score", "match_score"),
        ("aligned_quantize", "unfused_torch"), ("aligned_quantize", "aligned_quantize"),
        ("train_step", "fp"), ("train_step", "lsq_4_4_8"), ("train_step", "qdetr_4_4_8"),
    }  # fmt: skip
    for row in result["rows"]:
        assert row["median_s"] > 0 and row["ratio_vs_baseline"] > 0
    assert result["dtype"] == "float32" and result["env"]["device"].startswith("cpu")


def test_training_step_baseline_is_lsq_without_da_and_qdetr_with_it(monkeypatch) -> None:
    seen: list[str] = []

    def record(model, config):  # type: ignore[no-untyped-def]
        seen.append(config.alignment)
        return apply_qdetr(model, config)

    monkeypatch.setattr(bench, "apply_qdetr", record)
    monkeypatch.setattr(bench, "compare", lambda steps, **kw: {name: {"median_s": 1.0} for name in steps})
    monkeypatch.setattr(bench, "section_rows", lambda *a: [])
    bench._training_steps(BenchSizes.quick(), repeats=1, warmup=0)
    assert seen == ["none", "cross"]  # lsq_4_4_8 is train --method lsq's model, qdetr_4_4_8 has DA


def test_cli_bench_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "qdetr.cli", "bench", "--quick", "--repeats", "1", "--device", "cpu",
                           "--output", str(out), "--json"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["rows"] == json.loads(out.read_text())["rows"]
