"""Export: real packed codes on disk (no float weights), exact round trips, sizes ~ 32 / bits, refusals, the CLI."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from qdetr.api import quantize
from qdetr.checkpoints import save_model_folder
from qdetr.cli import main
from qdetr.config import QDetrConfig
from qdetr.export import FORMAT, QUANT, STATE, ExportReport, export, export_info, load_exported
from qdetr.models import tiny_detr
from qdetr.quantize import calibrate
from slimkit.errors import BadInputError, CorruptFileError
from slimkit.io import load_state_dict, save_state_dict, state_digest
from slimkit.packing import unpack_bits
from slimkit.qlayers import LSQLayer

PIXELS = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


pytestmark = pytest.mark.usefixtures("one_thread")


def _trained(config: QDetrConfig, seed: int = 0) -> Any:
    """A tiny DETR quantized with ``config`` and calibrated, its latent weights, steps and DA moved as by training."""
    torch.manual_seed(seed)
    model = quantize(tiny_detr(num_labels=3), config)
    calibrate(model, [PIXELS])
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LSQLayer):
                step = m.weight_quant.positive_step()
                m.latent_weight.add_(torch.randn(m.latent_weight.shape, generator=g) * step)
                m.weight_quant.step.mul_(1 + 0.1 * torch.rand(m.weight_quant.step.shape, generator=g))
                m.act_quant.step.mul_(1.05)
        for name, p in model.named_parameters():
            if name.endswith(("alignment.gamma", "alignment.beta")):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def _outputs(model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model(pixel_values=PIXELS)
    return out.logits, out.pred_boxes


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, ExportReport]:
    model = _trained(QDetrConfig())
    path = tmp_path_factory.mktemp("export") / "q448.safetensors"
    return model, path, export(model, path, QDetrConfig())


def test_loaded_model_computes_what_the_fake_quant_model_computes(exported) -> None:
    model, path, _ = exported
    loaded = load_exported(path)
    (logits, boxes), (logits2, boxes2) = _outputs(model), _outputs(loaded)
    torch.testing.assert_close(logits2, logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(boxes2, boxes, atol=1e-5, rtol=0)
    assert torch.equal(logits2, logits) and torch.equal(boxes2, boxes)  # in fact bit for bit on CPU
    own, back = model.state_dict(), loaded.state_dict()
    for name, m in loaded.named_modules():  # the forward's weights are the exported ones, exactly
        if isinstance(m, LSQLayer):
            assert torch.equal(m.quantized_weight(), model.get_submodule(name).quantized_weight())
    kept = [k for k in own if not k.endswith(("latent_weight", "weight_quant.step", "base_layer.weight", "base_layer.bias"))]
    assert all(torch.equal(back[k], own[k]) for k in kept) and not loaded.training
    backbone = [p for n, p in loaded.named_parameters() if n.startswith("model.backbone.")]
    assert backbone and all(p.requires_grad for p in backbone)  # fine-tunable, as a from_pretrained model


def test_file_holds_int32_codes_and_no_float_copy_of_quantized_weights(exported) -> None:
    model, path, report = exported
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LSQLayer)}
    assert len(report.layers) == len(layers) > 20
    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
        tensors = {k: f.get_tensor(k) for k in names}
    for name, layer in layers.items():
        words = tensors[f"{QUANT}{name}.codes"]
        assert words.dtype == torch.int32
        codes = unpack_bits(words, layer.w_bits, math.prod(layer.latent_weight.shape[1:]), signed=True)
        assert torch.equal(codes.reshape(layer.latent_weight.shape), layer.int_weight()[0])
        assert tensors[f"{QUANT}{name}.step"].dtype == torch.float32
        for key in ("latent_weight", "base_layer.weight", "base_layer.bias", "weight_quant.step"):
            assert f"{STATE}{name}.{key}" not in names
        for w in (layer.latent_weight, layer.quantized_weight(), layer.base_layer.weight):  # no float copy anywhere
            same = [k for k, t in tensors.items() if t.is_floating_point() and t.numel() == w.numel()]
            assert not any(torch.allclose(tensors[k].reshape(w.shape).float(), w.detach()) for k in same), name
    assert {k for k in names if not k.startswith((STATE, QUANT))} == set()
    assert f"{STATE}model.decoder.layers.1.encoder_attn.alignment.gamma" in names  # DA, quantizers, norms kept
    assert f"{STATE}model.decoder.layers.1.encoder_attn.q_quant.offset" in names
    meta = export_info(path)
    assert meta["format"] == FORMAT and meta["config"]["_type"] == "QDetrConfig" and meta["detr_config"]["d_model"] == 64
    assert len(meta["sha256"]) == 64 and sorted(meta["tensors"]) == sorted(names)


def test_report_sizes_are_the_packed_ones(exported) -> None:
    model, path, report = exported
    assert report.file_bytes == path.stat().st_size and report.bits == "4-4-8"
    with safe_open(str(path), framework="pt") as f:
        names = list(f.keys())
        codes = sum(f.get_tensor(k).numel() * 4 for k in names if k.endswith(".codes"))
    assert report.code_bytes == codes
    assert report.weights_fp32_bytes == 4 * sum(m.latent_weight.numel() for m in model.modules() if isinstance(m, LSQLayer))
    for layer in report.layers:  # each layer ~ 32 / bits smaller (int32 words; padding only at row ends)
        assert 0.8 * 32 / layer.bits <= layer.fp32_bytes / layer.code_bytes <= 32 / layer.bits
        assert layer.bits_per_weight == 8 * (layer.code_bytes + layer.step_bytes) / layer.weights
    four = [x for x in report.layers if x.bits == 4]
    assert len(four) > len(report.layers) - 3  # the stem is 8-bit
    assert sum(x.fp32_bytes for x in four) / sum(x.code_bytes for x in four) == pytest.approx(8, rel=0.02)
    assert 4 < report.bits_per_weight < 5 and report.compression == pytest.approx(32 / report.bits_per_weight)
    assert report.file_bytes < report.weights_fp32_bytes / 2


@pytest.mark.parametrize("bits", [2, 3])
def test_low_bit_variants_round_trip_and_shrink(bits: int, tmp_path: Path, exported) -> None:
    config = QDetrConfig(w_bits=bits, a_bits=bits)
    model = _trained(config, seed=bits)
    report = export(model, tmp_path / "m.safetensors", config)
    torch.testing.assert_close(_outputs(load_exported(tmp_path / "m.safetensors")), _outputs(model), atol=1e-5, rtol=0)
    main_layers = [x for x in report.layers if x.bits == bits]
    ratio = sum(x.fp32_bytes for x in main_layers) / sum(x.code_bytes for x in main_layers)
    assert 0.85 * 32 / bits <= ratio <= 32 / bits
    assert report.file_bytes < exported[2].file_bytes  # smaller than the 4-bit file


def test_export_refuses_what_it_cannot_write_exactly(tmp_path: Path, exported) -> None:
    model = exported[0]
    target = tmp_path / "m.safetensors"
    with pytest.raises(BadInputError, match="no quantized layers"):
        export(tiny_detr(num_labels=3), target, QDetrConfig())
    with pytest.raises(BadInputError, match="quantizer settings differ"):
        export(model, target, QDetrConfig(w_bits=2))  # not the config the model was quantized with
    with pytest.raises(BadInputError, match="entries"):
        export(model, target, QDetrConfig(alignment="none"))
    with pytest.raises(BadInputError, match="folder"):
        export(model, tmp_path, QDetrConfig())
    broken = _trained(QDetrConfig(), seed=3)
    layer = next(m for m in broken.modules() if isinstance(m, LSQLayer))
    with torch.no_grad():
        layer.latent_weight[0, 0] = float("nan")
    target.write_bytes(b"keep me")
    with pytest.raises(BadInputError, match="round trip") as info:
        export(broken, target, QDetrConfig())
    assert "\n" not in str(info.value)
    assert target.read_bytes() == b"keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def _rewrite(src: Path, dst: Path, edit: Any, rehash: bool) -> None:
    tensors, meta = load_state_dict(src)
    edit(tensors, meta)
    if rehash:
        meta["tensors"] = sorted(tensors)
        meta["sha256"] = state_digest(meta, tensors)
    save_state_dict(dst, tensors, meta)


CODES = f"{QUANT}model.decoder.layers.0.mlp.fc1.codes"
GAMMA = f"{STATE}model.decoder.layers.1.encoder_attn.alignment.gamma"


def _drop(tensors: dict, meta: dict) -> None:
    del tensors[GAMMA]


def _reshape(tensors: dict, meta: dict) -> None:
    tensors[CODES] = tensors[CODES][:, :-1].contiguous()


def _as_float(tensors: dict, meta: dict) -> None:
    tensors[CODES] = tensors[CODES].float()


def _bad_step(tensors: dict, meta: dict) -> None:
    tensors[CODES.replace(".codes", ".step")][0] = float("inf")


@pytest.mark.parametrize(
    ("edit", "rehash", "error", "match"),
    [
        (_drop, False, CorruptFileError, "missing tensor"),
        (_drop, True, CorruptFileError, "model tensor.* not in the file"),
        (_reshape, False, CorruptFileError, "checksum"),
        (_reshape, True, CorruptFileError, r"is torch.int32 \[128, 7\], the layer needs torch.int32 \[128, 8\]"),
        (_as_float, True, CorruptFileError, "the layer needs torch.int32"),
        (_bad_step, True, CorruptFileError, "not finite and positive"),
    ],
    ids=["missing-tensor", "missing-tensor-rehashed", "wrong-shape", "wrong-shape-rehashed", "float-codes", "inf-step"],
)
def test_damaged_files_are_refused_in_one_line(edit, rehash, error, match, exported, tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    _rewrite(exported[1], bad, edit, rehash)
    with pytest.raises(error, match=match) as info:
        load_exported(bad)
    assert "\n" not in str(info.value)


def test_truncated_flipped_and_foreign_files_are_refused(exported, tmp_path: Path) -> None:
    data = exported[1].read_bytes()
    header = int.from_bytes(data[:8], "little") + 8
    cases = {
        "truncated": data[: len(data) // 2],
        "flipped-tensor-byte": data[:-100] + bytes([data[-100] ^ 0x10]) + data[-99:],
        "flipped-header-byte": data[:header - 40] + bytes([data[header - 40] ^ 0x01]) + data[header - 39:],
        "empty": b"",
    }  # fmt: skip
    for name, blob in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(blob)
        with pytest.raises(CorruptFileError) as info:
            load_exported(path)
        assert "\n" not in str(info.value), name
    save_state_dict(tmp_path / "plain.safetensors", {"w": torch.zeros(2)}, {"format": "something-else"})
    with pytest.raises(CorruptFileError, match="not a qdetr export"):
        load_exported(tmp_path / "plain.safetensors")
    with pytest.raises(BadInputError, match="not found"):
        load_exported(tmp_path / "nope.safetensors")


def test_cli_exports_a_quantized_folder_and_refuses_an_fp_one(tmp_path: Path, capsys, exported) -> None:
    model = exported[0]
    save_model_folder(tmp_path / "q", model, QDetrConfig())
    save_model_folder(tmp_path / "fp", tiny_detr(num_labels=3), None)
    target = tmp_path / "out" / "q.safetensors"
    assert main(["export", str(tmp_path / "q"), "-o", str(target), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["output"] == str(target) and result["file_bytes"] == target.stat().st_size
    assert result["weights_exported_bytes"] < result["weights_fp32_bytes"] / 6
    torch.testing.assert_close(_outputs(load_exported(target)), _outputs(model), atol=1e-5, rtol=0)
    assert main(["export", str(tmp_path / "q"), "-o", str(target)]) == 0  # a re-run replaces the file
    assert "bits/weight" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "fp"), "-o", str(tmp_path / "fp.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a full-precision model" in err and not (tmp_path / "fp.safetensors").exists()


def test_export_carries_the_recorded_categories(tmp_path: Path, capsys, exported) -> None:
    model = copy.deepcopy(exported[0])  # saving with categories names the labels of the model's own config
    categories = [(1, "square"), (2, "disk"), (7, "triangle")]
    save_model_folder(tmp_path / "q", model, QDetrConfig(), categories=categories)
    target = tmp_path / "q.safetensors"
    assert main(["export", str(tmp_path / "q"), "-o", str(target), "--json"]) == 0
    capsys.readouterr()
    info = export_info(target)
    assert info["categories"] == [{"id": 1, "name": "square"}, {"id": 2, "name": "disk"}, {"id": 7, "name": "triangle"}]
    assert load_exported(target).config.id2label == {0: "square", 1: "disk", 2: "triangle"}
    assert "categories" not in export_info(exported[1])  # a model without a record: none in the file
    with pytest.raises(BadInputError, match="2 categories for a model that predicts 3"):
        export(model, tmp_path / "bad.safetensors", QDetrConfig(), categories=categories[:2])
    assert not (tmp_path / "bad.safetensors").exists()
