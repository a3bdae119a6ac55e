"""Token-group pictures: group ids from the source map, rendering, and the end-to-end PNG."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from token_rate import Schedule, ToMeConfig
from token_rate.flops import tome_token_counts
from token_rate.models import digits_vit
from token_rate.patch import model_dims
from token_rate.visualize import render_groups, token_groups, trace_groups, visualize


def test_token_groups_from_a_hand_built_source():
    # 1 prefix token + 4 patches; final tokens: CLS, {p0, p2}, {p3}; p1 was pruned.
    source = torch.zeros(1, 3, 5)
    source[0, 0, 0] = 1
    source[0, 1, 1] = source[0, 1, 3] = 1
    source[0, 2, 4] = 1
    assert token_groups(source, 1).tolist() == [[1, -1, 1, 2]]


def test_render_groups_paints_group_means_and_blacks_out_pruned():
    img = np.zeros((4, 4, 3), dtype=np.uint8)
    img[:2, :2] = 10  # patch 0
    img[:2, 2:] = 30  # patch 1
    img[2:, :2] = 200  # patch 2 (pruned)
    img[2:, 2:] = 50  # patch 3
    out = render_groups(img, np.array([7, 7, -1, 9]), (2, 2))
    assert out.shape == img.shape and out.dtype == np.uint8
    # Interior pixels (not on a drawn border): group 7 is the mean of patches 0 and 1.
    assert (out[0, 0] == 20).all() and (out[0, 2] == 20).all()
    assert (out[3, 3] == 50).all()
    assert (out[3, 0] == 0).all()
    # The border between group 7 and the pruned patch is drawn light.
    assert out[1, 0, 0] > 100
    red = render_groups(img, np.array([7, 7, -1, 9]), (2, 2), pruned_color=(200, 0, 0))
    assert red[3, 0].tolist() == [200, 0, 0] and (red[0, 0] == 20).all()


def test_render_groups_rejects_bad_grids():
    with pytest.raises(ValueError, match="multiple"):
        render_groups(np.zeros((5, 4, 3), np.uint8), np.zeros(4, np.int64), (2, 2))
    with pytest.raises(ValueError, match="group ids"):
        render_groups(np.zeros((4, 4, 3), np.uint8), np.zeros(3, np.int64), (2, 2))


def _model():
    torch.manual_seed(0)
    return digits_vit(embed_dim=32, depth=3, num_heads=2).eval()


def test_traced_groups_partition_the_patches():
    model = _model()
    d = model_dims(model)
    image = torch.randn(1, 32, 32)
    merge_only = Schedule([65, 65, 65], [65, 40, 20], num_tokens=d.num_tokens)
    groups, tokens = trace_groups(model, image, merge_only)
    assert tokens == 20
    assert (groups >= 1).all()  # nothing pruned, nothing in the class token
    assert len(set(groups.tolist())) == tokens - 1  # every patch token is a non-empty group
    with_prune = Schedule([65, 50, 30], [65, 40, 20], num_tokens=d.num_tokens)
    groups, tokens = trace_groups(model, image, with_prune)
    assert tokens == 20
    # 15 patches pruned in block 1; block 2 prunes 10 tokens, some of which already hold merged patches.
    assert (groups == -1).sum() >= (65 - 50) + (40 - 30)
    assert len(set(groups.tolist()) - {-1}) == tokens - 1
    groups, tokens = trace_groups(model, image, ToMeConfig(r=10))
    assert tokens == tome_token_counts(d, [10] * d.depth)[-1]
    assert (groups >= 1).all()


def test_visualize_writes_a_png(tmp_path):
    model = _model()
    image = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    out = tmp_path / "figs" / "groups.png"
    summary = visualize(model, image, {"diffrate": Schedule([65] * 3, [65, 40, 20]), "tome": ToMeConfig(r=8)}, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["panels"]["diffrate"]["tokens"] == 20
    assert summary["panels"]["diffrate"]["groups"] == 19
    assert not list(tmp_path.glob("figs/*.tmp*"))
