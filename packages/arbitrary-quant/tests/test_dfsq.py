"""DFSQ: config, subset selection (K-means vs exhaustive), the DFSQConv wrapper, layer selection and end-to-end PTQ."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from arbitrary_quant.config import DFSQConfig
from arbitrary_quant.dfsq import (
    REASON_NOT_IN_BLOCK,
    DFSQConv,
    DFSQReport,
    apply_dfsq,
    calibrate_dfsq,
    dfsq,
    exhaustive_subset,
    kmeans_subset,
    quantization_sse,
    residual_block_convs,
    unwrap_dfsq,
)
from arbitrary_quant.edsr import EDSR
from arbitrary_quant.reference import dfsq_universal_set
from arbitrary_quant.registry import REGISTRY
from slimkit.errors import BadInputError
from slimkit.io import config_to_dict

U = dfsq_universal_set(4)


def _edsr(seed: int = 0, blocks: int = 2, feats: int = 8) -> EDSR:
    torch.manual_seed(seed)
    return EDSR(scale=2, n_resblocks=blocks, n_feats=feats).eval()


def _batches(count: int = 2, seed: int = 1, size: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(2, 3, size, size, generator=g) for _ in range(count)]


# --------------------------------------------------------------------------- config


def test_config_round_trips_through_json() -> None:
    config = DFSQConfig(bits=6, w_bits=8, activation="percentile", percentile=99.9, include="body.*", max_samples=10)  # type: ignore[arg-type]
    data = json.loads(json.dumps(config_to_dict(config)))
    assert REGISTRY.config_from_dict(data) == config
    assert config.include == ["body.*"] and config.weight_bits == 8
    assert DFSQConfig(bits=3).weight_bits == 3
    assert REGISTRY.handler(DFSQConfig()) is apply_dfsq


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits": 1}, "bits"),
        ({"bits": 9}, "bits"),
        ({"w_bits": True}, "w_bits"),
        ({"activation": "lsq"}, "activation"),
        ({"percentile": 50}, "percentile"),
        ({"percentile": 100.5}, "percentile"),
        ({"restarts": 0}, "restarts"),
        ({"max_samples": -1}, "max_samples"),
        ({"kmeans_tol": -1.0}, "kmeans_tol"),
        ({"kmeans_tol": "x"}, "kmeans_tol"),
        ({"words": 9}, "words"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(BadInputError, match=match):
        DFSQConfig(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- subset selection


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_kmeans_subset_is_a_zero_holding_subset_of_u(bits: int) -> None:
    g = torch.Generator().manual_seed(bits)
    values = torch.randn(5, 800, generator=g).clamp(-3, 3) / 3
    values[2] = values[2].relu()  # a post-ReLU-like channel, half zeros
    points = kmeans_subset(values, U, 2**bits, restarts=3)
    assert points.shape == (5, 2**bits)
    assert torch.equal(points, points.sort(dim=1).values)
    for row in points:
        distinct = row.unique()
        assert len(distinct) <= 2**bits
        assert bool((distinct == 0).any())
        assert bool(torch.isin(distinct, U).all())
    assert len(points[2].unique()) >= 2**bits - 2  # zeros do not eat the centres
    assert float(points[2].min()) == 0.0


def test_kmeans_subset_is_deterministic_per_seed() -> None:
    values = torch.randn(3, 500, generator=torch.Generator().manual_seed(0)) / 4
    a = kmeans_subset(values, U, 16, seed=7)
    assert torch.equal(a, kmeans_subset(values, U, 16, seed=7))


def test_kmeans_close_to_exhaustive_on_small_sets() -> None:
    small = torch.unique(torch.cat([U[::8], torch.zeros(1)]))  # 49 values
    g = torch.Generator().manual_seed(0)
    ratios = []
    for _ in range(3):
        values = torch.randn(1000, generator=g)
        values = values / values.abs().max()
        best, best_sse = exhaustive_subset(values, small, 4, include_zero=True)
        assert bool((best == 0).any()) and len(best) == 4
        km_sse = float(quantization_sse(values, kmeans_subset(values, small, 4)))
        assert km_sse >= best_sse - 1e-4
        ratios.append(km_sse / best_sse)
    assert max(ratios) < 1.25


def test_exhaustive_subset_finds_an_exact_fit() -> None:
    small = dfsq_universal_set(2)  # 29 values
    target = small[torch.tensor([3, 10, 14, 20])]
    values = target.repeat_interleave(5)
    points, sse = exhaustive_subset(values, small, 4)
    assert sse == 0.0 and torch.equal(points, target)
    with pytest.raises(BadInputError, match="too many"):
        exhaustive_subset(values, U, 16)
    with pytest.raises(BadInputError, match="k must be"):
        exhaustive_subset(values, small, 30)


# --------------------------------------------------------------------------- the wrapper


def test_wrapper_collects_in_fp_and_refuses_quant_before_calibration() -> None:
    conv = nn.Conv2d(4, 4, 3, padding=1)
    layer = DFSQConv(conv, bits=4, weight_bits=4, post_relu=None, name="c")
    x = torch.randn(2, 4, 8, 8)
    assert layer.mode == "collect" and not layer.calibrated
    with pytest.raises(BadInputError, match="not calibrated"):
        layer.set_mode("quant")
    with pytest.raises(BadInputError, match="no calibration input"):
        layer.finish_calibration()
    assert torch.equal(layer(x), conv(x))  # collect mode is the FP conv
    layer.mode = "quant"  # forcing the mode still refuses to run
    with pytest.raises(BadInputError, match="not calibrated"):
        layer(x)
    layer.mode = "collect"
    layer.finish_calibration()
    assert layer.mode == "quant" and layer.calibrated and layer.post_relu is False  # signed input seen
    assert layer.points is not None and layer.points.shape == (4, 16)
    assert not torch.equal(layer(x), conv(x))
    assert all(len(s) <= 16 for s in layer.point_sets())


def test_wrapper_decides_post_relu_from_the_sign_and_passes_gradients() -> None:
    layer = DFSQConv(nn.Conv2d(3, 2, 3), bits=4, weight_bits=4)
    x = torch.rand(2, 3, 8, 8)
    layer(x)
    layer.finish_calibration()
    assert layer.post_relu is True
    x.requires_grad_(True)
    layer(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


@pytest.mark.parametrize("activation", ["minmax", "percentile"])
def test_baseline_wrappers_quantize_on_a_static_grid(activation: str) -> None:
    layer = DFSQConv(nn.Conv2d(2, 2, 1), bits=3, weight_bits=8, activation=activation, percentile=90.0)
    x = torch.randn(4, 2, 8, 8)
    layer(x)
    layer.finish_calibration()
    assert layer.act_range is not None and layer.points is None
    lo, hi = layer.act_range.tolist()
    if activation == "minmax":
        assert (lo, hi) == (float(x.min()), float(x.max()))
    else:
        assert float(x.min()) < lo < 0 < hi < float(x.max())
    assert len(layer.quantize_input(x).unique()) <= 2**3


# --------------------------------------------------------------------------- selection and handler


def test_default_filter_picks_the_two_convs_of_each_block() -> None:
    model = _edsr(blocks=3)
    blocks = residual_block_convs(model)
    expected = {f"body.{i}.body.{j}": j == 2 for i in range(3) for j in (0, 2)}
    assert blocks == expected
    report = apply_dfsq(model, DFSQConfig())
    assert isinstance(report, DFSQReport)
    assert sorted(report.wrapped) == sorted(expected) and len(report.wrapped) == 2 * 3
    assert report.post_relu == expected
    skipped = dict(report.skipped)
    assert set(skipped) == {"head", "body.3", "tail.0.0", "tail.1"}
    assert set(skipped.values()) == {REASON_NOT_IN_BLOCK}
    assert json.loads(report.to_json())["wrapped"] == report.wrapped
    assert isinstance(model.head, nn.Conv2d) and isinstance(model.get_submodule("body.0.body.0"), DFSQConv)


def test_include_and_exclude_override_the_default() -> None:
    model = _edsr()
    report = apply_dfsq(model, DFSQConfig(exclude=["body.1.*"]))
    assert report.wrapped == ["body.0.body.0", "body.0.body.2"]
    assert ("body.1.body.0", "excluded") in report.skipped
    model = _edsr()
    report = apply_dfsq(model, DFSQConfig(include=["head", "body.0.body.2"]))
    assert report.wrapped == ["head", "body.0.body.2"]
    assert report.post_relu == {"head": None, "body.0.body.2": True}
    calibrate_dfsq(model, _batches())
    assert isinstance(model.head, DFSQConv) and model.head.post_relu is False  # image minus mean: signed


def test_handler_refuses_models_without_blocks_and_double_wrapping() -> None:
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 3, 3))
    with pytest.raises(BadInputError, match="no residual block"):
        apply_dfsq(plain, DFSQConfig())
    model = _edsr()
    apply_dfsq(model, DFSQConfig())
    with pytest.raises(BadInputError, match="already holds DFSQ"):
        apply_dfsq(model, DFSQConfig())


def test_calibration_input_errors() -> None:
    model = _edsr()
    with pytest.raises(BadInputError, match="no DFSQ layer"):
        calibrate_dfsq(model, _batches())
    apply_dfsq(model, DFSQConfig())
    with pytest.raises(BadInputError, match="no calibration batches"):
        calibrate_dfsq(model, [])
    with pytest.raises(BadInputError, match="calibration batch"):
        calibrate_dfsq(model, ["not a tensor"])


def test_a_calibration_that_failed_part_way_leaves_nothing_behind() -> None:
    config = DFSQConfig(kmeans_iters=20, restarts=2)
    good, other = _batches(1, seed=1), _batches(1, seed=5)
    fresh = _edsr()
    dfsq(fresh, good, config)
    model = _edsr()
    apply_dfsq(model, config)
    with pytest.raises(BadInputError, match="calibration batch"):
        calibrate_dfsq(model, [*other, "not a tensor"])  # the first batch was recorded, then it failed
    calibrate_dfsq(model, good)
    for (name, a), b in zip(fresh.named_modules(), model.modules()):
        if isinstance(a, DFSQConv):
            assert isinstance(b, DFSQConv) and torch.equal(a.points, b.points), name


# --------------------------------------------------------------------------- end to end


def test_undo_restores_exact_outputs() -> None:
    model = _edsr()
    x = _batches(1, seed=9)[0]
    reference = model(x)
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    dfsq(model, [(b, b) for b in _batches()], DFSQConfig(kmeans_iters=20, restarts=2))  # (lr, hr) tuples accepted
    assert not torch.equal(model(x), reference)
    assert unwrap_dfsq(model) == 4
    assert torch.equal(model(x), reference)
    assert {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)} == convs


def _output_mse(config: DFSQConfig, seed: int = 0) -> float:
    fp = _edsr(seed, blocks=2, feats=16)
    quant = _edsr(seed, blocks=2, feats=16)
    dfsq(quant, _batches(2, seed=1, size=24), config)
    x = _batches(1, seed=2, size=24)[0]
    with torch.no_grad():
        return float((quant(x) - fp(x)).pow(2).mean())


def test_eight_bit_is_much_closer_to_fp_than_four_bit() -> None:
    mse4 = _output_mse(DFSQConfig(bits=4))
    mse8 = _output_mse(DFSQConfig(bits=8))
    assert 0 < mse8 < mse4 / 10


def test_dfsq_beats_minmax_at_four_bits() -> None:
    subset = _output_mse(DFSQConfig(bits=4))
    minmax = _output_mse(DFSQConfig(bits=4, activation="minmax"))
    assert subset < minmax


def test_dfsq_is_deterministic_and_max_samples_subsamples() -> None:
    def points(config: DFSQConfig) -> list[torch.Tensor]:
        model = dfsq(_edsr(), _batches(), config)
        return [m.points for m in model.modules() if isinstance(m, DFSQConv)]  # type: ignore[misc]

    a, b = points(DFSQConfig(seed=3)), points(DFSQConfig(seed=3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    small = points(DFSQConfig(max_samples=50))
    assert all(p.shape == (8, 16) for p in small)
