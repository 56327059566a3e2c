"""The lazy-batch OBS column sweep behind the gqsa solver, GPTQ and SparseGPT.

Columns of W [N, K] are processed left to right. Each column takes a target value (pruned
to 0, rounded to its group's grid, or both; chosen by the caller), and its error is spread
over the columns not yet processed through the upper Cholesky factor U of H^-1:
``W[:, j] -= (w_i - t_i) / U_ii * U_ij`` for j > i (GPTQ eq. 2-4, alg. 1; SparseGPT
sec. 3.2). Updates inside a block of ``block_size`` columns are applied at once to the
rest of the matrix ("lazy batch", GPTQ sec. 4 step 2). What a column's target is (its mask,
its group's scale and zero) is the caller's (a :class:`BlockTargets`): this module owns only
the update.

On CUDA the column loop of a block is a CUDA graph. Each column is about twenty small kernels,
and from Python each costs more to launch than to run: at 70B shape (8,192 rows) the eager loop
took 300-550 us a column, 37 of a block's 50 s one-shot. The loop of the first block of each
width runs eagerly (the warm-up), the second is captured, and every later block replays the
graph on the same buffers, with the same kernels, so the values are the eager loop's, bit for bit.
"""

from __future__ import annotations

import os
from typing import Protocol

import torch

# the default of lazy_obs_sweep(graphs=None) on CUDA; False (or GQSA_SWEEP_GRAPHS=0) runs every block eagerly
USE_GRAPHS = os.environ.get("GQSA_SWEEP_GRAPHS", "1") != "0"


class BlockTargets(Protocol):
    """The column targets of one sweep, block by block.

    ``begin`` and ``end`` run eagerly around each block. ``target`` may be recorded in a CUDA
    graph and replayed for later blocks, so it must only read and write buffers that stay the
    same across blocks (filled by ``begin``, read back by ``end``), index them by the column's
    place ``i`` in the block only, never read a value back to the host, and take the same
    branches for the same ``i`` in every block. ``graph_safe`` says whether it does.
    """

    graph_safe: bool

    def begin(self, i1: int, i2: int, W1: torch.Tensor, U1: torch.Tensor) -> None:
        """Block [i1, i2) starts: W1 [N, i2-i1] its updated weights, U1 its part of U."""

    def target(self, i: int, W1: torch.Tensor) -> torch.Tensor:
        """The target [N] of the block's column i (may read W1, the block's updated weights)."""

    def end(self, i1: int, i2: int) -> None:
        """Block [i1, i2) is done: store what its targets recorded."""


def lazy_obs_sweep(W: torch.Tensor, U: torch.Tensor, block_size: int, targets: BlockTargets,
                   graphs: bool | None = None) -> None:
    """Run the sweep over a float32 copy of W [N, K] (W itself is not modified).

    Args:
        W: [N, K] weights; U: [K, K] upper Cholesky factor of the damped H^-1, same column order.
        block_size: columns per lazy block.
        targets: the column targets (:class:`BlockTargets`).
        graphs: replay each block's column loop as a CUDA graph; default: on CUDA when
            ``targets.graph_safe`` and :data:`USE_GRAPHS`.
    """
    W = W.clone().float()
    n, k = W.shape
    if graphs is None:
        graphs = USE_GRAPHS and W.is_cuda and targets.graph_safe
    runner = _BlockRunner(n, block_size, W.device, targets, graphs)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        W1, U1, Err1 = runner.buffers(i2 - i1)
        W1.copy_(W[:, i1:i2])
        U1.copy_(U[i1:i2, i1:i2])
        targets.begin(i1, i2, W1, U1)
        runner.run(W1, U1, Err1)
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
        targets.end(i1, i2)


def _columns(W1: torch.Tensor, U1: torch.Tensor, Err1: torch.Tensor, targets: BlockTargets) -> None:
    """The column loop of one block, in place on W1 [N, B]; Err1 [N, B] gets the scaled errors."""
    for i in range(W1.shape[1]):
        Err1[:, i] = (W1[:, i] - targets.target(i, W1)) / U1[i, i]
        W1[:, i:] -= Err1[:, i:i + 1] * U1[i:i + 1, i:]


class _BlockRunner:
    """Per block width: the block's buffers, and the column loop eager or as a CUDA graph."""

    def __init__(self, n: int, block_size: int, device: torch.device, targets: BlockTargets, graphs: bool):
        self.n, self.device, self.targets, self.use_graphs = n, device, targets, graphs
        self._buffers: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._seen: dict[int, int] = {}
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}

    def buffers(self, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W1 [N, b], U1 [b, b], Err1 [N, b]) float32, the same tensors for every block of width b."""
        if b not in self._buffers:
            self._buffers[b] = (torch.empty(self.n, b, device=self.device), torch.empty(b, b, device=self.device),
                                torch.empty(self.n, b, device=self.device))
        return self._buffers[b]

    def run(self, W1: torch.Tensor, U1: torch.Tensor, Err1: torch.Tensor) -> None:
        b = W1.shape[1]
        seen = self._seen[b] = self._seen.get(b, 0) + 1
        if not self.use_graphs or seen == 1:  # the first block of a width is the warm-up
            _columns(W1, U1, Err1, self.targets)
            return
        if b not in self._graphs:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads may use CUDA
                _columns(W1, U1, Err1, self.targets)
            self._graphs[b] = graph
        self._graphs[b].replay()
