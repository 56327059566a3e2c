"""The lazy-batch OBS column sweep behind the gqsa solver, GPTQ and SparseGPT.

Columns of W [N, K] are processed left to right. Each column takes a target value (pruned
to 0, rounded to its group's grid, or both; chosen by the caller), and its error is spread
over the columns not yet processed through the upper Cholesky factor U of H^-1:
``W[:, j] -= (w_i - t_i) / U_ii * U_ij`` for j > i (GPTQ eq. 2-4, alg. 1; SparseGPT
sec. 3.2). Updates inside a block of ``block_size`` columns are applied at once to the
rest of the matrix ("lazy batch", GPTQ sec. 4 step 2). What a column's target is (its mask,
its group's scale and zero) is the caller's: this module owns only the update.
"""

from __future__ import annotations

from typing import Callable

import torch

Column = Callable[[int, int, torch.Tensor], torch.Tensor]
Block = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def lazy_obs_sweep(W: torch.Tensor, U: torch.Tensor, block_size: int, column: Column,
                   block: Block | None = None) -> None:
    """Run the sweep over a float32 copy of W [N, K] (W itself is not modified).

    Args:
        W: [N, K] weights; U: [K, K] upper Cholesky factor of the damped H^-1, same column order.
        column: ``column(col, i, W1) -> [N]``, the target of column ``col``, which is column
            ``i`` of the block's updated weights W1 [N, B]; it records codes, masks and
            quantization parameters itself and may read (not write) W1.
        block: ``block(i1, i2, W1, U1)``, called when a block [i1, i2) starts, before any of
            its columns (adaptive mask selection on the updated weights).
    """
    W = W.clone().float()
    k = W.shape[1]
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        if block is not None:
            block(i1, i2, W1, U1)
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            Err1[:, i] = (W1[:, i] - column(i1 + i, i, W1)) / U1[i, i]
            W1[:, i:] -= Err1[:, i:i + 1] * U1[i:i + 1, i:]
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
