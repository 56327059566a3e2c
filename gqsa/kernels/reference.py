"""Pure-PyTorch reference of ``y = x W^T + b`` for a layer in the packed GQS format.

This is the oracle every kernel is tested against, and the path GQSLinear takes on
CPU. It dequantizes the whole weight and calls a dense matmul.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gqsa.format import PackedGQS, dequantize


def gqs_linear_ref(x: torch.Tensor, packed: PackedGQS, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference forward.

    Args:
        x: activations [..., K], any float dtype; the result has the same dtype.
        packed: the layer's packed tensors (on x's device).
        bias: optional [N].
    Returns:
        y [..., N] in x's dtype. The weight is dequantized in float32 when x is half
        precision on CPU (CPU half matmuls are slow and less accurate), else in x's dtype.
    """
    compute = torch.float32 if (x.device.type == "cpu" and x.dtype != torch.float64) else x.dtype
    w = dequantize(packed, compute)
    b = None if bias is None else bias.to(compute)
    return F.linear(x.to(compute), w, b).to(x.dtype)
