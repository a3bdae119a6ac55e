from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from slimkit.bench import Timing
from slimkit.report import ReportMixin, jsonable


@dataclass
class _Inner(ReportMixin):
    name: str
    shape: tuple[int, ...]


@dataclass
class _Report(ReportMixin):
    path: Path
    weights: torch.Tensor
    layers: list[_Inner] = field(default_factory=list)
    scalar: torch.Tensor = field(default_factory=lambda: torch.tensor(2.5))
    extra: dict[str, object] = field(default_factory=dict)


def test_to_dict_is_json_ready() -> None:
    report = _Report(Path("out/x.png"), torch.tensor([[1, 2], [3, 4]]), [_Inner("fc", (2, 3))], extra={"p": Path("a")})
    assert report.to_dict() == {
        "path": "out/x.png",
        "weights": [[1, 2], [3, 4]],
        "layers": [{"name": "fc", "shape": [2, 3]}],
        "scalar": 2.5,
        "extra": {"p": "a"},
    }
    assert json.loads(report.to_json()) == report.to_dict()
    assert report.to_json(indent=None) == json.dumps(report.to_dict())


def test_non_finite_floats_become_null_and_jsonable_misc() -> None:
    @dataclass
    class R(ReportMixin):
        x: float

    assert json.loads(R(math.nan).to_json()) == {"x": None}
    assert jsonable({1: {torch.float16, torch.float32}}) == {"1": ["torch.float16", "torch.float32"]}


def test_bench_timing_uses_mixin() -> None:
    t = Timing(0.5, 0.6, 0.4, 0.1, [0.4, 0.5, 0.9])
    assert isinstance(t, ReportMixin)
    assert t.to_dict() == {"median_s": 0.5, "mean_s": 0.6, "min_s": 0.4, "stdev_s": 0.1, "times": [0.4, 0.5, 0.9]}
