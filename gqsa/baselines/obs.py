"""The targets of GPTQ's and SparseGPT's OBS column sweep (:mod:`gqsa.solver.sweep`).

Each column is replaced by its target: pruned to 0 where the mask says so, then rounded to
its group's grid when quantizing; the sweep spreads the error over the later columns.

Masks (SparseGPT, Frantar & Alistarh 2023, sec. 3.3 and alg. 1):

- unstructured: at the start of every block, the ``sparsity`` fraction of the block's
  weights with the lowest OBS score ``w^2 / U_ii^2`` (on the already updated weights) is
  pruned ("adaptive mask selection");
- N:M: at the first column of every M columns, the M - N lowest scores of each row.

Quantization groups (GPTQ's ``groupsize``): the scale/zero of group g are computed from the
updated weights of the group when its first column is reached, unless fixed up front
(``static``, used with act-order).
"""

from __future__ import annotations

import torch

from gqsa.baselines.config import BaselineConfig
from gqsa.baselines.masks import block_keep, nm_keep
from gqsa.solver.prune_quant import LayerResult
from gqsa.solver.quant import dequantize_codes, group_params, quantize
from gqsa.solver.sweep import lazy_obs_sweep

Static = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def obs_sweep(W: torch.Tensor, U: torch.Tensor, cfg: BaselineConfig, static: Static | None = None) -> LayerResult:
    """Prune and/or quantize W with OBS error compensation (:func:`gqsa.solver.sweep.lazy_obs_sweep`).

    Args:
        W: [N, K] float32 in processing order (not modified).
        U: [K, K] upper Cholesky factor of the damped H^-1, same column order.
        cfg: pattern, sparsity, bits, group_size, sym, block_size.
        static: (groups [K] int64: quantization group of each column, scales and zeros
            [N, ng]) fixed before the sweep; None: groups are consecutive column ranges and
            their parameters are found on the fly.

    Returns:
        LayerResult with codes [N, K] (0 where pruned), scales/zeros [N, ceil(K/G)] (empty
        when ``cfg.bits == 16``), keep [N, K] bool (per weight) and the weight [N, K].
    """
    n, k = W.shape
    ng = -(-k // cfg.group_size)
    if static is None:
        groups = torch.arange(k, device=W.device) // cfg.group_size
        scales, zeros = torch.ones(n, ng, device=W.device), torch.zeros(n, ng, device=W.device)
    else:
        groups, scales, zeros = static[0], static[1].clone(), static[2].clone()
    keep = torch.ones(n, k, dtype=torch.bool, device=W.device)
    codes, Q = torch.zeros(n, k, device=W.device), torch.zeros(n, k, device=W.device)

    def block(i1: int, i2: int, W1: torch.Tensor, U1: torch.Tensor) -> None:
        if cfg.pattern == "unstructured":
            keep[:, i1:i2] = block_keep(W1.pow(2) / torch.diag(U1).pow(2), cfg.sparsity)

    def column(col: int, i: int, W1: torch.Tensor) -> torch.Tensor:
        if cfg.nm and i % cfg.nm[1] == 0:
            w = W1[:, i:i + cfg.nm[1]]  # M columns, fewer at the end of a block
            d = torch.diag(U[col:col + w.shape[1], col:col + w.shape[1]])
            keep[:, col:col + w.shape[1]] = nm_keep(w.pow(2) / d.pow(2), *cfg.nm)
        if cfg.quantized and static is None and col % cfg.group_size == 0:
            g = col // cfg.group_size
            scales[:, g], zeros[:, g] = group_params(W1[:, i:i + cfg.group_size], cfg.bits, cfg.sym,
                                                    cfg.clip_search)
        Q[:, col], codes[:, col] = _target(W1[:, i], keep[:, col], scales[:, groups[col]], zeros[:, groups[col]], cfg)
        return Q[:, col]

    lazy_obs_sweep(W, U, cfg.block_size, column, block)
    if not cfg.quantized:
        scales, zeros = torch.empty(0), torch.empty(0)
    return LayerResult(codes, scales, zeros, keep, Q)


def _target(w: torch.Tensor, keep: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
            cfg: BaselineConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The value column w [N] takes (pruned, then rounded to the grid) and its codes [N]."""
    if not cfg.quantized:
        return torch.where(keep, w, 0.0), torch.zeros_like(w)
    q = quantize(w.unsqueeze(1), scale, zero, cfg.bits).squeeze(1)
    dq = dequantize_codes(q.unsqueeze(1), scale, zero).squeeze(1)
    return torch.where(keep, dq, 0.0), torch.where(keep, q, 0.0)
