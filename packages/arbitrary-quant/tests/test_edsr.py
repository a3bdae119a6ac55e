"""EDSR-baseline: shapes per scale, layout and parameter count, residual scaling, trainability."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from arbitrary_quant.edsr import EDSR, ResBlock, edsr_baseline
from slimkit.errors import BadInputError


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_is_scale_times_input(scale: int) -> None:
    model = EDSR(scale=scale, n_resblocks=1, n_feats=8)
    assert model(torch.rand(2, 3, 7, 9)).shape == (2, 3, 7 * scale, 9 * scale)


def test_baseline_layout_and_parameter_count() -> None:
    model = edsr_baseline(scale=2)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs[0] == "head" and convs[-1] == "tail.1" and "body.16" in convs
    assert sum(isinstance(m, ResBlock) for m in model.modules()) == 16
    # EDSR-baseline x2 without the frozen mean-shift convs: the published 1,369,859 parameters
    assert sum(p.numel() for p in model.parameters()) == 1_369_859
    assert sum(isinstance(m, nn.PixelShuffle) for m in edsr_baseline(4).modules()) == 2


def test_mean_shift_is_undone_and_residual_scaling_applies() -> None:
    model = EDSR(n_resblocks=1, n_feats=4)
    for p in model.parameters():
        nn.init.zeros_(p)
    x = torch.rand(1, 3, 5, 5)
    assert torch.allclose(
        model(x), torch.zeros(1, 3, 10, 10) + model.get_buffer("rgb_mean")
    )  # zero net -> the mean image
    block = ResBlock(4, res_scale=0.1)
    y = torch.randn(1, 4, 6, 6)
    assert torch.allclose(block(y), y + 0.1 * block.body(y))


def test_bad_arguments() -> None:
    with pytest.raises(BadInputError, match="scale"):
        EDSR(scale=5)
    with pytest.raises(BadInputError, match="n_feats"):
        EDSR(n_feats=0)
    with pytest.raises(BadInputError, match="rgb_mean"):
        EDSR(n_colors=1)


def test_a_few_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    model = EDSR(scale=2, n_resblocks=1, n_feats=8)
    hr = nn.functional.interpolate(torch.rand(4, 3, 4, 4), size=16, mode="bilinear")  # smooth: learnable
    lr = nn.functional.avg_pool2d(hr, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss = nn.functional.l1_loss(model(lr), hr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
