"""QuantAttention re-implements HF DETR attention exactly (quantizers aside); DA standardizes per head."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers.models.detr.modeling_detr import DetrCrossAttention, DetrSelfAttention

from qdetr.attention import DistributionAlignment, QuantAttention, head_quantizer
from qdetr.models import tiny_detr


def _attentions() -> tuple[DetrSelfAttention, DetrCrossAttention]:
    torch.manual_seed(0)
    model = tiny_detr(num_labels=3)
    layer = model.model.decoder.layers[0]
    return copy.deepcopy(layer.self_attn).eval(), copy.deepcopy(layer.encoder_attn).eval()


def _no_quant(wrapper: QuantAttention) -> QuantAttention:
    for name in ("q_quant", "k_quant", "v_quant", "a_quant"):
        setattr(wrapper, name, nn.Identity())
    return wrapper


@pytest.mark.parametrize("masked", [False, True])
def test_unquantized_wrapper_equals_hf_self_and_cross_attention(masked: bool) -> None:
    self_attn, cross_attn = _attentions()
    g = torch.Generator().manual_seed(1)
    q, kv = torch.randn(2, 5, 64, generator=g), torch.randn(2, 7, 64, generator=g)
    pos_q, pos_kv = torch.randn(2, 5, 64, generator=g), torch.randn(2, 7, 64, generator=g)
    mask_self = mask_cross = None
    if masked:  # additive masks, as eager attention gets them: the last key of image 1 is padding
        mask_self = torch.zeros(2, 1, 5, 5)
        mask_self[1, :, :, -1] = torch.finfo(torch.float32).min
        mask_cross = torch.zeros(2, 1, 5, 7)
        mask_cross[1, :, :, -1] = torch.finfo(torch.float32).min
    with torch.no_grad():
        ref_self, _ = self_attn(hidden_states=q, attention_mask=mask_self, position_embeddings=pos_q)
        ref_cross, _ = cross_attn(hidden_states=q, key_value_states=kv, attention_mask=mask_cross,
                                  position_embeddings=pos_q, encoder_position_embeddings=pos_kv)  # fmt: skip
        got_self, _ = _no_quant(QuantAttention(self_attn, 8, align=False))(
            hidden_states=q, attention_mask=mask_self, position_embeddings=pos_q)
        got_cross, probs = _no_quant(QuantAttention(cross_attn, 8, align=False))(
            hidden_states=q, key_value_states=kv, attention_mask=mask_cross,
            position_embeddings=pos_q, encoder_position_embeddings=pos_kv)  # fmt: skip
    torch.testing.assert_close(got_self, ref_self, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_cross, ref_cross, rtol=1e-5, atol=1e-6)
    if masked:  # a boolean (sdpa-style) mask gives the same as the additive one
        with torch.no_grad():
            got_bool, _ = _no_quant(QuantAttention(cross_attn, 8, align=False))(
                hidden_states=q, key_value_states=kv, attention_mask=mask_cross == 0,
                position_embeddings=pos_q, encoder_position_embeddings=pos_kv)  # fmt: skip
        torch.testing.assert_close(got_bool, ref_cross, rtol=1e-5, atol=1e-6)
        assert float(probs[1, :, :, -1].abs().max()) == 0.0


def test_quantized_attention_inputs_sit_on_per_head_grids() -> None:
    _, cross_attn = _attentions()
    wrapper = QuantAttention(cross_attn, 3, align=False)
    seen: dict[str, torch.Tensor] = {}
    for name in ("q_quant", "a_quant"):
        getattr(wrapper, name).register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out))
    g = torch.Generator().manual_seed(2)
    wrapper(hidden_states=torch.randn(2, 5, 64, generator=g), key_value_states=torch.randn(2, 7, 64, generator=g))
    for name in ("q_quant", "a_quant"):
        quant = getattr(wrapper, name)
        step = quant.positive_step().detach()  # [1, heads, 1, 1]
        offset = quant.offset.detach() if quant.offset is not None else torch.zeros_like(step)
        codes = (seen[name].detach() - offset) / step
        torch.testing.assert_close(codes, codes.round(), atol=1e-4, rtol=0)
        assert step.shape == (1, 4, 1, 1) and codes.round().min() >= 0 and codes.round().max() <= 7
    assert (wrapper.w_bits, wrapper.a_bits) == (3, 3)


@pytest.mark.parametrize("unbiased", [False, True])
def test_alignment_standardizes_each_vector_then_scales_and_shifts(unbiased: bool) -> None:
    align = DistributionAlignment(16, eps=1e-5, unbiased=unbiased)
    with torch.no_grad():
        align.gamma.copy_(torch.linspace(0.5, 2.0, 16))
        align.beta.copy_(torch.linspace(-1.0, 1.0, 16))
    q = torch.randn(3, 7, 4, 16) * 5 + 3
    out = align(q)
    z = (out - align.beta) / align.gamma  # back to the standardized vector
    torch.testing.assert_close(z.mean(-1), torch.zeros(3, 7, 4), atol=1e-5, rtol=0)
    var = z.var(-1, unbiased=unbiased)
    torch.testing.assert_close(var, q.var(-1, unbiased=unbiased) / (q.var(-1, unbiased=unbiased) + 1e-5), atol=1e-5, rtol=0)


def test_head_quantizers_have_offsets_for_signed_inputs_and_none_for_probabilities() -> None:
    qk = head_quantizer(8, 4, offset=True)
    probs = head_quantizer(8, 4, offset=False)
    assert qk.offset is not None and probs.offset is None
    assert (qk.spec.qmin, qk.spec.qmax, probs.spec.qmin, probs.spec.qmax) == (0, 255, 0, 255)
