"""Export: packed codes on disk (no float weights), exact round trips, sizes ~ 32/bits, refusals, atomic writes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from safetensors import safe_open
from torch import nn

from arbitrary_quant.baselines import (
    AnyPrecisionLayer,
    LSQLayer,
    any_precision,
    any_precision_codes,
    init_lsq,
    lsq_quantize,
)
from arbitrary_quant.bivit import BinaryAttention, BinaryLinear, binarize_vit
from arbitrary_quant.config import AnyPrecisionConfig, BiViTConfig, DFSQConfig, LSQConfig, MultiQuantConfig
from arbitrary_quant.dfsq import DFSQConv, apply_dfsq, dfsq
from arbitrary_quant.edsr import EDSR
from arbitrary_quant.export import FORMAT, ExportReport, export, export_info, load_exported
from arbitrary_quant.multiquant import MultiBranchConv, current_bits, init_bounds, multiquant, set_bits
from arbitrary_quant.reference import minmax_weight_quantize_reference
from slimkit.errors import BadInputError, CorruptFileError
from slimkit.io import load_state_dict, save_state_dict
from slimkit.packing import unpack_bits
from slimkit.wrappers import WrapperModule, wrapped_modules
from slimkit.zoo import SmallResNet

# --------------------------------------------------------------------------- tiny models


def _resnet(seed: int = 0, widths: tuple[int, ...] = (16, 32)) -> nn.Module:
    torch.manual_seed(seed)
    return SmallResNet(num_classes=10, in_chans=3, widths=widths)


def _edsr(seed: int = 0, blocks: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return EDSR(scale=2, n_resblocks=blocks, n_feats=16)


def _vit(seed: int = 0, depth: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=depth,
                             embed_dim=64, num_heads=2, num_classes=10)


def _images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


MQ_CONFIG = MultiQuantConfig()


def _multiquant_model(config: MultiQuantConfig = MQ_CONFIG) -> nn.Module:
    """A converted SmallResNet whose branches, bounds and BatchNorms all differ (as after training)."""
    model = multiquant(_resnet(0), config)
    init_bounds(model, _images(8, 16) * 2 - 1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MultiBranchConv):
                m.branch_weight.add_(torch.randn(m.branch_weight.shape, generator=g) * 0.05)
                m.w_upper.mul_(1 + 0.2 * torch.rand(m.w_upper.shape, generator=g))
            elif isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    set_bits(model, 4)  # not the default (largest) bit-width: the loader must restore it
    return model.eval()


def _dfsq_model(config: DFSQConfig) -> nn.Module:
    model: Any = _edsr(0).eval()
    with torch.no_grad():  # one constant weight channel: MinMax leaves it unquantized (scale = the value)
        model.body[0].body[0].weight[3].fill_(0.0125)
    return dfsq(model, [_images(2, 12, seed=s) for s in (1, 2)], config)


BV_CONFIG = BiViTConfig()


def _bivit_model(attention: str = "learnable") -> tuple[nn.Module, BiViTConfig]:
    config = BiViTConfig(attention=attention)
    model = binarize_vit(_vit(0), config)
    model(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3)))  # initialises the binarizers
    return model.eval(), config


def _max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def _raw(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("config", [MQ_CONFIG, MultiQuantConfig(bit_list=(2, 3, 4, 5, 6, 7, 8))], ids=["even", "2-8"])
def test_multiquant_round_trip_at_every_bit_width(tmp_path: Path, config: MultiQuantConfig) -> None:
    model = _multiquant_model(config)
    path = tmp_path / "mq.safetensors"
    report = export(model, path, config)
    assert isinstance(report, ExportReport) and report.method == "multiquant"
    loaded = load_exported(path, _resnet(seed=7))  # other random weights: everything must come from the file
    assert not loaded.training and current_bits(loaded) == 4
    x = _images(4, 16, seed=5) * 2 - 1
    for bits in config.bit_list:
        set_bits(model, bits)
        set_bits(loaded, bits)
        assert _max_diff(model, loaded, x) <= 1e-4, bits
    # the restored latent weights quantize to the same 2-bit weights bit for bit
    for (name, a), (_, b) in zip(wrapped_modules(model, MultiBranchConv), wrapped_modules(loaded, MultiBranchConv)):
        idx = torch.arange(a.groups)
        assert torch.equal(a.quantized_weight(idx), b.quantized_weight(idx)), name


@pytest.mark.parametrize(
    "config",
    [
        DFSQConfig(bits=4, restarts=1, kmeans_iters=10),
        DFSQConfig(bits=3, w_bits=3, restarts=1, kmeans_iters=10),  # 3-bit codes: 10 per word, padded rows
        DFSQConfig(bits=4, activation="minmax"),  # the static baseline: act_range instead of points
    ],
    ids=["subset-w4a4", "subset-w3a3", "minmax"],
)
def test_dfsq_round_trip_restores_calibration(tmp_path: Path, config: DFSQConfig) -> None:
    model = _dfsq_model(config)
    path = tmp_path / "dfsq.safetensors"
    export(model, path, config)
    fresh = _edsr(seed=9)
    # the colleague's remark: a freshly wrapped DFSQConv has None calibration buffers, so
    # load_state_dict alone cannot restore them; the loader sets them itself
    probe = _edsr(seed=9)
    apply_dfsq(probe, config)
    assert all(m.points is None and m.act_range is None for _, m in wrapped_modules(probe, DFSQConv))
    loaded = load_exported(path, fresh)
    for (name, a), (_, b) in zip(wrapped_modules(model, DFSQConv), wrapped_modules(loaded, DFSQConv)):
        assert isinstance(a, DFSQConv) and isinstance(b, DFSQConv)
        assert b.mode == "quant" and b.post_relu == a.post_relu, name
        for buf in ("points", "act_range"):
            x, y = getattr(a, buf), getattr(b, buf)
            assert (x is None and y is None) or torch.equal(x, y), (name, buf)
        assert f"{name}.{'points' if config.activation == 'subset' else 'act_range'}" in loaded.state_dict()
    assert _max_diff(model, loaded, _images(2, 12, seed=4)) <= 1e-4


@pytest.mark.parametrize("attention", ["learnable", "sign"])
def test_bivit_round_trip(tmp_path: Path, attention: str) -> None:
    model, config = _bivit_model(attention)
    path = tmp_path / "bivit.safetensors"
    export(model, path, config)
    loaded = load_exported(path, _vit(seed=11))
    assert len(wrapped_modules(loaded, BinaryAttention)) == 2
    for (name, a), (_, b) in zip(wrapped_modules(model, BinaryLinear), wrapped_modules(loaded, BinaryLinear)):
        assert isinstance(a, BinaryLinear) and isinstance(b, BinaryLinear)
        assert torch.equal(a.binary_weight(), b.binary_weight()), name  # alpha recomputed exactly
    assert _max_diff(model, loaded, torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(6))) <= 1e-4


@pytest.mark.parametrize(
    "config", [LSQConfig(w_bits=4, a_bits=4), LSQConfig(w_bits=3, a_bits=5, per_channel=False)], ids=["w4-channel", "w3-tensor"]
)
def test_lsq_round_trip_and_packed_codes(tmp_path: Path, config: LSQConfig) -> None:
    model = lsq_quantize(_resnet(0), config)
    init_lsq(model, _images(8, 16) * 2 - 1)
    with torch.no_grad():  # latent weights off their init, as after training
        for m in model.modules():
            if isinstance(m, LSQLayer):
                m.latent_weight.mul_(1 + 0.1 * torch.randn(m.latent_weight.shape, generator=torch.Generator().manual_seed(4)))
    model.eval()
    path = tmp_path / "lsq.safetensors"
    report = export(model, path, config)
    loaded = load_exported(path, _resnet(seed=12))
    assert _max_diff(model, loaded, _images(4, 16, seed=5) * 2 - 1) <= 1e-4
    raw = _raw(path)
    layers: dict[str, Any] = dict(wrapped_modules(model, LSQLayer))
    assert [x.name for x in report.layers] == list(layers)
    for name, m in layers.items():
        assert raw[f"quant.{name}.codes"].dtype == torch.int32
        assert f"state.{name}.latent_weight" not in raw and f"state.{name}.base_layer.weight" not in raw
        twin: Any = loaded.get_submodule(name)
        assert torch.equal(twin.quantized_weight(), m.quantized_weight())
    _no_float_copy(raw, {n: m.latent_weight.detach() for n, m in layers.items()})
    per_word = 32 // config.w_bits  # 3-bit codes: 10 per word (2 bits of each word unused), so ~32/3.2
    for layer in report.layers:
        row = math.prod(layer.shape[1:])
        assert layer.packing_ratio == pytest.approx(row / -(-row // per_word))
        if row >= 144:
            assert layer.packing_ratio == pytest.approx(per_word, rel=0.05)


def test_any_precision_round_trip_stores_each_bit_widths_codes(tmp_path: Path) -> None:
    config = AnyPrecisionConfig(bit_list=(2, 3, 4, 8))
    model = any_precision(_resnet(0), config).eval()
    x = _images(4, 16, seed=5) * 2 - 1
    path = tmp_path / "ap.safetensors"
    report = export(model, path, config)
    loaded = load_exported(path, _resnet(seed=12))
    assert current_bits(loaded) == 8 and not any("fixed" in k for k in loaded.state_dict())
    layers: dict[str, Any] = dict(wrapped_modules(model, AnyPrecisionLayer))
    for bits in config.bit_list:
        set_bits(model, bits)
        set_bits(loaded, bits)
        assert _max_diff(model, loaded, x) == 0.0, bits
        for name, m in layers.items():  # the very weights DoReFa gives at this bit-width
            assert torch.equal(loaded.get_submodule(name).quantized_weight(), m.quantized_weight()), (name, bits)
    raw = _raw(path)
    _no_float_copy(raw, {n: m.latent_weight.detach() for n, m in layers.items()})
    name, first = next(iter(layers.items()))
    row = math.prod(first.latent_weight.shape[1:])
    codes = raw[f"quant.{name}.codes"]
    assert codes.dtype == torch.int32 and codes.shape[1] == sum(-(-row // (32 // b)) for b in config.bit_list)
    two_bit = unpack_bits(codes[:, : -(-row // 16)].contiguous(), 2, row)  # the first bit-width's levels
    levels, scale = any_precision_codes(first.latent_weight, 2)
    assert torch.equal(two_bit.to(torch.int64), levels.reshape(levels.shape[0], -1))
    assert torch.equal(raw[f"quant.{name}.scale"], scale.reshape(1))
    for layer in report.layers:  # 2 + 3 + 4 + 8 = 17 bits per weight (+ padding and one scale)
        assert 17 <= layer.bits_per_weight < 17 * 1.25
    again = tmp_path / "again.safetensors"  # a loaded export exports to the same codes
    export(loaded, again, config)
    assert all(torch.equal(t, _raw(again)[k]) for k, t in raw.items() if k.startswith("quant."))


# --------------------------------------------------------------------------- what is on disk


def _no_float_copy(raw: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> None:
    """No float tensor in the file equals (or has the shape of) a quantized layer's latent weights."""
    floats = {k: v for k, v in raw.items() if v.dtype.is_floating_point}
    for name, w in weights.items():
        for key, t in floats.items():
            assert not key.startswith(f"state.{name}.") or "weight" not in key, key
            assert t.numel() < w.numel() or not torch.equal(t.reshape(-1)[: w.numel()], w.reshape(-1)), (name, key)


def test_multiquant_file_holds_packed_int32_codes_only(tmp_path: Path) -> None:
    model = _multiquant_model()
    path = tmp_path / "mq.safetensors"
    report = export(model, path, MQ_CONFIG)
    raw = _raw(path)
    layers: dict[str, Any] = dict(wrapped_modules(model, MultiBranchConv))
    assert [x.name for x in report.layers] == list(layers)
    for name, m in layers.items():
        codes = raw[f"quant.{name}.codes"]
        g, c_out = m.branch_weight.shape[:2]
        row = m.branch_weight[0, 0].numel()
        assert codes.dtype == torch.int32 and codes.shape == (g, c_out, -(-row // 16))
        # the stored codes are the levels the fake-quant forward uses: 2c/3 - 1
        levels = unpack_bits(codes, 2, row, dtype=torch.int64).reshape(m.branch_weight.shape).float()
        assert torch.equal(2 * levels / 3 - 1, m.quantized_weight(torch.arange(g)).detach())
        assert raw[f"quant.{name}.lower"].dtype == torch.float32 and raw[f"quant.{name}.lower"].shape == (g,)
        for gone in ("branch_weight", "base_layer.weight", "w_lower", "w_upper"):
            assert f"state.{name}.{gone}" not in raw
    _no_float_copy(raw, {n: m.branch_weight.detach() for n, m in layers.items()})
    _no_float_copy(raw, {n: m.base_layer.weight.detach() for n, m in layers.items()})
    assert "state.stem.base_layer.0.weight" in raw and raw["state.stem.base_layer.0.weight"].dtype == torch.float32
    # sizes: 2-bit codes are 1/16 of fp32 latent weights; G=4 branches -> 8 bits per original weight
    for layer in report.layers:
        if layer.original_weights >= 2000:
            assert layer.packing_ratio == pytest.approx(16.0, rel=0.03)
            assert layer.bits_per_weight == pytest.approx(8.0, rel=0.03)
    assert report.compression == pytest.approx(4.0, rel=0.03)
    assert report.weights_fp32_bytes == 4 * sum(m.base_layer.weight.numel() for m in layers.values())
    assert report.file_bytes == path.stat().st_size
    json.loads(report.to_json())
    assert report.rows()[-1]["name"] == "total"


def test_dfsq_file_holds_signed_codes_scales_and_points(tmp_path: Path) -> None:
    config = DFSQConfig(bits=4, restarts=1, kmeans_iters=10)
    model = _dfsq_model(config)
    path = tmp_path / "dfsq.safetensors"
    report = export(model, path, config)
    raw = _raw(path)
    layers = dict(wrapped_modules(model, DFSQConv))
    for name, m in layers.items():
        assert isinstance(m, DFSQConv)
        w = m.conv.weight.detach()
        codes = raw[f"quant.{name}.codes"]
        assert codes.dtype == torch.int32 and codes.shape == (w.shape[0], w[0].numel() // 8)
        assert raw[f"quant.{name}.zero_point"].dtype == torch.int32
        assert raw[f"quant.{name}.points"].shape == (w.shape[1], 16)
        # (q + zero_point) * scale is the fake-quant weight, constant channels included
        q = unpack_bits(codes, 4, w[0].numel(), signed=True, dtype=torch.int64).float()
        zp, scale = raw[f"quant.{name}.zero_point"].float(), raw[f"quant.{name}.scale"]
        from_file = ((q + zp[:, None]) * scale[:, None]).reshape(w.shape)
        assert torch.equal(from_file, minmax_weight_quantize_reference(w, 4))
        assert f"state.{name}.base_layer.weight" not in raw
        assert f"state.{name}.base_layer.bias" in raw
    _no_float_copy(raw, {n: m.conv.weight.detach() for n, m in layers.items() if isinstance(m, DFSQConv)})
    assert "state.head.weight" in raw and "state.tail.1.weight" in raw  # FP head / tail stay float
    for layer in report.layers:
        assert layer.packing_ratio == pytest.approx(8.0, rel=0.03)
        assert layer.fp32_bytes == 4 * layer.original_weights
    info = export_info(path)
    assert info["format"] == FORMAT and info["method"] == "dfsq" and info["config"]["_type"] == "DFSQConfig"
    assert {e["name"] for e in info["layers"]} == set(layers)
    assert all(isinstance(e["post_relu"], bool) for e in info["layers"])


def test_bivit_file_holds_sign_bits_and_row_scales(tmp_path: Path) -> None:
    model, config = _bivit_model()
    path = tmp_path / "bivit.safetensors"
    report = export(model, path, config)
    raw = _raw(path)
    layers: dict[str, Any] = dict(wrapped_modules(model, BinaryLinear))
    assert len(layers) == 8
    for name, m in layers.items():
        out_f, in_f = m.latent_weight.shape
        assert f"state.{name}.latent_weight" not in raw and f"state.{name}.base_layer.weight" not in raw
        assert raw[f"quant.{name}.signs"].dtype == torch.int32
        assert raw[f"quant.{name}.signs"].shape == (out_f, -(-in_f // 32))
        assert raw[f"quant.{name}.alpha"].shape == (out_f,)
    _no_float_copy(raw, {n: m.latent_weight.detach() for n, m in layers.items()})
    assert raw["state.blocks.0.attn.attn_bin.alpha"].dtype == torch.float32  # attention binarizers as float
    assert raw["state.blocks.0.attn.attn_bin.initialized"].dtype == torch.bool
    assert raw["state.patch_embed.proj.weight"].dtype == torch.float32  # keep_fp layers stay float
    for layer in report.layers:
        assert layer.packing_ratio == pytest.approx(32.0, rel=0.03)
        assert layer.bits_per_weight == pytest.approx(1 + 32 / layer.shape[1])  # + one fp32 alpha per row
    assert report.compression > 20
    assert report.file_bytes < report.weights_fp32_bytes + report.other_bytes


def test_report_sizes_for_the_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not an assertion on exact numbers: prints fp32 vs exported bytes of each test model (-s to see)."""
    mq = export(_multiquant_model(), tmp_path / "a.safetensors", MQ_CONFIG)
    ds = DFSQConfig(bits=4, restarts=1, kmeans_iters=5)
    df = export(_dfsq_model(ds), tmp_path / "b.safetensors", ds)
    bv_model, bv_config = _bivit_model()
    bv = export(bv_model, tmp_path / "c.safetensors", bv_config)
    ap_config = AnyPrecisionConfig()
    ap = export(any_precision(_resnet(0), ap_config), tmp_path / "d.safetensors", ap_config)
    for r in (mq, df, bv, ap):
        print(f"{r.method}: weights fp32 {r.weights_fp32_bytes} B -> {r.weights_exported_bytes} B "
              f"({r.bits_per_weight:.2f} bits/weight, x{r.compression:.2f}); other {r.other_bytes} B; file {r.file_bytes} B")
        assert r.weights_exported_bytes < r.weights_fp32_bytes


# --------------------------------------------------------------------------- refusals


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


@pytest.fixture(scope="module")
def mq_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mq") / "model.safetensors"
    export(_multiquant_model(), path, MQ_CONFIG)
    return path


@pytest.mark.parametrize("keep", [0.3, 0.97])
def test_truncated_file_is_refused(mq_file: Path, tmp_path: Path, keep: float) -> None:
    data = mq_file.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CorruptFileError) as exc:
        load_exported(bad, _resnet())
    assert str(bad) in _one_line(exc)


def test_flipped_byte_fails_the_checksum_and_the_model_is_left_unchanged(mq_file: Path, tmp_path: Path) -> None:
    data = bytearray(mq_file.read_bytes())
    data[-100] ^= 0x40  # inside the tensor data: safetensors itself cannot notice
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    model = _resnet()
    with pytest.raises(CorruptFileError) as exc:
        load_exported(bad, model)
    assert "checksum" in _one_line(exc)
    assert not wrapped_modules(model)


def test_missing_tensor_and_foreign_files_are_refused(mq_file: Path, tmp_path: Path) -> None:
    tensors, meta = load_state_dict(mq_file)
    victim = next(k for k in tensors if k.endswith(".codes"))
    del tensors[victim]
    missing = tmp_path / "missing.safetensors"
    save_state_dict(missing, tensors, meta)
    with pytest.raises(CorruptFileError) as exc:
        load_exported(missing, _resnet())
    assert victim in _one_line(exc)

    plain = tmp_path / "plain.safetensors"
    save_state_dict(plain, _resnet().state_dict(), {"config": None})
    with pytest.raises(CorruptFileError, match="not an arbitrary-quant export"):
        load_exported(plain, _resnet())
    with pytest.raises(BadInputError, match="file not found"):
        load_exported(tmp_path / "nope.safetensors", _resnet())
    text = tmp_path / "text.safetensors"
    text.write_text("hello")
    with pytest.raises(CorruptFileError) as exc:
        load_exported(text, _resnet())
    _one_line(exc)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: _resnet(widths=(16, 64)), "shape"),  # same layers, other widths
        (lambda: _resnet(widths=(16, 32, 32)), "not in the file"),  # one more stage
        (lambda: _edsr(), "does not fit"),  # not a model MultiQuant can convert the same way
    ],
    ids=["widths", "depth", "other-family"],
)
def test_wrong_architecture_is_refused_and_the_model_is_left_as_given(mq_file: Path, build, match: str) -> None:
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(BadInputError) as exc:
        load_exported(mq_file, model)
    assert not isinstance(exc.value, CorruptFileError)
    text = _one_line(exc)
    assert match in text
    assert not wrapped_modules(model, WrapperModule)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_bivit_file_into_a_deeper_vit_is_refused(tmp_path: Path) -> None:
    model, config = _bivit_model()
    path = tmp_path / "bivit.safetensors"
    export(model, path, config)
    with pytest.raises(BadInputError) as exc:
        load_exported(path, _vit(depth=3))
    assert "blocks.2" in _one_line(exc)


def test_export_refuses_unusable_inputs(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    with pytest.raises(BadInputError, match="no MultiBranchConv"):
        export(_resnet(), path, MQ_CONFIG)
    with pytest.raises(BadInputError, match="config says"):
        export(_multiquant_model(), path, MultiQuantConfig(selection="prefix", groups=4, bit_list=(2, 4)))
    uncalibrated = _edsr()
    apply_dfsq(uncalibrated, DFSQConfig())
    with pytest.raises(BadInputError, match="not calibrated"):
        export(uncalibrated, path, DFSQConfig())
    with pytest.raises(BadInputError, match="cannot export a dict"):
        export(_resnet(), path, {"bits": 4})
    with pytest.raises(BadInputError, match="is a folder"):
        export(_multiquant_model(), tmp_path, MQ_CONFIG)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- atomic writes


def test_unwritable_target_folder_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(BadInputError) as exc:
        export(_multiquant_model(), blocker / "model.safetensors", MQ_CONFIG)
    assert "cannot write" in _one_line(exc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root ignores folder permissions
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(BadInputError, match="cannot write"):
                export(_multiquant_model(), locked / "model.safetensors", MQ_CONFIG)
            assert list(locked.iterdir()) == []
        finally:
            locked.chmod(0o700)


def test_a_failing_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"previous export")

    def broken(tensors: dict[str, torch.Tensor], filename: str, metadata: dict[str, str] | None = None) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(BadInputError, match="No space left"):
        export(_multiquant_model(), path, MQ_CONFIG)
    assert path.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
