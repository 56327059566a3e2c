"""Tiny randomly initialised causal LMs of each supported family, built from configs."""

from __future__ import annotations

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB = 258
FAMILIES = ("llama", "qwen2", "mistral", "opt")


def tiny_model(family: str, seed: int = 0, hidden: int = 64, layers: int = 2) -> torch.nn.Module:
    """A 2-block model with hidden size 64 (every linear's in_features divisible by 16..64)."""
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                  max_position_embeddings=256)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(intermediate_size=2 * hidden, num_key_value_heads=2, **common))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(intermediate_size=2 * hidden, num_key_value_heads=2, **common))
    elif family == "mistral":
        model = MistralForCausalLM(MistralConfig(intermediate_size=2 * hidden, num_key_value_heads=2,
                                                 sliding_window=64, **common))
    elif family == "opt":
        model = OPTForCausalLM(OPTConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                                         num_attention_heads=4, ffn_dim=2 * hidden, word_embed_proj_dim=hidden,
                                         max_position_embeddings=256))
    else:
        raise ValueError(family)
    return model.eval()


def calib_ids(n: int = 8, length: int = 32, seed: int = 1) -> torch.Tensor:
    """Random calibration token ids [n, length]."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, length), generator=g)
