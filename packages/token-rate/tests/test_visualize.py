"""Token-group pictures: group ids from the source map, rendering, and the end-to-end PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import token_rate
from slimkit.errors import BadInputError
from token_rate import Schedule, ToMeConfig
from token_rate.flops import tome_token_counts
from token_rate.models import digits_vit
from token_rate.patch import model_dims
from token_rate.visualize import (
    render_groups,
    resolve_blocks,
    token_groups,
    trace_block_groups,
    trace_groups,
    visualize,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert summary["panels"]["diffrate"]["tokens"] == 20
    assert summary["panels"]["diffrate"]["groups"] == 19
    assert not list(tmp_path.glob("figs/*.tmp*"))


def _prune_merge_schedule(num_tokens):
    # Block 0 merges, block 1 prunes and merges, block 2 prunes only: 65 -> 50 -> 35 -> 20 tokens.
    return Schedule([65, 45, 20], [50, 35, 40], num_tokens=num_tokens)


def test_groups_after_each_block_match_the_schedule_counts():
    model = _model()
    d = model_dims(model)
    image = torch.randn(1, 32, 32)
    schedule = _prune_merge_schedule(d.num_tokens)
    kept = schedule.effective(d.num_tokens)
    assert kept == [50, 35, 20]
    traced = trace_block_groups(model, image, schedule, "all")
    assert [b for b, _, _ in traced] == [0, 1, 2]
    assert [t for _, _, t in traced] == kept
    pruned_before = 0
    for _, groups, tokens in traced:
        assert len(set(groups.tolist()) - {-1}) == tokens - 1  # every patch token holds >= 1 patch
        pruned = int((groups == -1).sum())
        assert pruned >= pruned_before  # a patch once pruned stays pruned
        pruned_before = pruned
    assert int((traced[0][1] == -1).sum()) == 0  # block 0 only merges
    # One index, negative indices and the default all agree with the per-block trace.
    for block in (1, -2):
        groups, tokens = trace_groups(model, image, schedule, block=block)
        assert tokens == kept[1] and np.array_equal(groups, traced[1][1])
    last_groups, last_tokens = trace_groups(model, image, schedule)
    assert last_tokens == kept[-1] and np.array_equal(last_groups, traced[-1][1])
    groups, tokens = trace_groups(model, image, schedule, block=-1)
    assert tokens == last_tokens and np.array_equal(groups, last_groups)


def test_tracing_a_patched_model_replaces_its_patch(tmp_path):
    """Like patch(), tracing an already patched model uses the given config only (the inspection of
    the blocks used to refuse the patched block classes)."""
    model = _model()
    image = torch.randn(1, 32, 32)
    schedule = _prune_merge_schedule(model_dims(model).num_tokens)
    plain = trace_block_groups(model, image, schedule, "all")
    token_rate.patch(model, ToMeConfig(r=5))
    patched = trace_block_groups(model, image, schedule, "all")
    assert [(b, t) for b, _, t in patched] == [(b, t) for b, _, t in plain]
    assert all(np.array_equal(g1, g2) for (_, g1, _), (_, g2, _) in zip(plain, patched))
    assert token_rate.get_context(model).method == "tome"  # the caller's model keeps its own patch
    summary = visualize(model, np.zeros((32, 32, 3), dtype=np.uint8), {"s": schedule}, tmp_path / "v.png")
    assert summary["panels"]["s"]["tokens"] == schedule.effective()[-1]


def test_tome_groups_after_a_block():
    model = _model()
    d = model_dims(model)
    _, _, tokens = trace_block_groups(model, torch.randn(1, 32, 32), ToMeConfig(r=10), 0)[0]
    assert tokens == tome_token_counts(d, [10] * d.depth)[0]


def test_resolve_blocks_and_out_of_range_indices():
    assert resolve_blocks(None, 12) == [11]
    assert resolve_blocks(-1, 12) == [11] and resolve_blocks(-12, 12) == [0] and resolve_blocks(6, 12) == [6]
    assert resolve_blocks("all", 3) == [0, 1, 2] and resolve_blocks("2", 3) == [2] and resolve_blocks([0, -1], 3) == [0, 2]
    for bad in (3, -4, [0, 7], "x", [], True):
        with pytest.raises(BadInputError):
            resolve_blocks(bad, 3)
    model = _model()
    with pytest.raises(BadInputError, match="out of range"):
        trace_groups(model, torch.randn(1, 32, 32), Schedule([65] * 3, [65, 40, 20]), block=3)


def test_visualize_block_panel_and_all_blocks(tmp_path):
    from PIL import Image

    model = _model()
    d = model_dims(model)
    schedule = _prune_merge_schedule(d.num_tokens)
    kept = schedule.effective(d.num_tokens)
    image = (np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)
    out = tmp_path / "block1.png"
    summary = visualize(model, image, {"dr": schedule}, out, block=1)
    assert out.read_bytes()[:8] == PNG_MAGIC
    with Image.open(out) as im:
        im.verify()
    assert summary["panels"]["dr"]["block"] == 1 and summary["panels"]["dr"]["tokens"] == kept[1]
    out_all = tmp_path / "all.png"
    summary = visualize(model, image, {"dr": schedule}, out_all, block="all")
    assert out_all.read_bytes()[:8] == PNG_MAGIC
    assert {k: v["tokens"] for k, v in summary["panels"].items()} == {f"dr @ block {b}": kept[b] for b in range(3)}
    with pytest.raises(BadInputError, match="out of range"):
        visualize(model, image, {"dr": schedule}, tmp_path / "bad.png", block=-4)
    assert not (tmp_path / "bad.png").exists()


def test_cli_visualize_block(capsys, tmp_path):
    from token_rate.cli import main

    schedule = Schedule([65, 45, 45, 30, 30, 20], [50, 35, 40, 30, 25, 20], num_tokens=65)  # digits_vit: 6 blocks
    kept = schedule.effective(65)
    sched = tmp_path / "s.json"
    schedule.save(sched)
    base = ["visualize", "--model", "digits_vit", "--schedule", str(sched), "--image", "coffee"]
    png = tmp_path / "b.png"
    assert main([*base, "--block", "-2", "--output", str(png), "--json"]) == 0
    (panel,) = json.loads(capsys.readouterr().out)["panels"].values()
    assert panel["block"] == 4 and panel["tokens"] == kept[4] == 25
    assert png.read_bytes()[:8] == PNG_MAGIC
    for bad in ("6", "-7", "first"):
        code = main([*base, "--block", bad, "--output", str(tmp_path / "x.png")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and ": error: " in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "x.png").exists()
