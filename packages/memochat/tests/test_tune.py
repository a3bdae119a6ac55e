"""LoRA and full fine-tuning through slimkit.train lower held-out loss on every task; the entry point and undo."""

from __future__ import annotations

from pathlib import Path

import torch

from memochat.api import add_lora, example, remove_lora
from memochat.config import LoraConfig
from memochat.data import build_all, write_sample_sources
from memochat.lora import lora_layers
from memochat.models import ByteTokenizer, tiny_llama
from memochat.tune import plot_curves, tune


def test_lora_lowers_heldout_loss_on_every_task(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = write_sample_sources(tmp_path / "src", n=8)
    records = build_all(src["topiocqa"], src["dialogsum"], src["alpaca"])
    model = tiny_llama(hidden=32, layers=1, heads=2)
    res = tune(model, ByteTokenizer(), records, tmp_path / "run", method="lora", lora=LoraConfig(r=8, alpha=16),
               steps=16, lr=2e-2, batch_size=4, max_len=256, heldout_per_task=2, eval_every=16)  # fmt: skip
    assert set(res.before) == {r["type"] for r in records}
    for task in res.before:
        assert res.after[task] < res.before[task], (task, res.before[task], res.after[task])
    assert res.trainable == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert (tmp_path / "run" / "adapter.safetensors").is_file()
    png = plot_curves(res, tmp_path / "run" / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_full_finetune_lowers_loss(tmp_path: Path) -> None:
    src = write_sample_sources(tmp_path / "src", n=8)
    records = build_all(None, None, src["alpaca"])
    model = tiny_llama(hidden=32, layers=1, heads=2)
    res = tune(model, ByteTokenizer(), records, tmp_path / "run", method="full", steps=6, lr=3e-3, batch_size=4,
               max_len=192, heldout_per_task=2, eval_every=6)  # fmt: skip
    assert res.after["chatting_alpacagpt4"] < res.before["chatting_alpacagpt4"]
    assert res.trainable == sum(p.numel() for p in model.parameters())


def test_add_remove_lora_exact_and_merge() -> None:
    model, cfg = example()
    x = model.example_input()  # type: ignore[operator]
    with torch.no_grad():
        before = model(x).logits
    add_lora(model, cfg)
    assert len(lora_layers(model)) == 7  # q, k, v, o, gate, up, down of the one layer
    for name, p in model.named_parameters():
        assert p.requires_grad == ("lora_" in name)
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # as if trained
    with torch.no_grad():
        tuned = model(x).logits
    assert not torch.equal(tuned, before)
    remove_lora(model, merge=True)
    assert not lora_layers(model)
    with torch.no_grad():
        merged = model(x).logits
    torch.testing.assert_close(merged, tuned, atol=1e-5, rtol=1e-5)  # the update lives in the weights now


def test_remove_lora_without_merge_restores_the_model_exactly() -> None:
    model, cfg = example()
    x = model.example_input()  # type: ignore[operator]
    with torch.no_grad():
        before = model(x).logits
    add_lora(model, cfg)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # as if trained: the adapters now change the output
    with torch.no_grad():
        assert not torch.equal(model(x).logits, before)
    remove_lora(model)
    assert not lora_layers(model) and not any("lora_" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        assert torch.equal(model(x).logits, before)  # the update is gone, bit for bit
