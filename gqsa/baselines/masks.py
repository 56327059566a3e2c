"""Keep-masks from per-weight scores: N:M, per row, or over a whole block of columns.

All take scores [R, C] (higher = more important) and return a bool keep-mask of the same
shape that prunes an exact number of entries (ties broken by ``topk``). Per row and per
block are the solver's group selection (:func:`gqsa.solver.saliency.select_groups`) applied
to single weights.
"""

from __future__ import annotations

import torch

from gqsa.solver.saliency import select_groups


def nm_keep(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the N highest scores in every M consecutive columns of each row. [R, C], C % M == 0."""
    r, c = scores.shape
    if c % m != 0:
        raise ValueError(f"N:M pattern {n}:{m} needs the column count {c} to be a multiple of {m}")
    s = scores.reshape(r, c // m, m)
    keep = torch.zeros_like(s, dtype=torch.bool)
    keep.scatter_(2, torch.topk(s, n, dim=2).indices, True)
    return keep.reshape(r, c)


def row_keep(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune round(sparsity * C) lowest scores in every row (Wanda's per-output comparison group)."""
    return select_groups(scores, sparsity, "row")


def block_keep(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune round(sparsity * R * C) lowest scores of the whole block, wherever they are
    (SparseGPT's adaptive mask selection over a block of columns, sec. 3.3)."""
    return select_groups(scores, sparsity, "layer")
