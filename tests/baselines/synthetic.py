"""Synthetic layers for the baseline tests: a weight and a well-conditioned calibration Hessian."""

from __future__ import annotations

import torch

from gqsa.solver.hessian import HessianAccumulator


def make_layer(n: int = 128, k: int = 256, tokens: int = 2048, seed: int = 0,
               input_scales: bool = False) -> tuple[torch.Tensor, HessianAccumulator]:
    """A weight [n, k] and the Hessian of inputs [tokens, k] that are strongly correlated,
    as LLM activations are: rank 32 plus noise of std 0.5.

    ``input_scales`` gives the input channels scales spread over 0.3..3 (activation outliers
    in miniature), the case Wanda's |w|*||x|| score is made for.
    """
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, 32, generator=g) @ torch.randn(32, k, generator=g) / 32 ** 0.5
    X = X + 0.5 * torch.randn(tokens, k, generator=g)
    if input_scales:
        X = X * torch.logspace(-0.5, 0.5, k)[torch.randperm(k, generator=g)]
    acc = HessianAccumulator(k)
    acc.add_batch(X)
    return torch.randn(n, k, generator=g), acc


def group_of_columns(k: int, group_size: int) -> torch.Tensor:
    """Quantization group index [k] of each column."""
    return torch.arange(k) // group_size


def dequantize_result(res, group_size: int, g_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Weight [N, K] rebuilt from a LayerResult's codes, per-group scales/zeros and keep mask;
    ``g_idx`` [K]: the group of each column (default column // group_size)."""
    g = group_of_columns(res.codes.shape[1], group_size) if g_idx is None else g_idx
    w = (res.codes - res.zeros[:, g]) * res.scales[:, g]
    return torch.where(res.keep, w, 0.0)
