"""SparseGPT (Frantar & Alistarh 2023): one-shot pruning with OBS weight reconstruction,
optionally joint with quantization (sec. 3.5: each column is pruned, then quantized, and
the combined error is compensated, as in GPTQ).

The mask is chosen adaptively: per block of ``block_size`` columns (128 in the paper) for
unstructured sparsity, per M columns for N:M (see :mod:`gqsa.baselines.obs`).
"""

from __future__ import annotations

import torch

from gqsa.baselines.config import BaselineConfig
from gqsa.baselines.gptq import prepared_weight
from gqsa.baselines.obs import obs_sweep
from gqsa.solver.hessian import (
    HessianAccumulator,
    damped_inverse,
    inverse_cholesky_upper,
)
from gqsa.solver.prune_quant import LayerResult


def sparsegpt_layer(weight: torch.Tensor, acc: HessianAccumulator, cfg: BaselineConfig) -> LayerResult:
    """SparseGPT of one weight [N, K] given its calibration Hessian; see :func:`obs_sweep` for the result."""
    W = prepared_weight(weight, acc.H)
    U = inverse_cholesky_upper(damped_inverse(acc.H, cfg.damp))
    return obs_sweep(W, U, cfg)
