"""The joint group-prune + group-quantize update (SparseGPT/GPTQ style, GQSA sec. 3).

The column targets of the OBS sweep (:mod:`gqsa.solver.sweep`, which spreads each
column's error over the later ones): at the first column of each group the group's
scale/zero are fixed from the (already updated) weights of that group; each column is
then quantized (kept groups) or set to zero (pruned groups).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gqsa.config import ACT_ORDER_GRIDS
from gqsa.solver.hessian import damped_inverse, inverse_cholesky_upper
from gqsa.solver.quant import dequantize_codes, group_params, quantize, rtn_quantize
from gqsa.solver.saliency import obs_group_scores, protect_scores
from gqsa.solver.sweep import lazy_obs_sweep


@dataclass
class LayerResult:
    """Output of the solver for one layer: codes [N, K] (float of ints), scales and
    zeros [N, K/G], the keep mask [N, K/G] and the dequantized, pruned weight [N, K]."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    keep: torch.Tensor
    weight: torch.Tensor
    protected: int = 0  # input groups kept in every row by the protection (GQSAConfig.protect_ratio)


def prune_quantize(W: torch.Tensor, U: torch.Tensor, keep: torch.Tensor | None, group_size: int, bits: int,
                   sym: bool = False, clip_search: bool = True, block_size: int = 128,
                   sparsity: float | None = None, protect: torch.Tensor | None = None) -> LayerResult:
    """Jointly prune and quantize W [N, K] with error compensation.

    Args:
        W: [N, K] float32 weights (not modified). U: [K, K] upper Cholesky factor of H^-1.
        keep: [N, K/G] bool, the groups that stay (a mask fixed up front); or None with
            ``sparsity``: the mask is then chosen block by block (adaptive, as SparseGPT does),
            pruning exactly round(sparsity * K/G) groups of every row in all (the count of each
            lazy block is the difference of rounded cumulative counts), by the
            OBS group score on the already-updated weights (:func:`adaptive_block_keep`).
        protect: [K/G] bool, groups the adaptive selection keeps in every row (a fixed mask
            already holds them).
    Returns a :class:`LayerResult`.
    """
    n, k = W.shape
    ng = k // group_size
    adaptive = keep is None
    if adaptive:
        keep = torch.zeros(n, ng, dtype=torch.bool, device=W.device)

    def select(i1: int, i2: int, W1: torch.Tensor, U1: torch.Tensor) -> torch.Tensor:
        g1, g2 = i1 // group_size, i2 // group_size
        if adaptive:
            pruned = int(round(sparsity * g2)) - int(round(sparsity * g1))  # exact row total over blocks
            keep[:, g1:g2] = adaptive_block_keep(W1, U1, group_size, (g2 - g1) - pruned,
                                                 None if protect is None else protect[g1:g2])
        return keep[:, g1:g2]

    targets = _GroupTargets(n, k, group_size, bits, block_size, W.device, sym, clip_search, select)
    lazy_obs_sweep(W, U, block_size, targets)
    return LayerResult(targets.codes, targets.scales, targets.zeros, keep, targets.out)


class _RoundedColumns:
    """Buffers shared by the rounding targets: the layer's codes and values [N, K] float32, and per
    block the kept flags [N, B] and each column's codes and values [N, B] (the graph's buffers)."""

    graph_safe = True

    def __init__(self, n: int, k: int, block_size: int, bits: int, device: torch.device):
        self.bits = bits
        self.codes, self.out = torch.zeros(n, k, device=device), torch.zeros(n, k, device=device)
        self.keep = torch.zeros(n, block_size, dtype=torch.bool, device=device)
        self.q1, self.dq1 = torch.zeros(n, block_size, device=device), torch.zeros(n, block_size, device=device)

    def _round(self, i: int, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """Column i of the block on the grid (scale, zero [N]) where kept, 0 elsewhere; its values [N]."""
        self.q1[:, i], self.dq1[:, i] = kept_or_zero(w, scale, zero, self.keep[:, i], self.bits)
        return self.dq1[:, i]

    def end(self, i1: int, i2: int) -> None:
        b = i2 - i1
        self.codes[:, i1:i2], self.out[:, i1:i2] = self.q1[:, :b], self.dq1[:, :b]


class _GroupTargets(_RoundedColumns):
    """Column targets of :func:`prune_quantize` (a :class:`gqsa.solver.sweep.BlockTargets`): at the
    first column of each group its scale and zero are fixed from the group's updated weights,
    then each column is rounded to that grid where kept and set to 0 where pruned.
    ``select(i1, i2, W1, U1)`` gives the kept groups [N, (i2-i1)/G] bool of each block as it starts."""

    def __init__(self, n: int, k: int, group_size: int, bits: int, block_size: int, device: torch.device,
                 sym: bool, clip_search: bool, select):
        if block_size % group_size:  # then groups start at the same places i of every block
            raise ValueError(f"block_size {block_size} must be a multiple of group_size {group_size}")
        super().__init__(n, k, block_size, bits, device)
        self.g, self.sym, self.clip_search, self.select = group_size, sym, clip_search, select
        self.scales = torch.ones(n, k // group_size, device=device)
        self.zeros = torch.zeros(n, k // group_size, device=device)
        nb = block_size // group_size
        self.s1, self.z1 = torch.ones(n, nb, device=device), torch.zeros(n, nb, device=device)

    def begin(self, i1: int, i2: int, W1: torch.Tensor, U1: torch.Tensor) -> None:
        self.keep[:, :i2 - i1] = self.select(i1, i2, W1, U1).repeat_interleave(self.g, dim=1)

    def target(self, i: int, W1: torch.Tensor) -> torch.Tensor:
        g = i // self.g
        if i % self.g == 0:
            self.s1[:, g], self.z1[:, g] = group_params(W1[:, i:i + self.g], self.bits, self.sym, self.clip_search)
        return self._round(i, W1[:, i], self.s1[:, g], self.z1[:, g])

    def end(self, i1: int, i2: int) -> None:
        super().end(i1, i2)
        g1, g2 = i1 // self.g, i2 // self.g
        self.scales[:, g1:g2], self.zeros[:, g1:g2] = self.s1[:, :g2 - g1], self.z1[:, :g2 - g1]


def kept_or_zero(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, kept: torch.Tensor, bits: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One column's target: codes and dequantized values [N] of column w [N] on its rows' grids
    (scale, zero [N]) where ``kept`` [N] bool, 0 (pruned) elsewhere."""
    q = quantize(w.unsqueeze(1), scale, zero, bits).squeeze(1)
    dq = dequantize_codes(q.unsqueeze(1), scale, zero).squeeze(1)
    return torch.where(kept, q, torch.zeros_like(q)), torch.where(kept, dq, torch.zeros_like(dq))


def prune_quantize_act_order(W: torch.Tensor, H: torch.Tensor, keep: torch.Tensor, group_size: int, bits: int,
                             damp: float, sym: bool = False, clip_search: bool = True, block_size: int = 128,
                             grids: str = "compensated") -> LayerResult:
    """:func:`prune_quantize` with the columns taken by decreasing Hessian diagonal (GPTQ's
    act-order) and every group's scale and zero fixed before the sweep (static groups, as
    AutoGPTQ's ``static_groups`` and llm-compressor's ``actorder="static"``).

    The groups stay the contiguous G inputs of the format, so the result is stored as any other
    (no permutation, no group index). Columns with large inputs are fixed first, while many
    columns are left to absorb their rounding and pruning error.

    ``grids``: ``original`` fixes each group's grid from the weights before the sweep (GPTQ's
    choice); ``compensated`` from the weights after a first, pruning-only pass of the same sweep,
    where the kept weights have moved to absorb the pruned ones (at 50 % sparsity far outside the
    original ranges). On the CPU protocol (docs/oneshot.md) ``compensated`` cut the perplexity of
    W4 S50 by a third and of W3 S20 by a tenth.

    Args:
        W: [N, K] float32 (dead inputs already zeroed; not modified). H: [K, K] its Hessian.
        keep: [N, K/G] bool, the mask fixed up front. damp: as :func:`damped_inverse`.
    Returns a :class:`LayerResult` in the original column order.
    """
    if grids not in ACT_ORDER_GRIDS:
        raise ValueError(f"grids must be one of {ACT_ORDER_GRIDS}, got {grids!r}")
    perm = torch.argsort(torch.diag(H), descending=True, stable=True)
    inv = torch.argsort(perm)
    U = inverse_cholesky_upper(damped_inverse(H.index_select(0, perm).index_select(1, perm), damp))
    keep_cols = keep.repeat_interleave(group_size, dim=1)[:, perm]
    Wp = W[:, perm]  # both sweeps read the same permuted copy
    source = W
    if grids == "compensated":
        pruned = PruneTargets(keep_cols, block_size)
        lazy_obs_sweep(Wp, U, block_size, pruned)
        source = pruned.out[:, inv]
    _, scales, zeros, _ = rtn_quantize(source, bits, group_size, sym, clip_search)  # [N, K/G]
    del source
    targets = StaticGridTargets(scales, zeros, perm // group_size, keep_cols, bits, block_size)
    lazy_obs_sweep(Wp, U, block_size, targets)
    return LayerResult(targets.codes[:, inv], scales, zeros, keep, targets.out[:, inv])


class PruneTargets:
    """Column targets of a pruning-only sweep (a :class:`gqsa.solver.sweep.BlockTargets`): each
    column keeps its updated weights where ``keep_cols`` [N, K] says so and is 0 elsewhere;
    ``out`` [N, K] float32 gets the result (the pruned and compensated weights)."""

    graph_safe = True

    def __init__(self, keep_cols: torch.Tensor, block_size: int):
        n, k = keep_cols.shape
        dev = keep_cols.device
        self.keep_cols, self.out = keep_cols, torch.zeros(n, k, device=dev)
        self.keep = torch.zeros(n, block_size, dtype=torch.bool, device=dev)
        self.out1 = torch.zeros(n, block_size, device=dev)

    def begin(self, i1: int, i2: int, W1: torch.Tensor, U1: torch.Tensor) -> None:
        self.keep[:, :i2 - i1] = self.keep_cols[:, i1:i2]

    def target(self, i: int, W1: torch.Tensor) -> torch.Tensor:
        self.out1[:, i] = torch.where(self.keep[:, i], W1[:, i], torch.zeros_like(W1[:, i]))
        return self.out1[:, i]

    def end(self, i1: int, i2: int) -> None:
        self.out[:, i1:i2] = self.out1[:, :i2 - i1]


class StaticGridTargets(_RoundedColumns):
    """Column targets on grids fixed before the sweep (a :class:`gqsa.solver.sweep.BlockTargets`):
    processed column c is rounded to group ``groups[c]``'s grid (scales, zeros [N, ng]) where
    ``keep_cols[:, c]`` and set to 0 elsewhere. Each block gathers its columns' grids first."""

    def __init__(self, scales: torch.Tensor, zeros: torch.Tensor, groups: torch.Tensor, keep_cols: torch.Tensor,
                 bits: int, block_size: int):
        n, k = keep_cols.shape
        super().__init__(n, k, block_size, bits, keep_cols.device)
        self.scales, self.zeros, self.groups, self.keep_cols = scales, zeros, groups, keep_cols
        self.s1 = torch.ones(n, block_size, device=keep_cols.device)
        self.z1 = torch.zeros(n, block_size, device=keep_cols.device)

    def begin(self, i1: int, i2: int, W1: torch.Tensor, U1: torch.Tensor) -> None:
        b, g = i2 - i1, self.groups[i1:i2]
        self.s1[:, :b], self.z1[:, :b] = self.scales[:, g], self.zeros[:, g]
        self.keep[:, :b] = self.keep_cols[:, i1:i2]

    def target(self, i: int, W1: torch.Tensor) -> torch.Tensor:
        return self._round(i, W1[:, i], self.s1[:, i], self.z1[:, i])


def adaptive_block_keep(W1: torch.Tensor, U1: torch.Tensor, group_size: int, kept: int,
                        protect: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-mask [N, B/G] of one lazy block from the OBS group scores at this point.

    With columns before the block already fixed, the inverse Hessian of the remaining
    problem restricted to the block is U1^T U1 (U1 = the block's part of the Cholesky factor
    of H^-1, GPTQ sec. 3). Each group's cost is 1/2 w^T B^-1 w with B its G x G diagonal
    block and w the group's current (updated) weights (:func:`obs_group_scores`); every row keeps
    ``kept`` groups, the ``protect`` ones [B/G] bool first.
    """
    scores = protect_scores(obs_group_scores(W1, U1.T @ U1, group_size), protect)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    return keep.scatter_(1, torch.topk(scores, kept, dim=1).indices, True)


def round_to_nearest(W: torch.Tensor, keep: torch.Tensor, group_size: int, bits: int,
                     sym: bool = False, clip_search: bool = False) -> LayerResult:
    """Prune by mask and round each kept group to nearest, with no compensation (the naive baseline)."""
    q, s, z, dq = rtn_quantize(W, bits, group_size, sym, clip_search)
    kc = keep.repeat_interleave(group_size, dim=1)
    return LayerResult(torch.where(kc, q, 0.0), s, z, keep, torch.where(kc, dq, 0.0))


def output_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """Relative layer-output error tr(D H D^T) / tr(W H W^T), D = W - W_hat (H from calibration)."""
    D = (W - W_hat).float()
    num = torch.einsum("ij,jk,ik->", D, H, D)
    den = torch.einsum("ij,jk,ik->", W.float(), H, W.float())
    return float(num / den.clamp_min(1e-30))
