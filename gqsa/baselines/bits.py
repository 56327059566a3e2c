"""Bits per weight of the baselines: the accounting lives in :mod:`gqsa.size` (one home for
gqsa and every baseline; its module doc states each part counted); this module keeps the
names the baselines API exported."""

from __future__ import annotations

from torch import nn

from gqsa.size import (
    BITS_CONVENTION,
    baseline_bits_per_weight,
    baseline_layer_bits,
    model_stats,
)

__all__ = ["BITS_CONVENTION", "baseline_bits_per_weight", "baseline_layer_bits", "gqsa_bits_per_weight"]


def gqsa_bits_per_weight(model: nn.Module) -> float:
    """Bits per weight over the model's GQSLinear layers (:func:`gqsa.size.model_stats`)."""
    stats = model_stats(model)
    if not stats["compressed_layers"]:
        raise ValueError("model holds no GQSLinear layer")
    return stats["bits_per_weight"]
