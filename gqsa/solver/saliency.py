"""Group importance scores and group selection.

A group is G consecutive input weights of one output row. Scores are [N, K/G]; higher
means more important (keep).
"""

from __future__ import annotations

import torch


def obs_group_scores(W: torch.Tensor, Hinv: torch.Tensor, group_size: int) -> torch.Tensor:
    """Second-order (OBS) loss increase of removing each whole group.

    For group g of row r with weights w (G values) and B = [H^-1]_gg (the G x G diagonal
    block of H^-1), removing w and optimally updating the other weights of the row raises
    the layer's squared output error by 1/2 w^T B^-1 w (Optimal Brain Surgeon, generalised
    to a block of weights; SparseGPT eq. 3 for G = 1).

    Args:
        W: [N, K] float32. Hinv: [K, K] float32. Returns: [N, K/G] float32.
    """
    n, k = W.shape
    ng = k // group_size
    idx = torch.arange(ng, device=W.device)
    blocks = Hinv.reshape(ng, group_size, ng, group_size)[idx, :, idx, :]  # [ng, G, G]
    blocks_inv = torch.cholesky_inverse(torch.linalg.cholesky(blocks))
    Wg = W.reshape(n, ng, group_size)
    return 0.5 * torch.einsum("ngi,gij,ngj->ng", Wg, blocks_inv, Wg)


def wanda_group_scores(W: torch.Tensor, sq_norm: torch.Tensor, group_size: int) -> torch.Tensor:
    """Wanda's |w| * ||x|| (Sun et al. 2023, eq. 1) summed over each group. [N, K/G]."""
    s = W.abs() * sq_norm.sqrt().unsqueeze(0)
    return s.reshape(W.shape[0], -1, group_size).sum(-1)


def magnitude_group_scores(W: torch.Tensor, group_size: int) -> torch.Tensor:
    """Plain L2 norm of each group's weights: the naive baseline. [N, K/G]."""
    return W.reshape(W.shape[0], -1, group_size).pow(2).sum(-1)


def protected_groups(sq_norm: torch.Tensor, n_tokens: int, ratio: float, group_size: int) -> torch.Tensor:
    """Groups [K/G] bool holding an input channel whose calibration RMS exceeds ``ratio`` times
    the median channel RMS of the layer (massive activations). sq_norm [K] float32: sum of x^2."""
    rms = (sq_norm / max(n_tokens, 1)).sqrt()
    hot = rms > ratio * rms.median().clamp_min(1e-30)
    return hot.reshape(-1, group_size).any(1)


def protect_scores(scores: torch.Tensor, protect: torch.Tensor | None) -> torch.Tensor:
    """``scores`` [N, K/G] with the ``protect`` [K/G] groups raised above every other (kept first)."""
    if protect is None or not bool(protect.any()):
        return scores
    return torch.where(protect.unsqueeze(0), torch.full_like(scores, float("inf")), scores)


def select_groups(scores: torch.Tensor, sparsity: float, balance: str) -> torch.Tensor:
    """Bool keep-mask [N, K/G] that prunes exactly round(sparsity * count) groups.

    ``row``: the same number of groups pruned in every row; ``layer``: the lowest
    scores of the whole layer, wherever they are.
    """
    n, ng = scores.shape
    keep = torch.zeros_like(scores, dtype=torch.bool)
    if balance == "row":
        k = ng - int(round(sparsity * ng))
        top = torch.topk(scores, k, dim=1).indices
        keep.scatter_(1, top, True)
    elif balance == "layer":
        k = n * ng - int(round(sparsity * n * ng))
        top = torch.topk(scores.flatten(), k).indices
        keep.view(-1)[top] = True
    else:
        raise ValueError(f"balance must be 'row' or 'layer', got {balance!r}")
    return keep
