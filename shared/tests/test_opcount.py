from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkit.bench import count_flops
from slimkit.errors import BadInputError
from slimkit.opcount import OpCount, binary_ops, count_ops, resolve_bits


class Attention(nn.Module):
    """The shape of timm's Attention: fused (SDPA) or explicit ``q @ k^T`` / ``attn @ v``."""

    def __init__(self, dim: int = 8, heads: int = 2, fused: bool = True) -> None:
        super().__init__()
        self.heads, self.fused = heads, fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(8), nn.LayerNorm(8)
        self.attn = Attention(fused=fused)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """8x8 grey image, 4x4 patches -> 4 tokens + cls = 5 tokens of width 8, 2 blocks, 10 classes."""

    def __init__(self, fused: bool = True) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, 8))
        self.blocks = nn.ModuleList([Block(fused), Block(fused)])
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(x[:, 0])


# By hand, one image: patch conv 8*2*2 outputs x 1*4*4 = 512; per block (5 tokens, width 8):
# qkv 5*8*24 = 960, QK^T + AV 2 heads * 5*5*4 * 2 = 400, proj 5*8*8 = 320, fc1 + fc2 2 * 5*8*16 = 1280;
# head 8*10 = 80.
PATCH, QKV, ATTN, PROJ, MLP, HEAD = 512, 960, 400, 320, 1280, 80
BLOCK = QKV + ATTN + PROJ + MLP
VIT_MACS = PATCH + 2 * BLOCK + HEAD


def test_conv_and_linear_macs_by_hand() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8*8*8 outputs x 3*3*3 = 13824
        nn.Conv2d(8, 8, 3, padding=1, groups=4),  # 512 outputs x (8/4)*3*3 = 9216
        nn.Conv2d(8, 4, 3, stride=2),  # 4*3*3 outputs x 8*3*3 = 2592
        nn.ConvTranspose2d(4, 2, 2, stride=2),  # 4*3*3 inputs x 2*2*2 = 288
        nn.Flatten(),
        nn.Linear(2 * 6 * 6, 10),  # 72*10 = 720
    )
    result = count_ops(model, torch.randn(1, 3, 8, 8))
    assert [(r.name, r.kind, r.macs) for r in result.rows] == [
        ("0", "conv", 13824),
        ("1", "conv", 9216),
        ("2", "conv", 2592),
        ("3", "conv", 288),
        ("5", "linear", 720),
    ]
    assert result.macs == result.fp_flops == 13824 + 9216 + 2592 + 288 + 720
    assert result.bops == 0 and result.ops == result.fp_flops
    tokens = count_ops(nn.Linear(16, 10), torch.randn(2, 5, 16))  # tokens * in * out
    assert tokens.macs == 2 * 5 * 16 * 10 and tokens.rows[0].name == ""


@pytest.mark.parametrize("fused", [True, False])
def test_vit_macs_by_hand(fused: bool) -> None:
    model = TinyViT(fused)
    x = torch.randn(1, 1, 8, 8)
    result = count_ops(model, x)
    rows = {(r.name, r.kind): r.macs for r in result.rows}
    assert rows == {
        ("patch", "conv"): PATCH,
        **{
            key: value
            for i in range(2)
            for key, value in {
                (f"blocks.{i}.attn.qkv", "linear"): QKV,
                (f"blocks.{i}.attn", "matmul"): ATTN,
                (f"blocks.{i}.attn.proj", "linear"): PROJ,
                (f"blocks.{i}.mlp.0", "linear"): MLP // 2,
                (f"blocks.{i}.mlp.2", "linear"): MLP // 2,
            }.items()
        },
        ("head", "linear"): HEAD,
    }
    assert result.macs == VIT_MACS == 6512
    assert result.by_kind() == {"conv": PATCH, "linear": 2 * (QKV + PROJ + MLP) + HEAD, "matmul": 2 * ATTN}


def test_multihead_attention_counted_from_shapes() -> None:
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    q = torch.randn(2, 5, 8)
    kv = torch.randn(2, 7, 8)
    result = count_ops(mha, q, kv, kv)
    # projections: q 5*8*8, k and v 7*8*8 each, out 5*8*8; attention QK^T + AV: 2 * 5*7*8; batch 2
    assert [(r.kind, r.macs) for r in result.rows] == [
        ("linear", 2 * (5 * 64 + 2 * 7 * 64 + 5 * 64)),
        ("matmul", 2 * 2 * 5 * 7 * 8),
    ]


@pytest.mark.parametrize("k", range(1, 9))
def test_bops_are_k_squared_macs(k: int) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    macs = 4 * 6 * 6 * 27 + 144 * 5
    result = count_ops(model, torch.randn(1, 3, 8, 8), default_bits=(k, k))
    assert result.macs == macs and result.fp_flops == 0
    assert result.bops == k * k * macs
    assert result.ops == binary_ops(0, k * k * macs) == k * k * macs / 64


def test_binary_vit_ops_fp_flops_plus_bops_over_64() -> None:
    result = count_ops(TinyViT(), torch.randn(1, 1, 8, 8), layer_bits={"blocks.*": (1, 1)})
    assert result.fp_flops == PATCH + HEAD  # patch embedding and head stay FP
    assert result.bops == 2 * BLOCK * 1 * 1
    assert result.ops == PATCH + HEAD + 2 * BLOCK / 64
    w4a8 = count_ops(TinyViT(), torch.randn(1, 1, 8, 8), layer_bits={"blocks.*": (4, 8)})
    # weight x activation rows cost 4*8, the attention matmuls (activation x activation) 8*8
    assert w4a8.bops == 2 * ((QKV + PROJ + MLP) * 32 + ATTN * 64)
    assert {(r.w_bits, r.a_bits) for r in w4a8.rows if r.kind == "matmul"} == {(8, 8)}


class Declared(nn.Module):
    """A quantized wrapper declaring its bits; the product runs in its child."""

    def __init__(self) -> None:
        super().__init__()
        self.w_bits, self.a_bits = 2, 4
        self.base_layer = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x)


class ParamMatmul(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


def test_bit_resolution_order_and_parameter_matmuls() -> None:
    model = nn.Sequential(Declared(), nn.Linear(4, 4), ParamMatmul())
    modules = dict(model.named_modules())
    assert resolve_bits("0.base_layer", modules) == (2, 4)  # nearest ancestor's attributes
    assert resolve_bits("1", modules) == (32, 32)
    assert resolve_bits("1", modules, {"*": (8, 8), "1": (3, 3)}) == (3, 3)  # exact key before patterns
    assert resolve_bits("0.base_layer", modules, {"0": (1, 1)}) == (1, 1)  # a key names a subtree
    assert resolve_bits("0.base_layer", modules, {"0.*": (5, 5), "0": (1, 1)}) == (5, 5)  # nearest first
    assert resolve_bits("1", modules, lambda name, m: (6, 7) if isinstance(m, nn.Linear) else None) == (6, 7)
    result = count_ops(model, torch.randn(3, 4), layer_bits={"2": (1, 8)})
    assert [(r.name, r.kind, r.macs, r.w_bits, r.a_bits) for r in result.rows] == [
        ("0.base_layer", "linear", 48, 2, 4),
        ("1", "linear", 48, 32, 32),
        ("2", "linear", 36, 1, 8),  # x @ Parameter is a weight product
    ]
    assert result.bops == 48 * 8 + 36 * 8 and result.fp_flops == 48
    with pytest.raises(BadInputError):
        count_ops(model, torch.randn(3, 4), layer_bits={"1": (0, 8)})
    with pytest.raises(BadInputError):
        count_ops(model, torch.randn(3, 4), default_bits=(33, 32))


def test_result_serializes_and_model_state_is_restored() -> None:
    bn = nn.BatchNorm2d(2)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), bn, nn.Flatten(), nn.Linear(8, 3)).train()
    assert bn.running_mean is not None
    stats = bn.running_mean.clone()
    result = count_ops(model, torch.randn(2, 1, 4, 4), layer_bits={"0": (1, 1)})
    assert model.training and torch.equal(bn.running_mean, stats)  # ran in eval, mode restored
    d = json.loads(result.to_json())
    assert d["rows"][0] == {
        "name": "0",
        "kind": "conv",
        "calls": 1,
        "macs": 2 * 2 * 2 * 2 * 9,
        "w_bits": 1,
        "a_bits": 1,
        "fp_flops": 0,
        "bops": 144,
    }
    assert OpCount.from_dict(d) == result
    with pytest.raises(BadInputError, match="does not match"):
        OpCount.from_dict({**d, "bops": 1})
    with pytest.raises(BadInputError):
        OpCount.from_dict({"rows": [{"name": "x"}]})


@pytest.mark.slow  # importing timm takes seconds
@pytest.mark.parametrize("fused", [True, False])
def test_real_timm_and_torchvision_vits(fused: bool) -> None:
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    tv_vit = pytest.importorskip("torchvision.models.vision_transformer")
    model = timm_vit.VisionTransformer(
        img_size=8, patch_size=4, in_chans=1, embed_dim=8, depth=2, num_heads=2, mlp_ratio=2, num_classes=10
    )
    for block in model.blocks:
        block.attn.fused_attn = fused  # SDPA or explicit q @ k^T, attn @ v: the same count
    result = count_ops(model, torch.randn(1, 1, 8, 8))
    assert result.macs == VIT_MACS
    assert [(r.name, r.kind, r.macs) for r in result.rows[:3]] == [
        ("patch_embed.proj", "conv", PATCH),
        ("blocks.0.attn.qkv", "linear", QKV),
        ("blocks.0.attn", "matmul", ATTN),
    ]
    # torchvision's ViT runs nn.MultiheadAttention; torch's flop counter counts 2 FLOPs per MAC
    tv = tv_vit.VisionTransformer(
        image_size=8, patch_size=4, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=10
    )
    x = torch.randn(1, 3, 8, 8)
    assert 2 * count_ops(tv, x).macs == count_flops(tv, x)
