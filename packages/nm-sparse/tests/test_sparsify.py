"""sparsify(): selection rules, skip reports, errors, config round-trip, the training callback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import nm_sparse
from nm_sparse import NMConfig
from slimkit.errors import BadInputError
from slimkit.io import config_from_dict, config_to_dict


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.odd = nn.Linear(16, 6)  # outputs 6: fine for SR-STE, not for Bi-Mask
        self.narrow = nn.Linear(6, 16)  # 6 inputs: not divisible by 4
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.narrow(torch.relu(self.odd(torch.relu(self.embed(x)))))))


def test_default_selection_keeps_stem_and_classifier_dense(tiny_resnet: nn.Module) -> None:
    report = nm_sparse.sparsify(tiny_resnet, NMConfig())
    assert report.names == ["layer1.conv1", "layer1.conv2", "layer2.conv1", "layer2.conv2", "layer2.downsample.0"]
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons == {"conv1": "first conv kept dense", "fc": "last Linear (classifier) kept dense"}
    assert isinstance(tiny_resnet.layer1.conv1, nm_sparse.SRSTELayer)
    assert report.sparsified_params == sum(int(mod.weight.numel()) for _, mod in nm_sparse.nm_layers(tiny_resnet))
    json.loads(report.to_json())


def test_include_exclude_globs(tiny_resnet: nn.Module) -> None:
    report = nm_sparse.sparsify(tiny_resnet, NMConfig(include=["layer2.*"], exclude=["*.downsample.*"]))
    assert report.names == ["layer2.conv1", "layer2.conv2"]


def test_explicit_include_overrides_dense_defaults() -> None:
    model = Mixed()
    report = nm_sparse.sparsify(model, NMConfig(include=["head", "embed"]))
    assert report.names == ["embed", "head"]  # "head" is the last Linear, but it was named


def test_non_divisible_layers_are_skipped_with_reason() -> None:
    model = Mixed()
    report = nm_sparse.sparsify(model, NMConfig(method="bimask"))
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons["narrow"] == "input features 6 not divisible by m=4"
    assert "output channels 6" in reasons["odd"]
    assert report.names == ["embed"]
    x = torch.randn(2, 8)
    embed = model.embed.base_layer
    hidden = torch.relu(torch.nn.functional.linear(x, embed.weight * model.embed.forward_mask(), embed.bias))
    expected = model.head(torch.relu(model.narrow(torch.relu(model.odd(hidden)))))
    torch.testing.assert_close(model(x), expected)  # only embed is masked, the skipped layers stay dense


def test_named_non_divisible_layer_is_an_error_and_model_untouched() -> None:
    model = Mixed()
    with pytest.raises(BadInputError, match="narrow: input features 6 not divisible by m=4"):
        nm_sparse.sparsify(model, NMConfig(include=["embed", "narrow"]))
    assert not nm_sparse.nm_layers(model)
    with pytest.raises(BadInputError, match="no Linear/Conv layer: nope"):
        nm_sparse.sparsify(model, NMConfig(include=["nope"]))


def test_flat_layout_changes_eligibility() -> None:
    # C_in = 6 is not divisible by 4, but the flat reduction size 6*2*2 = 24 is
    cin = nm_sparse.sparsify(nn.Sequential(nn.Conv2d(6, 8, 2)), NMConfig(keep_first_dense=False))
    assert cin.names == [] and cin.skipped[0].reason == "cin reduction size 6 not divisible by m=4"
    flat = nm_sparse.sparsify(nn.Sequential(nn.Conv2d(6, 8, 2)), NMConfig(keep_first_dense=False, layout="flat"))
    assert flat.names == ["0"]


def test_already_sparsified_and_dense_method(tiny_resnet: nn.Module) -> None:
    dense = nm_sparse.sparsify(tiny_resnet, NMConfig(method="dense"))
    assert dense.names == [] and all(s.reason in ("method is dense", "first conv kept dense", "last Linear (classifier) kept dense") for s in dense.skipped)
    nm_sparse.sparsify(tiny_resnet, NMConfig())
    with pytest.raises(BadInputError, match="already sparsified"):
        nm_sparse.sparsify(tiny_resnet, NMConfig())


@pytest.mark.parametrize(
    "kwargs",
    [dict(method="rigl"), dict(pattern="5:4"), dict(layout="nhwc"), dict(decay=-1.0), dict(bimask_scorer="best"), dict(refresh="epoch")],
)
def test_config_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(BadInputError):
        NMConfig(**kwargs)


def test_config_roundtrip_and_pattern_forms() -> None:
    cfg = NMConfig(method="bimask", pattern=(1, 4), include=["a.*"], spre_bn_map={"c": "b"})
    assert cfg.pattern == "1:4" and (cfg.n, cfg.m) == (1, 4)
    data = json.loads(json.dumps(config_to_dict(cfg)))
    assert config_from_dict(NMConfig, data) == cfg


def test_step_function_and_callback_in_slimkit_train(tmp_path: Path) -> None:
    from slimkit.train import TrainConfig, train

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    nm_sparse.sparsify(model, NMConfig(method="bimask", bimask_interval=2, keep_last_dense=True))
    layers = dict(nm_sparse.nm_layers(model))
    assert set(layers) == {"1", "3"}
    x = torch.randn(64, 16)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    callback = nm_sparse.NMSparseCallback()
    config = TrainConfig(output_dir=str(tmp_path), max_steps=5, batch_size=16, lr=1e-2, cpu=True, progress=False, log_every=1)
    result = train(model, data, config, callbacks=[callback])
    assert result.steps == 5 and callback.steps == 5
    assert all(int(layer.step_count) == 5 for layer in layers.values())
    nm_sparse.step(model)
    assert all(int(layer.step_count) == 6 for layer in layers.values())


def test_unwrap_leaves_other_packages_wrappers_in_place() -> None:
    from slimkit.wrappers import WrapperModule

    class OtherWrapper(WrapperModule):  # e.g. another slimkit package's wrapper on the dense head
        pass

    model = Mixed()
    nm_sparse.sparsify(model, NMConfig())
    embed = model.embed.base_layer
    head = model.head
    model.head = OtherWrapper(head)
    assert nm_sparse.unwrap(model) == 2  # embed and odd (narrow is skipped, head is kept dense)
    assert model.embed is embed and isinstance(model.head, OtherWrapper) and model.head.base_layer is head
    assert not nm_sparse.nm_layers(model)


def test_report_lists_each_wrapped_layer() -> None:
    model = Mixed()
    report = nm_sparse.sparsify(model, NMConfig())
    assert [(r.name, r.type, r.shape, r.method, r.bn, r.note) for r in report.layers] == [
        ("embed", "Linear", [16, 8], "srste", None, ""),
        ("odd", "Linear", [6, 16], "srste", None, ""),
    ]


def test_selection_error_messages() -> None:
    def message(model: nn.Module, config: NMConfig) -> str:
        with pytest.raises(BadInputError) as err:
            nm_sparse.sparsify(model, config)
        return str(err.value)

    model = Mixed()
    assert message(model, NMConfig(include=["embed", "narrow"])) == (
        "cannot apply 2:4 to requested layers: narrow: input features 6 not divisible by m=4"
    )
    assert message(model, NMConfig(include=["nope", "embed", "gone"])) == "include names no Linear/Conv layer: nope, gone"
    assert message(model, NMConfig(include=["x.*", "y?"])) == "include x.*, y? matches no Linear/Conv layer"
    nm_sparse.sparsify(model, NMConfig())
    assert message(model, NMConfig()) == "model is already sparsified; call nm_sparse.unwrap or nm_sparse.deploy first"


def test_report_fields_and_keep_last_dense_off() -> None:
    model = Mixed()
    report = nm_sparse.sparsify(model, NMConfig(keep_last_dense=False, layout="flat"))
    assert (report.method, report.pattern, report.layout) == ("srste", "2:4", "flat")
    assert report.names == ["embed", "odd", "head"]  # the classifier is sparsified too
    assert [(s.name, s.type, s.shape, s.reason) for s in report.skipped] == [
        ("narrow", "Linear", [16, 6], "input features 6 not divisible by m=4")
    ]
    assert report.total_params == 16 * 8 + 6 * 16 + 16 * 6 + 3 * 16  # every candidate layer, wrapped or not
    assert report.sparsified_params == 16 * 8 + 6 * 16 + 3 * 16


def test_dense_method_reports_every_candidate_and_two_named_errors_join() -> None:
    report = nm_sparse.sparsify(Mixed(), NMConfig(method="dense"))
    assert report.names == []
    assert [(s.name, s.reason) for s in report.skipped] == [
        ("embed", "method is dense"),
        ("odd", "method is dense"),
        ("narrow", "method is dense"),
        ("head", "last Linear (classifier) kept dense"),
    ]
    with pytest.raises(BadInputError) as err:
        nm_sparse.sparsify(Mixed(), NMConfig(method="bimask", include=["odd", "narrow"]))
    assert str(err.value) == (
        "cannot apply 2:4 to requested layers: odd: output channels 6 not divisible by m=4 (bimask masks the outputs"
        " too); narrow: input features 6 not divisible by m=4"
    )


def _decay_grads(method: str, in_backward: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    nm_sparse.sparsify(model, NMConfig(method=method, decay=0.05, keep_last_dense=True))
    for _, layer in nm_sparse.nm_layers(model):
        assert layer.decay_in_backward  # the official placement is the default outside the callback
        layer.decay_in_backward = in_backward
    model(torch.randn(8, 16)).square().mean().backward()
    if not in_backward:
        nm_sparse.add_decay_grads(model)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", ["srste", "bimask"])
def test_decay_added_per_step_equals_the_official_backward_in_fp32(method: str) -> None:
    official, per_step = _decay_grads(method, True), _decay_grads(method, False)
    assert official.keys() == per_step.keys()
    for name in official:
        torch.testing.assert_close(per_step[name], official[name], rtol=0, atol=1e-7)


@pytest.mark.parametrize("method", ["srste", "bimask"])
def test_accumulated_micro_batches_decay_once_per_step(tmp_path: Path, method: str) -> None:
    """Two micro-batches of 8 and one batch of 16 give the same step: the decay is added once, not twice."""
    from slimkit.train import TrainConfig, train

    x = torch.randn(16, 16, generator=torch.Generator().manual_seed(1))
    data = TensorDataset(x, (x[:, 0] > 0).long())
    weights = []
    for batch, accum in ((16, 1), (8, 2)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
        nm_sparse.sparsify(model, NMConfig(method=method, decay=0.5, keep_last_dense=True))
        config = TrainConfig(output_dir=str(tmp_path / f"{batch}"), max_steps=3, batch_size=batch, grad_accum_steps=accum,
                             lr=1e-2, optimizer="sgd", scheduler="constant", cpu=True, progress=False, seed=0)
        train(model, data, config, callbacks=[nm_sparse.NMSparseCallback()])
        weights.append(model[0].dense_weight.detach().clone())
        assert all(layer.decay_in_backward for _, layer in nm_sparse.nm_layers(model))  # restored after the run
    torch.testing.assert_close(weights[1], weights[0], rtol=0, atol=1e-6)
