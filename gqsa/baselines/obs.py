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
    targets = _ObsTargets(n, k, cfg, groups, scales, zeros, static is not None, W.device)
    lazy_obs_sweep(W, U, cfg.block_size, targets)
    if not cfg.quantized:
        scales, zeros = torch.empty(0), torch.empty(0)
    return LayerResult(targets.codes, scales, zeros, targets.keep, targets.Q)


class _ObsTargets:
    """The column targets of :func:`obs_sweep` (a :class:`gqsa.solver.sweep.BlockTargets`).

    Per block: the unstructured mask at its start, the N:M mask at the first of every M columns,
    the group's grid at its first column (or gathered up front when ``static``), then each column
    pruned and rounded. Block buffers: keep1 [N, B], the grids per column (static) or per group."""

    graph_safe = True  # block_size is a multiple of G and of M (BaselineConfig): every branch depends on i only

    def __init__(self, n: int, k: int, cfg: BaselineConfig, groups: torch.Tensor, scales: torch.Tensor,
                 zeros: torch.Tensor, static: bool, device: torch.device):
        b = cfg.block_size
        self.cfg, self.groups, self.scales, self.zeros, self.static = cfg, groups, scales, zeros, static
        self.keep = torch.ones(n, k, dtype=torch.bool, device=device)
        self.codes, self.Q = torch.zeros(n, k, device=device), torch.zeros(n, k, device=device)
        self.keep1 = torch.ones(n, b, dtype=torch.bool, device=device)
        self.q1, self.c1 = torch.zeros(n, b, device=device), torch.zeros(n, b, device=device)
        width = b if static else -(-b // cfg.group_size)  # grids per column, or per group of the block
        self.s1, self.z1 = torch.ones(n, width, device=device), torch.zeros(n, width, device=device)
        self.U1 = None

    def begin(self, i1: int, i2: int, W1: torch.Tensor, U1: torch.Tensor) -> None:
        b, self.U1 = i2 - i1, U1
        if self.cfg.pattern == "unstructured":
            self.keep[:, i1:i2] = block_keep(W1.pow(2) / torch.diag(U1).pow(2), self.cfg.sparsity)
        self.keep1[:, :b] = self.keep[:, i1:i2]
        if self.static:
            g = self.groups[i1:i2]
            self.s1[:, :b], self.z1[:, :b] = self.scales[:, g], self.zeros[:, g]

    def target(self, i: int, W1: torch.Tensor) -> torch.Tensor:
        cfg, g = self.cfg, i // self.cfg.group_size
        if cfg.nm and i % cfg.nm[1] == 0:
            m = cfg.nm[1]
            d = torch.diag(self.U1[i:i + m, i:i + m])
            self.keep1[:, i:i + m] = nm_keep(W1[:, i:i + m].pow(2) / d.pow(2), *cfg.nm)
        if cfg.quantized and not self.static and i % cfg.group_size == 0:
            self.s1[:, g], self.z1[:, g] = group_params(W1[:, i:i + cfg.group_size], cfg.bits, cfg.sym,
                                                      cfg.clip_search)
        j = i if self.static else g
        self.q1[:, i], self.c1[:, i] = _target(W1[:, i], self.keep1[:, i], self.s1[:, j], self.z1[:, j], cfg)
        return self.q1[:, i]

    def end(self, i1: int, i2: int) -> None:
        b = i2 - i1
        self.Q[:, i1:i2], self.codes[:, i1:i2], self.keep[:, i1:i2] = self.q1[:, :b], self.c1[:, :b], self.keep1[:, :b]
        if not self.static:
            g1, g2 = i1 // self.cfg.group_size, -(-i2 // self.cfg.group_size)
            self.scales[:, g1:g2], self.zeros[:, g1:g2] = self.s1[:, :g2 - g1], self.z1[:, :g2 - g1]


def _target(w: torch.Tensor, keep: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
            cfg: BaselineConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The value column w [N] takes (pruned, then rounded to the grid) and its codes [N]."""
    if not cfg.quantized:
        return torch.where(keep, w, 0.0), torch.zeros_like(w)
    q = quantize(w.unsqueeze(1), scale, zero, cfg.bits).squeeze(1)
    dq = dequantize_codes(q.unsqueeze(1), scale, zero).squeeze(1)
    return torch.where(keep, dq, 0.0), torch.where(keep, q, 0.0)
