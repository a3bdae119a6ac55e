"""Small offline models: a byte-level tokenizer and a tiny random Llama, for tests and CPU runs.

Nothing here downloads. The tiny Llama takes the same code paths as SmolLM2 or Vicuna (it is a
transformers ``LlamaForCausalLM``), so LoRA, training and generation are tested on it quickly.
"""

from __future__ import annotations

from typing import Any

import torch

BYTE_SPECIALS = ("<pad>", "<s>", "</s>")


class ByteTokenizer:
    """UTF-8 bytes as token ids 3..258, after ``<pad>`` (0), ``<s>`` (1) and ``</s>`` (2).

    Implements the part of the transformers tokenizer interface memochat uses
    (``encode``, ``decode``, ``eos_token_id``, ``pad_token_id``, ``chat_template``).
    """

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2
    chat_template = None
    vocab_size = 259

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = [b + 3 for b in text.encode("utf-8")]
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        out = bytearray()
        for i in values:
            if i >= 3:
                out.append(int(i) - 3)
            elif not skip_special_tokens:
                out += BYTE_SPECIALS[int(i)].encode()
        return out.decode("utf-8", errors="replace")

    def __len__(self) -> int:
        return self.vocab_size


def tiny_llama(vocab_size: int = ByteTokenizer.vocab_size, hidden: int = 64, layers: int = 2, heads: int = 4,
               max_positions: int = 4096, seed: int = 0) -> Any:  # fmt: skip
    """A randomly initialised ``LlamaForCausalLM`` small enough to train on a CPU in seconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_positions,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()
