"""Bits per weight: what a real deployment of each format stores, per weight of the
compressed linear layers (embeddings, norms and skipped layers are not counted; they are
the same for every method).

Conventions (scales are float16; N x K a layer's weight; G the quantization group):

- dense FP16: 16.
- group quantization at b bits (RTN, GPTQ): b per weight + one fp16 scale and one b-bit
  zero point per group of G inputs of a row (GPTQ/AutoGPTQ packing): b + (16 + b) *
  ceil(K/G) / K. W4 g128 at K = 4096: 4.156.
- unstructured sparsity s: a bitmap of 1 bit per weight + the kept values:
  1 + (1 - s) * value bits (50 % FP16: 9; 50 % + W4: 3 + scales).
- N:M sparsity: the kept values + a ceil(log2 M)-bit position index per kept value
  (NVIDIA's sparse tensor core metadata): 2:4 FP16 = 0.5 * 16 + 0.5 * 2 = 9 bits; 2:4 + W4
  g128 = 0.5 * 4 + 0.5 * 2 + scales = 3 + (16 + 4) * ceil(K/128) / K. Scales and zeros are
  kept per G consecutive *input* columns (of which N/M are stored).
- gqsa: the packed layout of :mod:`gqsa.format` as saved (codes, int16 column index, fp16
  scale and uint8 zero per kept group, int32 row pointers): 8 * bytes / weights.
"""

from __future__ import annotations

import math

from torch import nn

from gqsa.baselines.config import BaselineConfig

SCALE_BITS = 16
BITS_CONVENTION = ("per weight of the compressed linears: values + fp16 scale and b-bit zero per group "
                   "+ sparsity metadata (bitmap 1 bit/weight for unstructured, ceil(log2 M) bits per kept "
                   "value for N:M); gqsa: its packed bytes")


def baseline_layer_bits(cfg: BaselineConfig, out_features: int, in_features: int) -> float:
    """Total bits stored for one [out_features, in_features] layer under ``cfg``."""
    weights = out_features * in_features
    density = 1.0 - cfg.target_sparsity
    bits = weights * density * cfg.bits
    if cfg.pattern == "unstructured":
        bits += weights
    elif cfg.nm:
        bits += weights * density * math.ceil(math.log2(cfg.nm[1]))
    if cfg.quantized:
        bits += out_features * math.ceil(in_features / cfg.group_size) * (SCALE_BITS + cfg.bits)
    return bits


def baseline_bits_per_weight(cfg: BaselineConfig, shapes: list[tuple[int, int]]) -> float:
    """Bits per weight over layers of the given [out, in] shapes."""
    total = sum(baseline_layer_bits(cfg, n, k) for n, k in shapes)
    return total / sum(n * k for n, k in shapes)


def gqsa_bits_per_weight(model: nn.Module) -> float:
    """Bits per weight over the model's GQSLinear layers: :func:`gqsa.size.model_stats`'s count
    (packed tensors and bias), so baselines and gqsa runs are compared on one definition."""
    from gqsa.size import model_stats
    stats = model_stats(model)
    if not stats["compressed_layers"]:
        raise ValueError("model holds no GQSLinear layer")
    return stats["bits_per_weight"]
