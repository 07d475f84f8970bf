"""The tiny GPT-2 several tests export (random init from a config: nothing is downloaded)."""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 40


def tiny_gpt2_lm(seed: int = 0) -> nn.Module:
    """``GPT2LMHeadModel`` with 2 layers of width 16, no dropout, eager attention, seeded."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=16,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg)


class Logits(nn.Module):
    """A Hugging Face LM as ``input_ids -> logits`` (the tensor an ONNX export returns)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids):
        return self.inner(input_ids=input_ids).logits
