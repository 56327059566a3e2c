"""Wanda (Sun et al. 2023) and magnitude pruning: masks from a score, no weight update.

Wanda scores each weight by |W_ij| * ||X_j||_2 (eq. 1; the norm over all calibration
tokens of input j) and compares weights within each output row ("per output"), or within
every M consecutive inputs of a row for N:M. Magnitude pruning uses |W_ij| alone and is
the naive counterpart of both Wanda and SparseGPT.
"""

from __future__ import annotations

import torch

from gqsa.baselines.config import BaselineConfig
from gqsa.baselines.masks import nm_keep, row_keep
from gqsa.solver.hessian import HessianAccumulator
from gqsa.solver.prune_quant import LayerResult


def prune_by_scores(W: torch.Tensor, scores: torch.Tensor, cfg: BaselineConfig) -> LayerResult:
    """Zero the weights of W [N, K] that ``scores`` [N, K] ranks lowest under ``cfg``'s pattern.

    Returns a LayerResult with the keep mask [N, K] and the pruned weight (no codes or scales).
    """
    keep = nm_keep(scores, *cfg.nm) if cfg.nm else row_keep(scores, cfg.sparsity)
    empty = torch.empty(0)
    return LayerResult(empty, empty, empty, keep, torch.where(keep, W, 0.0))


def wanda_layer(weight: torch.Tensor, acc: HessianAccumulator, cfg: BaselineConfig) -> LayerResult:
    """Wanda pruning of one weight [N, K]; ``acc.sq_norm`` [K] holds sum_t x_tj^2."""
    W = weight.detach().to(acc.sq_norm.device, torch.float32)
    return prune_by_scores(W, W.abs() * acc.sq_norm.sqrt().unsqueeze(0), cfg)


def magnitude_layer(weight: torch.Tensor, acc: HessianAccumulator | None, cfg: BaselineConfig) -> LayerResult:
    """Magnitude pruning of one weight [N, K] (per row or N:M); ``acc`` is not used."""
    W = weight.detach().float()
    return prune_by_scores(W, W.abs(), cfg)
