"""A synthetic LLaMA checkpoint of any shape, generated tensor by tensor (no file on disk).

:class:`SynthLlamaSource` is a :class:`gqsa.streaming.TensorSource`: ``get(name)`` makes the
tensor ``name`` of a LLaMA-shaped model from a generator seeded by (seed, name), so the same
name always gives the same tensor and a block costs memory only while it is in work. With it
the streamed path runs at LLaMA-2-70B shape (80 blocks of 8,192 x 28,672; 140 GB in fp16)
without the 140 GB file: ``gqsa.compress_streamed(SynthLlamaSource(LLAMA2_70B, blocks=2),
config, calib, model_config=llama_config(LLAMA2_70B, blocks=2), checkpoint=...)``.

Weights are N(0, 0.02^2) (transformers' LLaMA init), norms are ones. They are not a trained
model's weights: times and memory are those of the real shapes, accuracy means nothing.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from transformers import LlamaConfig

from gqsa.streaming import skeleton


@dataclass(frozen=True)
class LlamaShape:
    """The sizes that fix a LLaMA model's tensors."""

    name: str
    blocks: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int


LLAMA2_70B = LlamaShape("llama2-70b", 80, 8192, 28672, 64, 8, 32000)
LLAMA31_405B = LlamaShape("llama3.1-405b", 126, 16384, 53248, 128, 8, 128256)  # vocab: Llama 3.1's tokenizer
TINY = LlamaShape("tiny", 2, 64, 128, 4, 2, 256)
SHAPES = {"70b": LLAMA2_70B, "405b": LLAMA31_405B, "tiny": TINY}


def llama_config(shape: LlamaShape, blocks: int | None = None) -> LlamaConfig:
    """The transformers config of ``shape`` with its first ``blocks`` blocks (default: all)."""
    return LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.ffn,
                       num_hidden_layers=blocks or shape.blocks, num_attention_heads=shape.heads,
                       num_key_value_heads=shape.kv_heads, max_position_embeddings=4096,
                       tie_word_embeddings=False, dtype="float16")


class SynthLlamaSource:
    """The tensors of a LLaMA model of ``shape`` (its first ``blocks`` blocks), generated on
    demand in ``dtype`` from ``seed``; names as transformers' ``LlamaForCausalLM`` state dict.

    ``generate_on="cuda"`` draws the numbers on the GPU (other values than on the CPU, same
    shapes): at 70B shape a block then takes well under a second instead of 7.5 s of CPU
    ``randn``, which is closer to reading it from a local NVMe file. Tensors are returned on
    the CPU either way."""

    def __init__(self, shape: LlamaShape, blocks: int | None = None, seed: int = 0,
                 dtype: torch.dtype = torch.float16, generate_on: str | torch.device = "cpu"):
        model = skeleton(llama_config(shape, blocks), dtype)  # meta device: names and shapes only
        self._shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        self.seed, self.dtype, self.generate_on = seed, dtype, torch.device(generate_on)

    def keys(self):
        return self._shapes.keys()

    def get(self, name: str) -> torch.Tensor:
        if name not in self._shapes:
            raise KeyError(f"the synthetic checkpoint has no tensor {name}")
        shape = self._shapes[name]
        if name.endswith("norm.weight"):
            return torch.ones(shape, dtype=self.dtype)
        gen = torch.Generator(self.generate_on).manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        w = torch.randn(shape, generator=gen, device=self.generate_on, dtype=self.dtype).mul_(0.02)
        return w.cpu()  # a CPU tensor, as a file read gives

    def nbytes(self, prefix: str = "") -> int:
        """Bytes of the tensors whose names start with ``prefix`` (all by default)."""
        size = torch.empty((), dtype=self.dtype).element_size()
        return sum(torch.Size(s).numel() * size for k, s in self._shapes.items() if k.startswith(prefix))
