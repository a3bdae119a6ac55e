"""Benchmark helpers: medians over repeats, interleaved A/B ratios, FLOPs, memory, environment.

Ratios are taken per interleaved round (A, B, A, B, ...) and summarized by their
median, so a background load that drifts during the run hits both sides alike.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.report import ReportMixin

_DEFAULT_PACKAGES = ("torch", "triton", "timm", "transformers", "accelerate", "numpy", "slimkit")


def _pkg_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def env_header(packages: Sequence[str] = _DEFAULT_PACKAGES, device: torch.device | str | None = None) -> dict[str, Any]:
    """Where a number was measured: device, threads and versions, for every benchmark report."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    header: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({_cpu_model()})",
        "device_type": dev.type,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    header["versions"] = {name: v for name in packages if (v := _pkg_version(name))}
    return header


@dataclass
class Timing(ReportMixin):
    """Wall times of repeated calls (seconds); ``to_dict()``/``to_json()`` from :class:`ReportMixin`."""

    median_s: float
    mean_s: float
    min_s: float
    stdev_s: float
    times: list[float]


def _sync_for(device_type: str | None) -> Callable[[], None]:
    if device_type == "cuda" or (device_type is None and torch.cuda.is_available()):
        return torch.cuda.synchronize
    return lambda: None


def _once(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def time_fn(
    fn: Callable[[], Any], warmup: int = 3, repeats: int = 10, sync: Callable[[], None] | None = None
) -> Timing:
    """Median wall time of ``fn`` after ``warmup`` calls (synchronizing CUDA when present)."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    sync = sync or _sync_for(None)
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = [_once(fn, sync) for _ in range(repeats)]
    return _summarize(times)


def _summarize(times: list[float]) -> Timing:
    return Timing(
        median_s=statistics.median(times),
        mean_s=statistics.fmean(times),
        min_s=min(times),
        stdev_s=statistics.stdev(times) if len(times) > 1 else 0.0,
        times=times,
    )


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) of per-seed results; the std of one value is 0.

    Why: the method tables report ``mean ± std`` over seeds, and every package must compute it
    the same way for its rows to be comparable.
    """
    if not values:
        raise ValueError("mean_std needs at least one value")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def compare(
    fns: Mapping[str, Callable[[], Any]],
    baseline: str,
    warmup: int = 3,
    repeats: int = 10,
    items: int = 1,
    sync: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Time several variants interleaved in one process; report medians and speedups vs ``baseline``.

    ``ratio_vs_baseline`` is the median over rounds of ``t_baseline / t_variant``
    (>1 means faster than the baseline); ``items`` converts times to throughput.
    """
    if baseline not in fns:
        raise ValueError(f"baseline {baseline!r} is not among {list(fns)}")
    sync = sync or _sync_for(None)
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for name in names:
            for _ in range(warmup):
                fns[name]()
        for round_ in range(repeats):
            # Alternate the order each round so neither side always runs "warm" after the other.
            order = names if round_ % 2 == 0 else list(reversed(names))
            for name in order:
                times[name].append(_once(fns[name], sync))
    rows = []
    base = times[baseline]
    for name in names:
        ratios = [b / t for b, t in zip(base, times[name]) if t > 0]
        timing = _summarize(times[name])
        rows.append(
            {
                "name": name,
                "median_s": timing.median_s,
                "stdev_s": timing.stdev_s,
                "throughput": items / timing.median_s if timing.median_s > 0 else float("inf"),
                "ratio_vs_baseline": statistics.median(ratios) if ratios else float("nan"),
                "ratio_min": min(ratios) if ratios else float("nan"),
                "ratio_max": max(ratios) if ratios else float("nan"),
            }
        )
    return rows


def section_rows(section: str, shape: str, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`compare` rows tagged with their ``section`` and problem ``shape``: the rows :func:`rows_text` prints."""
    return [{"section": section, "shape": shape, **row} for row in results]


def rows_text(result: Mapping[str, Any]) -> str:
    """A ``bench`` result as text: one header line (device, threads, dtype, torch), then one line per row.

    ``result`` is ``{"env": env_header(...), "dtype": str, "rows": [...]}`` whose rows are
    :func:`compare` rows with a ``section`` and a ``shape`` added, the layout every package's
    ``bench`` subcommand returns. Columns are as wide as their longest entry.
    """
    env = result["env"]
    head = (f"device {env.get('device')}, {env.get('torch_threads')} threads, {result.get('dtype')}, "
            f"torch {env.get('versions', {}).get('torch')}")  # fmt: skip
    rows = result["rows"]
    widths = [max((len(str(r[key])) for r in rows), default=0) for key in ("section", "shape", "name")]
    lines = [head]
    for r in rows:
        cells = [str(r[key]).ljust(w) for key, w in zip(("section", "shape", "name"), widths, strict=True)]
        lines.append(f"{'  '.join(cells)}  {1e3 * r['median_s']:>9.3f} ms  {r['ratio_vs_baseline']:.2f}x")
    return "\n".join(lines)


def _register_sdpa_flops() -> None:
    """Count ``scaled_dot_product_attention`` on every backend (the CPU op is otherwise 0)."""
    from torch.utils import flop_counter

    if getattr(_register_sdpa_flops, "_done", False):
        return
    aten = torch.ops.aten
    targets = [
        getattr(aten, name)
        for name in ("_scaled_dot_product_flash_attention_for_cpu", "scaled_dot_product_attention")
        if hasattr(aten, name)
    ]

    def sdpa_flop(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
        *batch, lq, d = query_shape
        lk, dv = key_shape[-2], value_shape[-1]
        b = 1
        for dim in batch:
            b *= dim
        return 2 * b * lq * lk * d + 2 * b * lq * lk * dv

    registry = flop_counter.flop_registry
    for op in targets:
        if op in registry:
            continue

        def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
            q, k, v = args[0], args[1], args[2]
            return sdpa_flop(q, k, v)

        registry[op] = flop_counter.shape_wrapper(formula)
    _register_sdpa_flops._done = True  # type: ignore[attr-defined]


def count_flops(fn_or_module: Callable[..., Any] | nn.Module, *args: Any, **kwargs: Any) -> int:
    """Total FLOPs (2 x MACs) of one call, with SDPA counted on CPU too."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_sdpa_flops()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn_or_module(*args, **kwargs)
    return int(counter.get_total_flops())


def peak_memory(fn: Callable[[], Any], device: torch.device | str | None = None) -> int:
    """Peak bytes during ``fn`` above what was in use before it: CUDA allocator peak, or peak RSS on CPU."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        fn()
        torch.cuda.synchronize(dev)
        return int(torch.cuda.max_memory_allocated(dev) - base)
    if _reset_peak_rss():
        base = _proc_status_kib("VmRSS")
        fn()
        return max(0, _proc_status_kib("VmHWM") - base) * 1024
    # No /proc/self/clear_refs (not Linux): only growth of the lifetime peak is observable.
    # ru_maxrss is in bytes on macOS and in KiB elsewhere.
    unit = 1 if sys.platform == "darwin" else 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(max(0, after - before) * unit)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0), so the peak of ``fn`` alone is measured."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} missing from /proc/self/status")
