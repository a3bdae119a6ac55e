from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkit.bench import compare, count_flops, env_header, mean_std, peak_memory, rows_text, time_fn


def test_time_fn_median() -> None:
    timing = time_fn(lambda: time.sleep(0.002), warmup=1, repeats=5)
    assert len(timing.times) == 5 and 0.0015 < timing.median_s < 0.05
    assert timing.min_s <= timing.median_s


def test_compare_ratio_reflects_work() -> None:
    rows = compare(
        {"slow": lambda: time.sleep(0.006), "fast": lambda: time.sleep(0.002)}, baseline="slow", warmup=1, repeats=5, items=4
    )
    by = {r["name"]: r for r in rows}
    assert by["slow"]["ratio_vs_baseline"] == pytest.approx(1.0)
    assert 1.8 < by["fast"]["ratio_vs_baseline"] < 4.0
    assert by["fast"]["throughput"] > by["slow"]["throughput"]
    with pytest.raises(ValueError):
        compare({"a": lambda: None}, baseline="b")


def test_flops_linear_exact() -> None:
    model = nn.Linear(32, 16, bias=False)
    assert count_flops(model, torch.randn(4, 32)) == 2 * 4 * 32 * 16


def test_flops_counts_sdpa_on_cpu() -> None:
    b, h, n, d = 2, 3, 10, 8
    q = k = v = torch.randn(b, h, n, d)
    flops = count_flops(F.scaled_dot_product_attention, q, k, v)
    assert flops == 4 * b * h * n * n * d  # QK^T and AV, 2 FLOPs per MAC each


def test_env_header_and_memory() -> None:
    header = env_header()
    assert header["device_type"] in {"cpu", "cuda"} and "torch" in header["versions"]
    if header["device_type"] != "cpu" or not Path("/proc/self/clear_refs").exists():
        pytest.skip("the exact CPU peak needs Linux's /proc/self/clear_refs")
    mib = 1024 * 1024
    # 256 MiB of float32 ones, freed before the call returns: the peak, not what is left over
    grew = peak_memory(lambda: torch.ones(64, 1024, 1024).sum(), device="cpu")
    assert 248 * mib <= grew < 320 * mib  # within 3% below: the allocator may reuse a few resident pages
    # a process whose lifetime peak is already higher still sees this call's own peak
    big = torch.ones(128, 1024, 1024)
    del big
    assert 248 * mib <= peak_memory(lambda: torch.ones(64, 1024, 1024).sum(), device="cpu") < 320 * mib


def test_mean_std_is_the_sample_std_over_seeds() -> None:
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == (2.5, math.sqrt(5 / 3))
    assert mean_std([7.25]) == (7.25, 0.0)
    t = torch.tensor([98.4, 99.1, 97.0], dtype=torch.float64)
    mean, std = mean_std(t.tolist())
    assert mean == pytest.approx(t.mean().item(), abs=1e-12) and std == pytest.approx(t.std().item(), abs=1e-12)
    with pytest.raises(ValueError, match="at least one value"):
        mean_std([])


def test_rows_text_aligns_columns_and_prints_ms_and_ratio() -> None:
    result = {
        "env": {"device": "cpu (test)", "torch_threads": 2, "versions": {"torch": "9.9"}},
        "dtype": "float32",
        "rows": [
            {"section": "a", "shape": "4x4", "name": "base", "median_s": 0.002, "ratio_vs_baseline": 1.0},
            {"section": "longer", "shape": "8", "name": "fast", "median_s": 0.0005, "ratio_vs_baseline": 4.0},
        ],
    }
    lines = rows_text(result).splitlines()
    assert lines[0] == "device cpu (test), 2 threads, float32, torch 9.9"
    assert lines[1] == "a       4x4  base      2.000 ms  1.00x"
    assert lines[2] == "longer  8    fast      0.500 ms  4.00x"


@pytest.mark.parametrize(("platform", "unit"), [("darwin", 1), ("freebsd14", 1024)])
def test_peak_memory_without_clear_refs_reads_ru_maxrss_in_its_platform_unit(
    monkeypatch: pytest.MonkeyPatch, platform: str, unit: int
) -> None:
    # macOS reports ru_maxrss in bytes, the BSDs (and Linux) in KiB: 1000 units of growth
    import resource
    import sys
    from types import SimpleNamespace

    import slimkit.bench

    peaks = iter([5000, 6000])
    monkeypatch.setattr(slimkit.bench, "_reset_peak_rss", lambda: False)
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=next(peaks)))
    assert peak_memory(lambda: None, device="cpu") == 1000 * unit
