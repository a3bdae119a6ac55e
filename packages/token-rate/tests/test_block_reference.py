"""Patched models against an independent reference of the whole block (issue #15, items 1 to 3).

The reference in this file is written from the methods' definitions (the DiffRate and ToMe papers and
what their official code does, research notes sections 1.2-1.7 and 3.2-3.3) with plain torch ops on
the model's own weights. It imports nothing from token_rate and runs no patched module, so a patched
model that drops proportional attention, LayerScale, the size bookkeeping, the sort, the merge rule,
the size-weighted pool or a one-token reduction disagrees with it.

One block, as the reference runs it (pre-norm timm ``Block`` / HF ``ViTLayer``)::

    y, attn, keys = attention(norm1(x), size)     # softmax(q k^T / sqrt(d) + log(size_key)) v
    x = x + gamma1 * y                            # LayerScale (timm ls1; HF has none)
    x, size, source = compress(x, size, source)   # DiffRate prune + merge, or ToMe bipartite merge
    x = x + gamma2 * mlp(norm2(x))

DiffRate (fixed schedule, inference): patch tokens are sorted by class attention (the CLS query row,
heads averaged; without a class token, the attention each token receives, averaged over heads and
queries), prefix tokens pinned in front; the first ``prune`` survive; the tokens ranked after
``merge`` each go into their most cosine-similar higher-ranked token (cosine on the block's hidden
state, never into a prefix token). ``official``: unweighted mean of a destination and its sources,
source sizes multiplied by that cosine before they are added; ``weighted``: size-weighted mean, sizes
add. The official code sorts in every block; this reference sorts only in blocks that remove tokens,
as the package does (a sort alone only permutes tokens, which no later block or head can see).

ToMe: keys averaged over heads are the metric; A = even, B = odd positions (the class token in A, never
merged); the r A tokens with the most similar best B match are folded into it by a size-weighted mean;
the output is [class token, unmerged A in original order, B].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import token_rate
from token_rate import DiffRateConfig, Schedule, SearchConfig, ToMeConfig
from token_rate.flops import analytic_macs

TOL = 1e-5

# ----------------------------------------------------------------------------------------------
# The reference
# ----------------------------------------------------------------------------------------------


@dataclass
class Tokens:
    x: Tensor  # [B, N, C]
    size: Tensor  # [B, N, 1], how many input tokens each token stands for (official: similarity-scaled)
    source: Tensor  # [B, N, N0], which input tokens each token covers


def _rows(t: Tensor, index: Tensor) -> Tensor:
    return t.gather(1, index[..., None].expand(-1, -1, t.shape[-1]))


def _attention(h: Tensor, size: Tensor, w: tuple[Tensor, ...], b: tuple[Tensor | None, ...], heads: int,
               prop_attn: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Multi-head attention with ``+log(size)`` on the keys; returns (output, probabilities, keys)."""
    bsz, n, c = h.shape
    q, k, v = (F.linear(h, wi, bi).view(bsz, n, heads, c // heads).transpose(1, 2) for wi, bi in zip(w[:3], b[:3]))
    logits = (q @ k.transpose(-2, -1)) * (c // heads) ** -0.5
    if prop_attn:
        logits = logits + size.log().view(bsz, 1, 1, n)
    attn = logits.softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(bsz, n, c)
    return F.linear(out, w[3], b[3]), attn, k


def diffrate_step(t: Tokens, attn: Tensor, kp: int, km: int, mode: str, prefix: int, cls: bool) -> Tokens:
    bsz, n, c = t.x.shape
    kp = min(kp, n)
    km = min(km, kp)
    if km == n:
        return t
    score = attn[:, :, 0, prefix:].mean(dim=1) if cls else attn.mean(dim=(1, 2))[:, prefix:]
    order = score.argsort(dim=1, descending=True) + prefix
    keep = torch.cat([torch.arange(prefix).expand(bsz, prefix), order], dim=1)[:, :kp]
    x, size, source = _rows(t.x, keep), _rows(t.size, keep), _rows(t.source, keep)
    if km == kp:
        return Tokens(x, size, source)
    unit = F.normalize(x, dim=-1)
    cos = unit[:, km:] @ unit[:, :km].transpose(1, 2)  # [B, sources, destinations]
    cos[:, :, :prefix] = float("-inf")  # nothing merges into a prefix token
    best, dst = cos.max(dim=-1)
    at = dst[..., None]
    src_x, src_size, src_source = x[:, km:], size[:, km:], source[:, km:]
    x, size, source = x[:, :km], size[:, :km], source[:, :km]
    if mode == "official":
        x = x.scatter_reduce(1, at.expand(-1, -1, c), src_x, reduce="mean", include_self=True)
        # Outside training the package clamps a negative best similarity at 0 before it scales the size
        # (its documented deviation: the official code adds the negative size). Random-init models do
        # produce such matches, so the reference follows the package here.
        src_size = src_size * best.clamp_min(0.0)[..., None]
        size = size.scatter_add(1, at, src_size)
    else:
        new_size = size.scatter_add(1, at, src_size)
        x = (x * size).scatter_add(1, at.expand(-1, -1, c), src_x * src_size) / new_size
        size = new_size
    source = source.scatter_reduce(1, at.expand(-1, -1, source.shape[-1]), src_source, reduce="amax",
                                   include_self=True)
    return Tokens(x, size, source)


def tome_step(t: Tokens, keys: Tensor, r: int) -> Tokens:
    """ToMe with one class token (the official layout)."""
    n = t.x.shape[1]
    r = min(r, (n - 1) // 2)
    if r <= 0:
        return t
    metric = F.normalize(keys.mean(dim=1), dim=-1)
    scores = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)
    scores[:, 0, :] = float("-inf")  # the class token (A's first entry) is never merged
    best, dst = scores.max(dim=-1)
    edges = best.argsort(dim=-1, descending=True)
    gone, stay = edges[:, :r], edges[:, r:].sort(dim=-1).values
    at = dst.gather(1, gone)[..., None]

    def fold(v: Tensor, reduce: str) -> Tensor:
        a, b = v[:, ::2], v[:, 1::2]
        merged = b.scatter_reduce(1, at.expand(-1, -1, v.shape[-1]), _rows(a, gone), reduce=reduce,
                                  include_self=True)
        return torch.cat([_rows(a, stay), merged], dim=1)

    size = fold(t.size, "sum")
    x = fold(t.x * t.size, "sum") / size
    return Tokens(x, size, fold(t.source, "amax"))


Step = Callable[[int, Tokens, Tensor, Tensor], Tokens]  # (block, tokens, attention probabilities, keys)


def diffrate(schedule: Schedule, mode: str, prefix: int = 1, cls: bool = True) -> Step:
    def step(i: int, t: Tokens, attn: Tensor, keys: Tensor) -> Tokens:
        return diffrate_step(t, attn, schedule.prune[i], schedule.merge[i], mode, prefix, cls)
    return step


def tome(r: list[int]) -> Step:
    return lambda i, t, attn, keys: tome_step(t, keys, r[i])


def _ln(x: Tensor, norm: Any) -> Tensor:
    if isinstance(norm, nn.Identity):
        return x
    assert isinstance(norm, nn.LayerNorm)
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _gamma(ls: Any) -> Tensor | float:
    return ls.gamma if hasattr(ls, "gamma") else 1.0


def _start(x: Tensor) -> Tokens:
    b, n, _ = x.shape
    return Tokens(x, x.new_ones(b, n, 1), torch.eye(n).expand(b, n, n))


def timm_reference(model: nn.Module, images: Tensor, step: Step, prop_attn: bool = True
                   ) -> tuple[Tensor, list[Tokens]]:
    """(logits, tokens after every block, before the final norm) of a timm VisionTransformer."""
    m: Any = model
    t = _start(m.norm_pre(m._pos_embed(m.patch_embed(images))))  # the stem is not patched
    per_block = []
    for i, blk in enumerate(m.blocks):
        att = blk.attn
        assert isinstance(att.q_norm, nn.Identity) and isinstance(att.k_norm, nn.Identity)
        w, b = att.qkv.weight.chunk(3), att.qkv.bias.chunk(3) if att.qkv.bias is not None else (None,) * 3
        y, attn, keys = _attention(_ln(t.x, blk.norm1), t.size, (*w, att.proj.weight), (*b, att.proj.bias),
                                   att.num_heads, prop_attn)
        t = replace(t, x=t.x + _gamma(blk.ls1) * y)
        t = step(i, t, attn, keys)
        h = F.linear(F.gelu(F.linear(_ln(t.x, blk.norm2), blk.mlp.fc1.weight, blk.mlp.fc1.bias)),
                     blk.mlp.fc2.weight, blk.mlp.fc2.bias)
        t = replace(t, x=t.x + _gamma(blk.ls2) * h)
        per_block.append(t)
    feats = _ln(t.x, m.norm)
    if m.global_pool == "token":
        pooled = feats[:, 0]
    else:  # size-weighted mean over the patch tokens (DiffRate's MAE head, ToMe's MAE pool)
        assert m.global_pool in ("avg", "avgmax", "max") and not m.pool_include_prefix
        p = m.num_prefix_tokens
        if m.global_pool == "max":  # timm's max pool over the kept patch tokens (sizes do not enter)
            return F.linear(_ln(feats[:, p:].amax(dim=1), m.fc_norm), m.head.weight, m.head.bias), per_block
        pooled = (feats[:, p:] * t.size[:, p:]).sum(dim=1) / t.size[:, p:].sum(dim=1)
        if m.global_pool == "avgmax":  # timm's avgmax: half the mean plus half the max of the kept tokens
            pooled = 0.5 * (feats[:, p:].amax(dim=1) + pooled)
    pooled = _ln(pooled, m.fc_norm)
    return F.linear(pooled, m.head.weight, m.head.bias), per_block


def hf_reference(model: nn.Module, images: Tensor, step: Step, prop_attn: bool = True
                 ) -> tuple[Tensor, list[Tokens]]:
    """(logits, tokens after every layer) of a transformers ViTForImageClassification."""
    m: Any = model
    heads = m.config.num_attention_heads
    t = _start(m.vit.embeddings(images))
    per_block = []
    for i, layer in enumerate(m.vit.layers):
        a = layer.attention
        projs = (a.q_proj, a.k_proj, a.v_proj, a.o_proj)
        y, attn, keys = _attention(_ln(t.x, layer.layernorm_before), t.size, tuple(p.weight for p in projs),
                                   tuple(p.bias for p in projs), heads, prop_attn)
        t = step(i, replace(t, x=t.x + y), attn, keys)
        h = F.linear(F.gelu(F.linear(_ln(t.x, layer.layernorm_after), layer.mlp.fc1.weight, layer.mlp.fc1.bias)),
                     layer.mlp.fc2.weight, layer.mlp.fc2.bias)
        t = replace(t, x=t.x + h)
        per_block.append(t)
    feats = _ln(t.x, m.vit.layernorm)
    return F.linear(feats[:, 0], m.classifier.weight, m.classifier.bias), per_block


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _run_patched(model: nn.Module, blocks: Any, images: Tensor, call: Callable[[], Tensor]
                 ) -> tuple[Tensor, list[Tensor]]:
    """The patched model's output and every block's output tensor (forward hooks)."""
    outs: list[Tensor] = []
    hooks = [blk.register_forward_hook(lambda mod, args, out: outs.append(out)) for blk in blocks]
    try:
        with torch.no_grad():
            y = call()
    finally:
        for h in hooks:
            h.remove()
    return y, outs


def _close(a: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(a, b, atol=TOL, rtol=TOL)


def _check_against(model: nn.Module, got: Tensor, outs: list[Tensor], ref: Tensor, ref_blocks: list[Tokens]) -> None:
    ctx = token_rate.get_context(model)
    assert [o.shape[1] for o in outs] == [t.x.shape[1] for t in ref_blocks] == token_rate.last_token_counts(model)
    for o, t in zip(outs, ref_blocks):
        _close(o, t.x)
    final = ref_blocks[-1]
    size = ctx.state.size if ctx.state.size is not None else torch.ones_like(final.size)
    _close(size, final.size)
    source = token_rate.token_source(model)
    assert source is not None and torch.equal(source, final.source)
    _close(got, ref)


def _schedule(n: int, prefix: int = 1) -> Schedule:
    """4 blocks: a one-token prune, prune + merge, a one-token merge, prune + merge."""
    return Schedule([n - 1, n - 3, n - 6, n - 10], [n - 1, n - 6, n - 7, n - 12], num_tokens=n,
                    num_prefix_tokens=prefix)


# ----------------------------------------------------------------------------------------------
# Item 1: the whole patched block against the reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["vit", "deit3_layerscale", "reg_tokens", "global_pool", "no_cls_avg"])
@pytest.mark.parametrize("mode", ["official", "weighted"])
def test_diffrate_timm_matches_reference(timm_model, images, variant, mode):
    model = timm_model(variant, depth=4)
    d = token_rate.model_dims(model)
    sched = _schedule(d.num_tokens, d.num_prefix_tokens)
    cls = variant != "no_cls_avg"
    ref, ref_blocks = timm_reference(model, images, diffrate(sched, mode, d.num_prefix_tokens, cls))
    token_rate.patch(model, DiffRateConfig(schedule=sched, mode=mode, trace_source=True))
    got, outs = _run_patched(model, model.blocks, images, lambda: model(images))
    assert token_rate.last_token_counts(model) == sched.effective()
    _check_against(model, got, outs, ref, ref_blocks)


def test_tome_timm_layerscale_matches_reference(timm_model, images):
    model = timm_model("deit3_layerscale", depth=4)
    r = [1, 3, 0, 8]  # one-token merge, several, none, more than the cap (capped at half the patches)
    ref, ref_blocks = timm_reference(model, images, tome(r))
    token_rate.patch(model, ToMeConfig(r=r, trace_source=True))
    got, outs = _run_patched(model, model.blocks, images, lambda: model(images))
    assert token_rate.last_token_counts(model) == [16, 13, 13, 7]
    _check_against(model, got, outs, ref, ref_blocks)


def test_prop_attn_off_matches_reference_without_the_bias(timm_model, images):
    """``prop_attn=False`` drops exactly the log(size) term (sizes are still tracked)."""
    model = timm_model("deit3_layerscale", depth=4)
    sched = _schedule(17)
    ref, ref_blocks = timm_reference(model, images, diffrate(sched, "weighted"), prop_attn=False)
    token_rate.patch(model, DiffRateConfig(schedule=sched, mode="weighted", prop_attn=False, trace_source=True))
    got, outs = _run_patched(model, model.blocks, images, lambda: model(images))
    _check_against(model, got, outs, ref, ref_blocks)


@pytest.mark.parametrize("method", ["diffrate", "tome"])
def test_hf_matches_reference(hf_model, images, method):
    model = hf_model("classifier", num_hidden_layers=4)
    if method == "diffrate":
        sched = _schedule(17)
        step, cfg = diffrate(sched, "official"), DiffRateConfig(schedule=sched, trace_source=True)
    else:
        step, cfg = tome([1, 3, 0, 8]), ToMeConfig(r=[1, 3, 0, 8], trace_source=True)
    ref, ref_blocks = hf_reference(model, images, step)
    token_rate.patch(model, cfg)
    got, outs = _run_patched(model, model.vit.layers, images, lambda: model(images).logits)
    _check_against(model, got, outs, ref, ref_blocks)


# ----------------------------------------------------------------------------------------------
# Item 2: search mode (masks, constant length) against the sliced reference, avg-pool heads
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["global_pool", "avgmax", "max", "vit", "no_cls_avg"])
@pytest.mark.parametrize("mode", ["official", "weighted"])
def test_search_mode_matches_sliced_reference(timm_model, images, variant, mode):
    """Training-mode search masks tokens out of the keys and the pool instead of removing them; its
    output must equal the sliced model's (the reference) at the current hard counts. The kept tokens
    are the first ``count`` of the sequence, in rank order, with the reference's sizes."""
    if variant in ("avgmax", "max"):  # masked tokens must not win the max either
        model = timm_model("global_pool", depth=4, global_pool=variant)
    else:
        model = timm_model(variant, depth=4)
    init = Schedule([17, 15, 11, 8], [17, 12, 9, 6])  # the avg-pool model keeps its last block fixed
    token_rate.patch(model, SearchConfig(granularity=1, mode=mode, size_clamp_in_train=False, trace_source=True,
                                         init_schedule=init))
    model.train()
    with torch.no_grad():
        feats = model.forward_features(images)
        got = model.forward_head(feats)
    sched = token_rate.export_schedule(model)
    counts = token_rate.last_token_counts(model)
    assert counts == sched.effective()
    fixed_last = variant != "vit"  # avg-pool heads
    assert (counts[-1] == counts[-2]) == fixed_last and len(set(counts[:3])) == 3  # blocks 1, 2 (and 3) compress
    p = token_rate.model_dims(model).num_prefix_tokens
    ref, ref_blocks = timm_reference(model, images, diffrate(sched, mode, p, cls=variant != "no_cls_avg"))
    k = counts[-1]
    st = token_rate.get_context(model).state
    assert st.mask is not None and st.size is not None and st.source is not None
    assert torch.equal((st.mask > 0.5).sum(dim=1), torch.full((2,), k))
    assert bool((st.mask[:, :k] > 0.5).all())  # the active tokens form a prefix
    _close(feats[:, :k], _ln(ref_blocks[-1].x, model.norm))
    _close(st.size[:, :k], ref_blocks[-1].size)
    assert torch.equal(st.source[:, :k], ref_blocks[-1].source)
    _close(got, ref)
    # The same model in eval mode slices to the same counts and gives the same output.
    model.eval()
    with torch.no_grad():
        sliced = model(images)
    assert token_rate.last_token_counts(model) == counts
    _close(sliced, ref)


# ----------------------------------------------------------------------------------------------
# Item 3: the reported cost follows the tokens the blocks actually kept
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config, expected", [
    (DiffRateConfig(schedule=_schedule(17)), [16, 11, 10, 5]),  # 1-token prune (block 0) and merge (block 2)
    (DiffRateConfig(schedule=Schedule([17, 16, 16, 15], [16, 16, 15, 15], num_tokens=17)), [16, 16, 15, 15]),
    (ToMeConfig(r=[1, 1, 0, 1]), [16, 15, 15, 14]),
], ids=["diffrate", "diffrate-one-token-steps", "tome-r1"])
def test_reported_gmacs_follow_the_tokens_actually_kept(timm_model, images, config, expected):
    model = timm_model("vit", depth=4)
    d = token_rate.model_dims(model)
    token_rate.patch(model, config)
    _, outs = _run_patched(model, model.blocks, images, lambda: model(images))
    kept = [o.shape[1] for o in outs]  # what each block really handed on, read from the tensors
    assert kept == expected == token_rate.last_token_counts(model) == token_rate.current_token_counts(model)
    assert token_rate.gmacs(model) * 1e9 == pytest.approx(analytic_macs(d, kept), rel=1e-12)


def test_search_eval_gmacs_follow_the_tokens_actually_kept(timm_model, images):
    model = timm_model("vit", depth=4)
    d = token_rate.model_dims(model)
    token_rate.patch(model, SearchConfig(granularity=1, init_schedule=Schedule([17, 16, 13, 12], [17, 15, 12, 11])))
    _, outs = _run_patched(model, model.blocks, images, lambda: model(images))
    kept = [o.shape[1] for o in outs]
    assert kept == token_rate.last_token_counts(model) == token_rate.export_schedule(model).effective()
    assert token_rate.gmacs(model) * 1e9 == pytest.approx(analytic_macs(d, kept), rel=1e-12)
    assert token_rate.search_gmacs(model).item() * 1e9 == pytest.approx(analytic_macs(d, kept), rel=1e-6)


def test_a_block_that_skips_a_reduction_is_an_error(timm_model, images, monkeypatch):
    """The source-side guard: a block whose token count leaves the schedule's raises instead of running
    on while ``gmacs`` keeps reporting the schedule."""
    from token_rate.context import TokenRateContext
    from token_rate.tome import bipartite_merge

    slice_step = TokenRateContext._slice_step

    def lazy_slice(self, x, importance, kp, km, training):  # skips one-token reductions
        return x if min(kp, km) == x.shape[1] - 1 else slice_step(self, x, importance, kp, km, training)

    monkeypatch.setattr(TokenRateContext, "_slice_step", lazy_slice)
    model = token_rate.patch(timm_model("vit", depth=4), _schedule(17))
    with pytest.raises(RuntimeError, match=r"block 0 kept 17 of 17 tokens, but its diffrate settings \(and the "
                                           r"reported GMACs\) say 16"):
        model(images)
    token_rate.patch(model, ToMeConfig(r=[2, 1, 0, 0]))
    ctx = token_rate.get_context(model)

    def lazy_merge(x, metric, r, prefix, size, source):  # skips one-token merges
        return (x, size, source) if r == 1 else bipartite_merge(x, metric, r, prefix, size, source)

    ctx.token_merge = lazy_merge
    with pytest.raises(RuntimeError, match="block 1 kept 15 of 15 tokens, but its tome settings"):
        model(images)
