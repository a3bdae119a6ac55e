"""Bi-Mask: mask relations, exact gradients (Linear and conv), permutation search."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nm_sparse import BiMaskFunction, BiMaskLayer, masks
from nm_sparse.pattern import NMPattern
from slimkit.errors import BadInputError

DECAY = 0.05


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (2, 8)])
def test_backward_mask_subset_and_nm_along_outputs(n: int, m: int) -> None:
    layer = BiMaskLayer(nn.Linear(3 * m, 2 * m), NMPattern(n, m), candidates=5)
    fwd, bwd = layer.forward_mask(), layer.backward_mask()
    assert bool((bwd <= fwd).all())  # M_b ⊆ M_f
    permuted = bwd[layer.perm]  # rows in the searched order
    per_group = permuted.reshape(2, m, 3 * m).sum(1)
    assert bool((per_group <= n).all())
    # exactly min(n, forward-kept) survive in every group: nothing else is dropped
    kept = fwd[layer.perm].reshape(2, m, 3 * m).sum(1)
    assert torch.equal(per_group, kept.clamp(max=n))


def test_linear_gradients_match_manual() -> None:
    base = nn.Linear(16, 8)
    layer = BiMaskLayer(base, NMPattern(2, 4), decay=DECAY)
    x = torch.randn(2, 5, 16, requires_grad=True)
    out = layer(x)
    w = base.weight.detach()
    fwd, bwd = layer.forward_mask(), layer.backward_mask()
    torch.testing.assert_close(out, F.linear(x, w * fwd, base.bias))
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    assert x.grad is not None and base.weight.grad is not None and base.bias.grad is not None
    torch.testing.assert_close(x.grad, grad_out @ (w * bwd))  # sparse input gradient
    dense_dw = grad_out.reshape(-1, 8).t() @ x.detach().reshape(-1, 16)
    torch.testing.assert_close(base.weight.grad, dense_dw + DECAY * (~fwd).float() * w)  # dense dW
    torch.testing.assert_close(base.bias.grad, grad_out.reshape(-1, 8).sum(0))
    # the backward mask matters: it keeps exactly the searched score's count of the forward-kept weights
    assert int(bwd.sum()) == int(layer.perm_score) < int(fwd.sum())


@pytest.mark.parametrize(
    ("dims", "kwargs"),
    [
        (2, dict(stride=1, padding=1)),
        (2, dict(stride=2, padding=2, dilation=2)),
        (2, dict(stride=1, padding=1, padding_mode="reflect")),
        (2, dict(stride=1, padding="same")),
        (1, dict(stride=2, padding=1)),
    ],
)
@pytest.mark.parametrize("layout", ["cin", "flat"])
def test_conv_gradients_match_autograd(dims: int, kwargs: dict, layout: str) -> None:
    conv_cls = nn.Conv2d if dims == 2 else nn.Conv1d
    base = conv_cls(8, 8, 3, bias=True, **kwargs)
    layer = BiMaskLayer(base, NMPattern(2, 4), layout=layout, decay=DECAY)
    shape = (2, 8, 7, 6) if dims == 2 else (2, 8, 9)
    x = torch.randn(*shape, requires_grad=True)
    out = layer(x)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    w = base.weight.detach()
    fwd, bwd = layer.forward_mask(), layer.backward_mask()
    # references with plain autograd: output with M_f, dX with M_b, dW dense
    x_ref = x.detach().clone().requires_grad_(True)
    w_b = w * bwd
    out_b = base._conv_forward(x_ref, w_b, base.bias.detach())
    out_b.backward(grad_out)
    w_ref = w.clone().requires_grad_(True)
    base._conv_forward(x.detach(), w_ref, None).backward(grad_out)
    torch.testing.assert_close(out, base._conv_forward(x.detach(), w * fwd, base.bias.detach()))
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    assert w_ref.grad is not None and base.weight.grad is not None
    torch.testing.assert_close(base.weight.grad, w_ref.grad + DECAY * (~fwd).float() * w, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(base.bias.grad, grad_out.sum(dim=[d for d in range(grad_out.dim()) if d != 1]))


def _clustered_weight() -> torch.Tensor:
    """Rows 0-3 and 4-7 share their kept columns: identity order groups them badly."""
    w = torch.full((8, 16), 0.01)
    w[:4, 0::4] = 1.0
    w[:4, 1::4] = 1.0
    w[4:, 2::4] = 1.0
    w[4:, 3::4] = 1.0
    return w


def test_permutation_search_beats_identity() -> None:
    w = _clustered_weight()
    base = nn.Linear(16, 8, bias=False)
    with torch.no_grad():
        base.weight.copy_(w)
    layer = BiMaskLayer(base, NMPattern(2, 4), candidates=20, seed=1)
    identity = float(layer.score(torch.arange(8)[None])[0])
    # 64 forward-kept weights; in identity order every kept column holds 4 in one group -> 2 survive
    assert identity == 32.0
    assert float(layer.perm_score) > identity
    best = layer.score(torch.tensor([[0, 1, 4, 5, 2, 3, 6, 7]]))
    assert float(best[0]) == 64.0 and float(layer.perm_score) <= 64.0
    assert float(layer.perm_score) == float(layer.score(layer.perm[None])[0])
    eligible = BiMaskLayer(base, NMPattern(2, 4), candidates=20, scorer="eligible", seed=1)
    assert float(eligible.score(torch.arange(8)[None])[0]) < float(eligible.perm_score)


def test_forward_refresh_mode_counts_training_forwards() -> None:
    layer = BiMaskLayer(nn.Linear(8, 8), NMPattern(2, 4), interval=2, refresh="forward")
    x = torch.randn(2, 8)
    for _ in range(3):
        layer(x)
    assert int(layer.step_count) == 3
    layer.eval()
    layer(x)
    assert int(layer.step_count) == 3


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_autocast_bfloat16_backward(kind: str) -> None:
    base: nn.Module = nn.Linear(16, 8) if kind == "linear" else nn.Conv2d(8, 8, 3, padding=1)
    layer = BiMaskLayer(base, NMPattern(2, 4), decay=1.0)  # a decay large enough to see in bf16
    x = torch.randn(2, 16, requires_grad=True) if kind == "linear" else torch.randn(2, 8, 5, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    # the same gradients as plain autograd on bf16 copies: dX through W * M_b, dense dW + decay
    w = layer.dense_weight.detach()
    x_ref = x.detach().bfloat16().requires_grad_(True)
    w_ref = w.bfloat16().requires_grad_(True)
    w_b = (w * layer.backward_mask()).bfloat16()
    if kind == "linear":
        (x_ref @ w_b.t()).float().sum().backward()
        (x.detach().bfloat16() @ w_ref.t()).float().sum().backward()
    else:
        F.conv2d(x_ref, w_b, padding=1).float().sum().backward()
        F.conv2d(x.detach().bfloat16(), w_ref, padding=1).float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    assert base.weight.grad is not None and base.weight.grad.dtype == torch.float32
    assert x_ref.grad is not None and w_ref.grad is not None
    torch.testing.assert_close(x.grad, x_ref.grad.float(), rtol=2e-2, atol=2e-2)
    expected_dw = w_ref.grad.float() + (~layer.forward_mask()).float() * w
    torch.testing.assert_close(base.weight.grad, expected_dw, rtol=2e-2, atol=2e-2)


def test_inference_path_uses_forward_mask_only() -> None:
    base = nn.Linear(16, 8)
    layer = BiMaskLayer(base, NMPattern(2, 4))
    x = torch.randn(3, 16)
    with torch.no_grad():
        out = layer(x)
    torch.testing.assert_close(out, F.linear(x, base.weight * layer.forward_mask(), base.bias))


# --------------------------------------------------------------------------- re-search at the interval


def _two_cluster_weight() -> torch.Tensor:
    """[8, 16], distinct magnitudes: rows 0-3 keep columns 0, 1 (mod 4) under 2:4, rows 4-7 keep 2, 3.

    A group of 4 permuted rows holding ``a`` rows of the first cluster keeps, per column block
    of 4, ``2 min(2, a) + 2 min(2, 4 - a)`` forward-kept weights in its backward mask: row orders
    whose groups split (2, 2), (1, 3) and (0, 4) score 64, 48 and 32 ("kept").
    """
    w = torch.empty(8, 16)
    for r in range(8):
        for c in range(16):
            big = (c % 4 < 2) == (r < 4)
            w[r, c] = (1.0 + 0.01 * (r * 16 + c)) if big else 0.001 * (1 + r * 16 + c)
    return w * torch.where(torch.arange(16) % 3 == 0, -1.0, 1.0)  # signs must not matter


def _forward_mask_by_hand() -> torch.Tensor:
    rows = torch.arange(8)[:, None] < 4
    cols = torch.arange(16)[None, :] % 4 < 2
    return rows == cols


def _kept_score(w: torch.Tensor, fwd: torch.Tensor, perm: list[int], n: int = 2, m: int = 4) -> int:
    """Independent "kept" score: per group of m permuted rows and column, min(n, forward-kept)."""
    total = 0
    for g in range(len(perm) // m):
        rows = perm[g * m : (g + 1) * m]
        for c in range(w.shape[1]):
            total += min(n, sum(bool(fwd[r, c]) for r in rows))
    return total


def _backward_mask_by_hand(w: torch.Tensor, fwd: torch.Tensor, perm: list[int], n: int = 2, m: int = 4) -> torch.Tensor:
    """Per group of m permuted rows and column: the n largest |w| among the forward-kept entries."""
    out = torch.zeros_like(fwd)
    for g in range(len(perm) // m):
        rows = perm[g * m : (g + 1) * m]
        for c in range(w.shape[1]):
            kept = sorted((r for r in rows if fwd[r, c]), key=lambda r: -abs(float(w[r, c])))
            for r in kept[:n]:
                out[r, c] = True
    return out


# three rounds of K=3 hand-fed candidates; each round's scores are distinct and its best sits at
# a different index (1, 2, 0), so "take the first/last", "argmin" or a skipped search all differ
_ROUNDS = [
    [[4, 5, 6, 7, 0, 1, 2, 3], [0, 4, 5, 6, 1, 2, 3, 7], [0, 2, 1, 3, 7, 6, 5, 4]],  # 32, 48, 32
    [[7, 1, 2, 3, 0, 4, 5, 6], [3, 2, 1, 0, 4, 5, 6, 7], [0, 4, 1, 5, 2, 6, 3, 7]],  # 48, 32, 64
    [[1, 5, 6, 7, 0, 2, 3, 4], [6, 7, 4, 5, 1, 0, 3, 2], [1, 2, 3, 0, 5, 6, 7, 4]],  # 48, 32, 32
]


def _feed_candidates(monkeypatch: pytest.MonkeyPatch, rounds: list[list[list[int]]]) -> list[list[int]]:
    """Replace torch.randperm with a queue of hand-built candidates; returns the queue (empties as drawn)."""
    queue = [perm for rnd in rounds for perm in rnd]

    def fake_randperm(count: int, *, generator: torch.Generator | None = None, **_: object) -> torch.Tensor:
        assert count == 8 and isinstance(generator, torch.Generator)
        assert queue, "more permutation searches than the interval allows"
        return torch.tensor(queue.pop(0))

    monkeypatch.setattr(torch, "randperm", fake_randperm)
    return queue


@pytest.mark.parametrize("refresh", ["step", "forward"])
def test_permutation_re_search_exactly_every_interval(monkeypatch: pytest.MonkeyPatch, refresh: str) -> None:
    """Item 5: the search runs at construction and after every T=3 steps (or training forwards), never between.

    The permutation the i-th training forward uses must be the best (by an independent score) of
    round floor((i-1)/T)'s candidates; the input gradient of that forward must use the backward
    mask of exactly that permutation.
    """
    w = _two_cluster_weight()
    fwd = _forward_mask_by_hand()
    scores = [[_kept_score(w, fwd, p) for p in rnd] for rnd in _ROUNDS]
    assert scores == [[32, 48, 32], [48, 32, 64], [48, 32, 32]]
    best = [rnd[max(range(3), key=lambda k: s[k])] for rnd, s in zip(_ROUNDS, scores)]
    bwd = [_backward_mask_by_hand(w, fwd, p) for p in best]
    assert not torch.equal(bwd[0], bwd[1]) and not torch.equal(bwd[0], bwd[2]) and not torch.equal(bwd[1], bwd[2])

    queue = _feed_candidates(monkeypatch, _ROUNDS)
    base = nn.Linear(16, 8, bias=False)
    with torch.no_grad():
        base.weight.copy_(w)
    layer = BiMaskLayer(base, NMPattern(2, 4), candidates=3, interval=3, refresh=refresh)
    assert len(queue) == 6  # one search (K=3 draws) at construction
    assert torch.equal(layer.forward_mask(), fwd)
    grad_out = torch.arange(16.0).reshape(2, 8) - 7.0
    for i in range(1, 9):  # 8 training steps: forwards 1-3 round 0, 4-6 round 1, 7-8 round 2
        expected = (i - 1) // 3
        x = torch.linspace(-1.0, 1.0, 32).reshape(2, 16).requires_grad_(True)
        layer(x).backward(grad_out)
        assert layer.perm.tolist() == best[expected], f"forward {i}"
        assert float(layer.perm_score) == max(scores[expected])
        assert torch.equal(layer.backward_mask(), bwd[expected])
        assert x.grad is not None
        torch.testing.assert_close(x.grad, grad_out @ (w * bwd[expected]), rtol=0, atol=1e-6)
        if refresh == "step":
            layer.on_step()
    assert queue == [] and int(layer.step_count) == 8  # exactly three searches: construction, step 3, step 6


def test_keep_current_competes_with_the_new_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """keep_current: the cached order is scored with the K new ones and kept unless beaten."""
    w = _two_cluster_weight()
    _feed_candidates(monkeypatch, _ROUNDS)
    base = nn.Linear(16, 8, bias=False)
    with torch.no_grad():
        base.weight.copy_(w)
    layer = BiMaskLayer(base, NMPattern(2, 4), candidates=3, interval=1, keep_current=True)
    # the identity (current at construction) scores 32 and loses to round 0's 48
    assert layer.perm.tolist() == _ROUNDS[0][1] and float(layer.perm_score) == 48.0
    layer.on_step()  # round 1: the 64 beats the current 48
    assert layer.perm.tolist() == _ROUNDS[1][2] and float(layer.perm_score) == 64.0
    layer.on_step()  # round 2: nothing beats 64, the current order stays (keep_current=False would take a 48)
    assert layer.perm.tolist() == _ROUNDS[1][2] and float(layer.perm_score) == 64.0


@pytest.mark.parametrize("scorer", ["kept", "eligible", "magnitude"])
def test_search_picks_best_of_the_random_candidates(monkeypatch: pytest.MonkeyPatch, scorer: str) -> None:
    """With the real random candidates: the chosen order is the first best by an independent score."""
    drawn: list[list[int]] = []
    real_randperm = torch.randperm

    def spy(count: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        out = real_randperm(count, generator=generator)
        drawn.append(out.tolist())
        return out

    monkeypatch.setattr(torch, "randperm", spy)
    w = torch.randn(8, 16)
    fwd = (w.abs().reshape(8, 4, 4).argsort(-1, descending=True).argsort(-1) < 2).reshape(8, 16)
    base = nn.Linear(16, 8, bias=False)
    with torch.no_grad():
        base.weight.copy_(w)
    layer = BiMaskLayer(base, NMPattern(2, 4), candidates=6, scorer=scorer, seed=3)
    assert len(drawn) == 6

    def independent(perm: list[int]) -> float:
        total = 0.0
        for g in range(2):
            rows = perm[4 * g : 4 * g + 4]
            for c in range(16):
                kept = sorted((abs(float(w[r, c])) for r in rows if fwd[r, c]), reverse=True)
                if scorer == "kept":
                    total += min(2, len(kept))
                elif scorer == "eligible":
                    total += len(kept) <= 2
                else:
                    total += sum(kept[:2])
        return total

    scores = [independent(p) for p in drawn]
    best = max(range(6), key=lambda k: (scores[k], -k))  # first of the best
    assert layer.perm.tolist() == drawn[best]
    assert float(layer.perm_score) == pytest.approx(scores[best], rel=1e-6)


# --------------------------------------------------------------------------- second round: frozen tensors, padding


def _small(kind: str, bias: bool) -> tuple[nn.Module, torch.Tensor]:
    if kind == "linear":
        return nn.Linear(8, 4, bias=bias), torch.randn(3, 8)
    return nn.Conv2d(4, 4, 3, padding=1, bias=bias), torch.randn(2, 4, 5, 5)


def _dense_weight_grad(base: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    w_ref = base.weight.detach().clone().requires_grad_(True)
    if isinstance(base, nn.Linear):
        F.linear(x, w_ref).backward(grad_out)
    else:
        base._conv_forward(x, w_ref, None).backward(grad_out)
    assert w_ref.grad is not None
    return w_ref.grad


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_frozen_weight_still_gets_the_sparse_input_gradient(kind: str) -> None:
    base, x = _small(kind, bias=False)
    base.weight.requires_grad_(False)  # e.g. a frozen layer in front of trainable ones
    layer = BiMaskLayer(base, NMPattern(2, 4), decay=DECAY)
    x.requires_grad_(True)
    out = layer(x)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    assert base.weight.grad is None
    x_ref = x.detach().clone().requires_grad_(True)
    w_b = base.weight * layer.backward_mask()
    (F.linear(x_ref, w_b) if kind == "linear" else base._conv_forward(x_ref, w_b, None)).backward(grad_out)
    assert x.grad is not None and x_ref.grad is not None
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_weight_gradient_without_bias_and_without_input_gradient(kind: str) -> None:
    base, x = _small(kind, bias=False)  # x is data: no input gradient wanted
    layer = BiMaskLayer(base, NMPattern(2, 4), decay=DECAY)
    out = layer(x)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    w = base.weight.detach()
    assert base.weight.grad is not None
    expected = _dense_weight_grad(base, x, grad_out) + DECAY * (~layer.forward_mask()).float() * w
    torch.testing.assert_close(base.weight.grad, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_frozen_bias_gets_no_gradient_and_float64_decay_is_exact(kind: str) -> None:
    base, x = _small(kind, bias=True)
    base.double()
    base.bias.requires_grad_(False)
    layer = BiMaskLayer(base, NMPattern(2, 4), decay=1 / 3)
    layer(torch.zeros_like(x, dtype=torch.float64)).sum().backward()  # zero input: dW is the decay term alone
    w = base.weight.detach()
    assert base.bias.grad is None and base.weight.grad is not None and base.weight.grad.dtype == torch.float64
    assert torch.equal(base.weight.grad, (1 / 3) * (~layer.forward_mask()).double() * w)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("dims", [1, 2])
def test_function_accepts_integer_conv_arguments(dims: int, groups: int) -> None:
    """``BiMaskFunction`` takes ``(stride, padding, dilation, groups)`` as plain ints, like ``F.conv{1,2}d``."""
    weight = torch.randn(4, 4 // groups, *([3] * dims), requires_grad=True)
    mask_f = torch.rand(weight.shape) < 0.5
    mask_b = mask_f & (torch.rand(weight.shape) < 0.5)
    x = torch.randn(2, 4, *([6] * dims), requires_grad=True)
    out = BiMaskFunction.apply(x, weight, None, mask_f, mask_b, DECAY, (2, 1, 1, groups))
    conv = F.conv1d if dims == 1 else F.conv2d
    torch.testing.assert_close(out, conv(x, weight * mask_f, None, 2, 1, 1, groups))
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = weight.detach().clone().requires_grad_(True)
    conv(x_ref, weight.detach() * mask_b, None, 2, 1, 1, groups).backward(grad_out)
    conv(x.detach(), w_ref, None, 2, 1, 1, groups).backward(grad_out)
    assert x.grad is not None and weight.grad is not None and x_ref.grad is not None and w_ref.grad is not None
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    expected_dw = w_ref.grad + DECAY * (~mask_f).float() * weight.detach()
    torch.testing.assert_close(weight.grad, expected_dw, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dims", [1, 2])
def test_valid_padding_string_means_no_padding(dims: int) -> None:
    conv_cls = nn.Conv1d if dims == 1 else nn.Conv2d
    base = conv_cls(4, 4, 3, padding="valid")
    layer = BiMaskLayer(base, NMPattern(2, 4))
    x = torch.randn(2, 4, *([6] * dims), requires_grad=True)  # training path (gradients wanted)
    out = layer(x)
    assert out.shape == (2, 4, *([4] * dims))
    expected = base._conv_forward(x.detach(), base.weight.detach() * layer.forward_mask(), base.bias.detach())
    torch.testing.assert_close(out, expected)


def test_same_padding_with_even_kernel_is_refused() -> None:
    layer = BiMaskLayer(nn.Conv2d(4, 4, (3, 2), padding="same"), NMPattern(2, 4))
    with pytest.raises(BadInputError) as err:
        layer(torch.randn(1, 4, 5, 5, requires_grad=True))
    assert str(err.value) == "Bi-Mask supports padding='same' only with odd effective kernel sizes"


@pytest.mark.parametrize("refresh", ["step", "forward"])
def test_interval_one_re_searches_before_every_later_step(monkeypatch: pytest.MonkeyPatch, refresh: str) -> None:
    """T=1: construction searches once, then every step (or every training forward after the first)."""
    layer = BiMaskLayer(nn.Linear(8, 8), NMPattern(2, 4), candidates=2, interval=1, refresh=refresh)
    searches: list[int] = []
    original = layer.search_permutation
    monkeypatch.setattr(layer, "search_permutation", lambda: searches.append(layer.steps_done) or original())
    x = torch.randn(2, 8)
    for _ in range(3):
        layer(x)
        layer.on_step()
    # "step": counted by on_step, searched after each; "forward": searched before forwards 2 and 3
    assert searches == ([1, 2, 3] if refresh == "step" else [1, 2])
    assert layer.steps_done == 3


@pytest.mark.parametrize("frozen", [False, True])
def test_no_backward_mask_when_no_gradient_is_needed(monkeypatch: pytest.MonkeyPatch, frozen: bool) -> None:
    """Inference (no_grad, or nothing requiring grad) only applies the forward mask: M_b is never computed."""
    import nm_sparse.bimask as bimask_module

    base = nn.Conv2d(4, 4, 3, padding=1)
    layer = BiMaskLayer(base, NMPattern(2, 4))

    def no_backward_mask(*args: object) -> torch.Tensor:
        raise AssertionError("the backward mask was computed for an inference forward")

    monkeypatch.setattr(bimask_module, "backward_mask", no_backward_mask)
    x = torch.randn(1, 4, 5, 5)
    if frozen:
        base.requires_grad_(False)
        out = layer(x)
    else:
        with torch.no_grad():
            out = layer(x.requires_grad_(True))
    torch.testing.assert_close(
        out, F.conv2d(x.detach(), base.weight.detach() * layer.forward_mask(), base.bias, padding=1)
    )


def test_layer_defaults_follow_the_official_code() -> None:
    """Defaults (module docstring): SR-STE decay 2e-4, K=10 candidates, re-search every T=100 steps, 'kept' scorer."""
    base = nn.Linear(16, 8)
    layer = BiMaskLayer(base, NMPattern(2, 4))
    assert layer.extra_repr() == "method=bimask, pattern=2:4, layout=cin, decay=0.0002, K=10, T=100, scorer=kept"
    assert layer.keep_current is False and layer.refresh_mode == "step"
    explicit = BiMaskLayer(
        base,
        NMPattern(2, 4),
        "cin",
        2e-4,
        candidates=10,
        interval=100,
        scorer="kept",
        keep_current=False,
        refresh="step",
        seed=0,
    )
    assert torch.equal(layer.perm, explicit.perm) and float(layer.perm_score) == float(explicit.perm_score)


def test_flat_layout_masks() -> None:
    base = nn.Conv2d(4, 4, 3)
    layer = BiMaskLayer(base, NMPattern(2, 4), layout="flat", candidates=3)
    w = base.weight.detach()
    expected = masks.weight_nm_mask(w, 2, 4, "flat")
    assert not torch.equal(expected, masks.weight_nm_mask(w, 2, 4, "cin"))  # the layouts differ here
    assert layer.layout == "flat" and torch.equal(layer.forward_mask(), expected)
    mat = masks.to_gemm_matrix(w, "flat")
    backward = masks.backward_mask_reference(mat, masks.to_gemm_matrix(expected, "flat"), layer.perm, 2, 4)
    assert torch.equal(layer.backward_mask(), masks.from_gemm_matrix(backward, w.shape, "flat"))


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        (nn.Linear(8, 6), "Bi-Mask needs output channels divisible by m=4, got 6"),
        (nn.Conv2d(8, 8, 3, groups=2), "Bi-Mask does not support grouped convolutions"),
    ],
)
def test_layer_refusals(base: nn.Module, expected: str) -> None:
    with pytest.raises(BadInputError) as err:
        BiMaskLayer(base, NMPattern(2, 4))
    assert str(err.value) == expected


def test_state_buffers_dtypes_whatever_the_default_dtype() -> None:
    """Checkpointed state: an exact int64 step counter and row order, a float32 score (the scorers' dtype)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        layer = BiMaskLayer(nn.Linear(8, 8, dtype=torch.float32), NMPattern(2, 4), candidates=2)
    finally:
        torch.set_default_dtype(previous)
    state = layer.state_dict()
    assert (state["perm"].dtype, state["step_count"].dtype, state["perm_score"].dtype) == (
        torch.int64,
        torch.int64,
        torch.float32,
    )
    layer.on_step()
    assert state["step_count"].dtype == torch.int64 and layer.steps_done == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_state_buffers_live_on_the_weight_device() -> None:
    layer = BiMaskLayer(nn.Linear(8, 8, device="cuda"), NMPattern(2, 4), candidates=2)
    assert {name: buf.device.type for name, buf in layer.named_buffers()} == {
        "perm": "cuda",
        "step_count": "cuda",
        "perm_score": "cuda",
    }


@pytest.mark.parametrize("refresh", ["step", "forward"])
@pytest.mark.parametrize("resume_at", [3, 4, 5])
def test_resume_draws_the_same_candidates_as_an_uninterrupted_run(refresh: str, resume_at: int) -> None:
    """The candidate generator is not in the state dict: loading one must still continue its stream."""
    x = torch.randn(2, 16)

    def tick(layer: BiMaskLayer) -> None:
        if refresh == "step":
            layer.on_step()
        else:
            layer(x)

    def make() -> BiMaskLayer:
        layer = BiMaskLayer(nn.Linear(16, 16), NMPattern(2, 4), candidates=3, interval=2, refresh=refresh, seed=7)
        layer.train()
        return layer

    torch.manual_seed(0)
    whole = make()
    perms = []
    for i in range(10):
        tick(whole)
        perms.append(whole.perm.clone())
        if i + 1 == resume_at:
            saved = {k: v.clone() for k, v in whole.state_dict().items()}
    torch.manual_seed(0)
    resumed = make()
    resumed.load_state_dict(saved)
    for i in range(resume_at, 10):
        tick(resumed)
        assert torch.equal(resumed.perm, perms[i]), i
    assert len({tuple(p.tolist()) for p in perms}) > 2  # the searches after the resume did pick new orders
