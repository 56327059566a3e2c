"""Size accounting, the one home for gqsa and every baseline: bytes on disk, bits per weight.

Every linear of the decoder blocks is counted part by part (bits):

- gqsa (a :class:`~gqsa.layer.GQSLinear`): its packed tensors as a folder stores them, byte
  for byte (format version 3, :mod:`gqsa.format_v2`): ``codes`` (b bits per kept weight),
  ``mask`` (1 bit per group), ``layer_scale`` (fp32 per layer), ``row_code`` (8 bits per row),
  ``scale_codes`` (8 bits per kept group), ``zeros`` (b bits per kept group), and ``bias``.
- a baseline (an nn.Linear holding the fake-quantized / pruned weight; its
  :class:`~gqsa.baselines.BaselineConfig` given): what a real deployment would store, by
  convention (N x K the weight, G the group size, b the bits, d = 1 - sparsity, ng = ceil(K/G)):

  ==========  ===============================================================================
  part        bits
  ==========  ===============================================================================
  codes       N K d b (b = 16: the kept fp16 values)
  mask        unstructured sparsity: a bitmap, N K (1 bit per weight)
  index       N:M sparsity: ceil(log2 M) per kept weight, N K d (NVIDIA's 2:4 metadata: 2 bits)
  scales      quantized: one fp16 scale per group of G *input* columns of a row: 16 N ng;
              with ``scale_format="log8"`` gqsa's storage instead: 8 N ng + 8 N + 32
  zeros       quantized: one b-bit zero point per group (GPTQ/AutoGPTQ packing): b N ng
              (symmetric too: the packed GPTQ format keeps its constant zeros)
  g_idx       GPTQ act_order="group": one int32 group index per input column: 32 K
  bias        16 per output (when the layer has one)
  ==========  ===============================================================================

- a linear left dense (skipped, or any linear when no method ran): 16 bits per weight + bias.

Figures (:func:`model_stats`): ``bits_per_weight`` over the compressed linears (the usual
"effective bits" of a method; skipped layers left out); ``bits_per_weight_all_linears``
over every linear of the decoder blocks, skipped ones at 16 bits; ``model_bytes``, the
whole model (every other parameter, embeddings, norms and an untied head included, at 16
bits as gqsa saves them; a tied head counted once) and ``bits_per_param`` over all its
parameters.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gqsa.format_v2 import v2_shapes
from gqsa.layer import GQSLinear

if TYPE_CHECKING:
    from gqsa.baselines.config import BaselineConfig

FP16_BITS = 16
SCALE_BITS = 16
LOG_SCALE_BITS = 8
LAYER_SCALE_BITS = 32
G_IDX_BITS = 32
PARTS = ("codes", "mask", "index", "col_idx", "row_ptr", "scales", "zeros", "g_idx", "bias")
BITS_CONVENTION = ("gqsa.size: compressed linears part by part (codes, mask/index, col_idx, row_ptr, "
                   "scales, zeros, g_idx, bias): gqsa its packed bytes, baselines b bits per kept "
                   "weight + fp16 scale (8-bit log code under an 8-bit row code and an fp32 layer factor with "
                   "scale_format log8, format version 3) "
                   "and b-bit zero per group + bitmap (unstructured) or ceil(log2 M) "
                   "bits per kept weight (N:M); skipped linears and the rest of the model at 16 bits")


def folder_bytes(path: str | Path) -> int:
    """Bytes of the weight files (safetensors) in a model folder."""
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def packed_layer_bits(layer: GQSLinear) -> dict[str, int]:
    """Bits of each tensor a folder stores for a GQSLinear: its format-version-3 tensors
    (``codes``, ``mask``, ``layer_scale``, ``row_code``, ``scale_codes``, ``zeros``;
    :mod:`gqsa.format_v2`) and ``bias``: 8 x their bytes."""
    shapes = v2_shapes(layer.out_features, layer.in_features, layer.nnz, layer.group_size, layer.bits)
    bits = {n: 8 * math.prod(shape) * torch.empty((), dtype=dt).element_size() for n, (shape, dt) in shapes.items()}
    if layer.bias is not None:
        bits["bias"] = 8 * layer.bias.numel() * layer.bias.element_size()
    return bits


def baseline_layer_bits(cfg: BaselineConfig, out_features: int, in_features: int,
                        bias: bool = False) -> dict[str, float]:
    """Bits of each part of one [out_features, in_features] layer compressed by ``cfg`` (module doc)."""
    n, k = out_features, in_features
    density = 1.0 - cfg.target_sparsity
    parts = {"codes": n * k * density * cfg.bits}
    if cfg.pattern == "unstructured":
        parts["mask"] = n * k
    elif cfg.nm:
        parts["index"] = n * k * density * math.ceil(math.log2(cfg.nm[1]))
    if cfg.quantized:
        ng = math.ceil(k / cfg.group_size)
        parts["scales"], parts["zeros"] = n * ng * SCALE_BITS, n * ng * cfg.bits
        if getattr(cfg, "scale_format", "fp16") == "log8":  # gqsa's v3 scales: 8 bits a group and a row, fp32 a layer
            parts["scales"] = n * ng * LOG_SCALE_BITS + n * LOG_SCALE_BITS + LAYER_SCALE_BITS
    if getattr(cfg, "act_order", "off") == "group":
        parts["g_idx"] = k * G_IDX_BITS
    if bias:
        parts["bias"] = n * FP16_BITS
    return parts


def dense_layer_bits(out_features: int, in_features: int, bias: bool = False) -> dict[str, float]:
    """Bits of a linear kept dense at 16 bits."""
    return {"codes": out_features * in_features * FP16_BITS, **({"bias": out_features * FP16_BITS} if bias else {})}


def baseline_bits_per_weight(cfg: BaselineConfig, shapes: list[tuple[int, int]]) -> float:
    """Bits per weight over layers of the given [out, in] shapes (no bias) under ``cfg``."""
    total = sum(sum(baseline_layer_bits(cfg, n, k).values()) for n, k in shapes)
    return total / sum(n * k for n, k in shapes)


def linear_accounting(model: nn.Module, baseline: BaselineConfig | None = None) -> list[dict[str, Any]]:
    """One record per linear of the decoder blocks: name, shape, ``kind`` (``gqsa``, the
    baseline's method, or ``dense`` for a skipped layer), ``parts`` (bits), ``bits``, ``sparsity``."""
    records = []
    for full, m in _scope(model):
        if isinstance(m, GQSLinear):
            kind, parts, sparsity = "gqsa", packed_layer_bits(m), m.packed().sparsity
        elif isinstance(m, nn.Linear) and baseline is not None and not baseline.skips(full):
            kind, sparsity = baseline.method, baseline.target_sparsity
            parts = baseline_layer_bits(baseline, m.out_features, m.in_features, m.bias is not None)
        elif isinstance(m, nn.Linear):
            kind, parts, sparsity = "dense", dense_layer_bits(m.out_features, m.in_features, m.bias is not None), 0.0
        else:
            continue
        records.append({"name": full, "shape": [m.out_features, m.in_features], "kind": kind, "parts": parts,
                        "bits": sum(parts.values()), "sparsity": sparsity})
    return records


def model_stats(model: nn.Module, baseline: BaselineConfig | None = None) -> dict[str, Any]:
    """The model's accounting (module doc): the compressed linears are the GQSLinear layers, or
    with ``baseline`` the block linears its config does not skip.

    Returns ``bits_per_weight`` (compressed linears), ``bits_per_weight_all_linears``,
    ``model_bytes``, ``bits_per_param``, ``parts`` {part: bits over the compressed linears},
    counts (``compressed_layers``, ``compressed_weights``, ``linear_weights``, ``model_params``,
    ``skipped_layers`` [names]), ``packed_bytes`` (bytes of the compressed linears), the
    weight-weighted ``sparsity``, and ``layers`` (per compressed layer: name, shape, bytes,
    bits_per_weight, sparsity, parts).
    """
    records = linear_accounting(model, baseline)
    done = [r for r in records if r["kind"] != "dense"]
    comp_bits, all_bits = sum(r["bits"] for r in done), sum(r["bits"] for r in records)
    rest_bits = _other_param_bits(model)
    params = sum(p.numel() for p in model.parameters()) + _packed_weight_count(model)
    parts = {p: sum(r["parts"].get(p, 0) for r in done) for p in PARTS}
    layers = [{"name": r["name"], "shape": r["shape"], "bytes": r["bits"] / 8,
               "bits_per_weight": r["bits"] / (r["shape"][0] * r["shape"][1]), "sparsity": r["sparsity"],
               "parts": r["parts"]} for r in done]
    kept = sum((1 - r["sparsity"]) * r["shape"][0] * r["shape"][1] for r in done)
    return {"compressed_layers": len(done), "compressed_weights": weights(done), "linear_weights": weights(records),
            "packed_bytes": comp_bits / 8, "bits_per_weight": comp_bits / max(1, weights(done)),
            "bits_per_weight_all_linears": all_bits / max(1, weights(records)),
            "model_bytes": (all_bits + rest_bits) / 8, "model_params": params,
            "bits_per_param": (all_bits + rest_bits) / max(1, params),
            "skipped_layers": [r["name"] for r in records if r["kind"] == "dense"],
            "parts": {p: v for p, v in parts.items() if v}, "sparsity": 1 - kept / max(1, weights(done)),
            "dense_params_left": sum(p.numel() for p in model.parameters()), "layers": layers}


def weights(records: list[dict[str, Any]]) -> int:
    """Weights of the layers of :func:`linear_accounting` records."""
    return sum(r["shape"][0] * r["shape"][1] for r in records)


def _scope(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the decoder blocks' modules; of all modules when the model has no
    list of blocks (a bare stack of layers)."""
    from gqsa.models import find_blocks
    try:
        blocks_name, blocks = find_blocks(model)
    except ValueError:
        return list(model.named_modules())
    return [(f"{blocks_name}.{n}", m) for n, m in blocks.named_modules()]


def _block_linear_params(model: nn.Module) -> set[int]:
    return {id(p) for _, m in _scope(model) if isinstance(m, (nn.Linear, GQSLinear))
            for p in m.parameters(recurse=False)}


def _other_param_bits(model: nn.Module) -> int:
    """16 bits per parameter outside the block linears (embeddings, norms, head; shared ones once)."""
    inside = _block_linear_params(model)
    return FP16_BITS * sum(p.numel() for p in model.parameters() if id(p) not in inside)


def _packed_weight_count(model: nn.Module) -> int:
    """Weights the GQSLinear layers stand for (they hold buffers, not parameters)."""
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, GQSLinear))


SUMMARY_KEYS = ("bits_per_weight", "bits_per_weight_all_linears", "model_bytes", "bits_per_param", "packed_bytes",
                "compressed_weights", "linear_weights", "skipped_layers", "parts")


def accounting_summary(stats: dict[str, Any]) -> dict[str, Any]:
    """The figures of :func:`model_stats` that run logs carry (no per-layer list), with the convention."""
    return {**{k: stats[k] for k in SUMMARY_KEYS if k in stats}, "bits_convention": BITS_CONVENTION}
