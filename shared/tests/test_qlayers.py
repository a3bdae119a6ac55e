"""slimkit.qlayers: the LSQ-weight / LSQ+-input layer shared by arbitrary-quant and qdetr."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit.errors import BadInputError
from slimkit.qlayers import LSQLayer, plain_copy, run_layer
from slimkit.wrappers import unwrap_modules


def test_weights_sit_on_a_per_channel_signed_grid_and_the_input_on_an_unsigned_one() -> None:
    torch.manual_seed(0)
    layer = LSQLayer(nn.Conv2d(3, 5, 3), w_bits=3, a_bits=4)
    codes, step = layer.int_weight()
    assert step.shape == (5, 1, 1, 1) and codes.min() >= -4 and codes.max() <= 3
    torch.testing.assert_close(layer.quantized_weight(), codes.float() * step)
    x = torch.randn(2, 3, 8, 8)
    out = layer(x)
    q = layer.act_quant
    levels = (q.spec.qmin, q.spec.qmax)
    assert levels == (0, 15) and q.offset is not None  # signed input: LSQ+ min/max init with an offset
    xq = q(x)
    codes_in = (xq - q.offset) / q.positive_step()
    torch.testing.assert_close(codes_in, codes_in.round(), atol=1e-4, rtol=0)
    assert len(codes_in.round().unique()) <= 16
    torch.testing.assert_close(out, run_layer(layer.base_layer, xq, layer.quantized_weight(), layer.latent_bias))


@pytest.mark.parametrize("conv", [False, True], ids=["linear", "conv"])
def test_per_channel_inputs_get_one_step_and_offset_per_input_channel(conv: bool) -> None:
    torch.manual_seed(0)
    spread = torch.arange(1, 7).float()  # channel c spans about c times the range of channel 1
    if conv:
        layer, x = nn.Conv2d(6, 2, 1), torch.rand(4, 6, 5, 5) * spread.view(1, 6, 1, 1)
    else:
        layer, x = nn.Linear(6, 4), torch.rand(4, 7, 6) * spread
    q = LSQLayer(layer, 4, 4, act_granularity="channel")
    q(x).sum().backward()
    step = q.act_quant.positive_step().flatten()
    assert step.numel() == 6 and bool((step[1:] > step[:-1]).all())
    assert q.act_quant.step.grad is not None and q.act_quant.step.grad.shape == q.act_quant.step.shape


def test_undo_gives_back_the_untouched_original_and_plain_copies_carry_the_quantized_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4))
    before = model[0].weight.detach().clone()
    model[0] = LSQLayer(model[0], 2, 8)
    with torch.no_grad():
        model[0].latent_weight.mul_(2.0)
    plain = plain_copy(model[0].base_layer, model[0].quantized_weight().detach(), None)
    assert torch.equal(plain.weight, model[0].quantized_weight())
    unwrap_modules(model)
    assert isinstance(model[0], nn.Linear) and torch.equal(model[0].weight, before)


def test_bad_layers_and_options_are_one_line_errors() -> None:
    with pytest.raises(BadInputError, match=r"wraps nn\.Conv2d or nn\.Linear"):
        LSQLayer(nn.Conv1d(2, 2, 1), 4, 4)  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="padding_mode='reflect'"):
        LSQLayer(nn.Conv2d(2, 2, 3, padding_mode="reflect"), 4, 4)
    with pytest.raises(BadInputError, match="act_granularity must be one of tensor, channel"):
        LSQLayer(nn.Linear(2, 2), 4, 4, act_granularity="group")


def test_a_frozen_layer_stays_frozen_once_wrapped() -> None:
    frozen = nn.Conv2d(2, 2, 1)
    frozen.weight.requires_grad_(False)
    layer = LSQLayer(frozen, 4, 4)
    assert not layer.latent_weight.requires_grad and layer.latent_bias is not None and layer.latent_bias.requires_grad
