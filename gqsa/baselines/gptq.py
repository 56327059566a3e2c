"""GPTQ (Frantar et al. 2022): group-wise quantization with OBS error compensation.

Columns are quantized one at a time and the rounding error of each is compensated on the
columns not yet quantized (:func:`gqsa.baselines.obs.obs_sweep`, lazy batches of
``block_size``). With ``act_order`` the columns are visited by decreasing Hessian diagonal
(GPTQ's "desc_act"); the group parameters are then fixed from the original weights before
the sweep ("static groups"), so the saved layer needs no column permutation.
"""

from __future__ import annotations

import torch

from gqsa.baselines.config import BaselineConfig
from gqsa.baselines.obs import obs_sweep
from gqsa.baselines.rtn import rtn_quantize
from gqsa.solver.hessian import (
    HessianAccumulator,
    damped_inverse,
    dead_inputs,
    inverse_cholesky_upper,
)
from gqsa.solver.prune_quant import LayerResult


def prepared_weight(weight: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """float32 copy of weight [N, K] on H's device with the columns of dead inputs
    (always zero on the calibration data) set to 0, as in GPTQ."""
    W = weight.detach().to(H.device, torch.float32).clone()
    W[:, dead_inputs(H)] = 0
    return W


def gptq_layer(weight: torch.Tensor, acc: HessianAccumulator, cfg: BaselineConfig) -> LayerResult:
    """GPTQ of one weight [N, K] given its calibration Hessian; see :func:`obs_sweep` for the result."""
    W = prepared_weight(weight, acc.H)
    if not cfg.act_order:
        U = inverse_cholesky_upper(damped_inverse(acc.H, cfg.damp))
        return obs_sweep(W, U, cfg)
    perm = torch.argsort(torch.diag(acc.H), descending=True)
    _, scales, zeros, _ = rtn_quantize(W, cfg.bits, cfg.group_size, cfg.sym)
    groups = (torch.arange(W.shape[1], device=W.device) // cfg.group_size)[perm]
    U = inverse_cholesky_upper(damped_inverse(acc.H[perm][:, perm], cfg.damp))
    res = obs_sweep(W[:, perm], U, cfg, static=(groups, scales, zeros))
    inv = torch.argsort(perm)
    return LayerResult(res.codes[:, inv], res.scales, res.zeros, res.keep[:, inv], res.weight[:, inv])
