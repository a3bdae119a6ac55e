"""nm-sparse then arbitrary-quant: a 2:4 model quantized to 4 bits and exported keeps exactly its 2:4 pattern."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

nm_sparse = pytest.importorskip("nm_sparse")
arbitrary_quant = pytest.importorskip("arbitrary_quant")

from arbitrary_quant import LSQConfig, lsq_quantize  # noqa: E402
from arbitrary_quant.baselines import LSQLayer, init_lsq  # noqa: E402
from arbitrary_quant.export import export, load_exported  # noqa: E402
from nm_sparse.check import check_weight  # noqa: E402
from nm_sparse.pattern import parse_pattern  # noqa: E402
from slimkit.data import digits  # noqa: E402
from slimkit.train import TrainConfig, train  # noqa: E402
from slimkit.zoo import SmallResNet  # noqa: E402


def test_2_4_sparse_model_quantized_to_4_bits_and_exported_stays_2_4(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = digits("train")
    model = SmallResNet(num_classes=10, in_chans=1)
    nm_sparse.sparsify_(model, nm_sparse.SRSTEConfig(pattern="2:4"))
    train(model, data, TrainConfig(output_dir=str(tmp_path / "run"), max_steps=5, batch_size=32, cpu=True,
                                   progress=False), callbacks=[nm_sparse.NMSparseCallback()])  # fmt: skip
    nm_sparse.deploy(model, fold_bn=False)  # plain convs holding the 2:4 weights; BatchNorms kept for 4-bit QAT
    sparse = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert all(check_weight(w, parse_pattern("2:4")).valid for n, w in sparse.items() if n != "stem.0")

    lsq_quantize(model, LSQConfig(w_bits=4, a_bits=4))
    init_lsq(model, data.tensors[0][:32])
    model.eval()
    x = digits("val").tensors[0][:16]
    fake_quant = model(x)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LSQLayer)}
    assert layers, "the body convs are quantized"
    for name, layer in layers.items():
        codes, _ = layer.int_weight()
        if layer.base_layer.weight.dim() == 4:  # every quantized conv: a zero stays an exact zero code
            assert bool((codes[sparse[name] == 0] == 0).all()), name
            assert check_weight(codes.float(), parse_pattern("2:4")).valid, name

    target = tmp_path / "sparse-w4.safetensors"
    export(model, target, LSQConfig(w_bits=4, a_bits=4))
    fresh = load_exported(target, SmallResNet(num_classes=10, in_chans=1))
    torch.testing.assert_close(fresh(x), fake_quant, rtol=0, atol=1e-4)
    for name, layer in ((n, m) for n, m in fresh.named_modules() if isinstance(m, LSQLayer)):
        if layer.base_layer.weight.dim() == 4:
            assert check_weight(layer.quantized_weight().detach(), parse_pattern("2:4")).valid, name
