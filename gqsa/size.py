"""Size accounting of a compressed model: bytes on disk, effective bits per weight, sparsity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from gqsa.layer import GQSLinear


def folder_bytes(path: str | Path) -> int:
    """Bytes of the weight files (safetensors) in a model folder."""
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def model_stats(model: nn.Module) -> dict[str, Any]:
    """Effective bits per weight of the compressed layers (codes, column indices, row
    pointers, scales, zeros and bias all counted) and per-layer kept fractions."""
    packed_bytes, dense_weights, kept_weights, layers = 0, 0, 0, []
    for name, m in model.named_modules():
        if not isinstance(m, GQSLinear):
            continue
        p = m.packed()
        nbytes = p.nbytes() + (m.bias.numel() * m.bias.element_size() if m.bias is not None else 0)
        count = m.in_features * m.out_features
        packed_bytes += nbytes
        dense_weights += count
        kept_weights += p.density * count
        layers.append({"name": name, "shape": [m.out_features, m.in_features], "bytes": nbytes,
                       "bits_per_weight": 8 * nbytes / count,
                       "sparsity": p.sparsity})
    total_params = sum(p.numel() for p in model.parameters())
    return {"compressed_layers": len(layers), "compressed_weights": dense_weights,
            "packed_bytes": packed_bytes, "bits_per_weight": 8 * packed_bytes / max(1, dense_weights),
            "sparsity": 1 - kept_weights / max(1, dense_weights),
            "dense_params_left": total_params, "layers": layers}
