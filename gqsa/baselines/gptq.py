"""GPTQ (Frantar et al. 2022): group-wise quantization with OBS error compensation.

Columns are quantized one at a time and the rounding error of each is compensated on the
columns not yet quantized (:func:`gqsa.baselines.obs.obs_sweep`, lazy batches of
``block_size``). The column order (``BaselineConfig.act_order``):

- ``off``: left to right; each group's scale/zero come from the already updated weights
  when its first column is reached (the GPTQ paper's algorithm);
- ``static``: by decreasing Hessian diagonal (GPTQ's "act-order"), with the grids of the
  original contiguous groups fixed up front from the original weights (AutoGPTQ's
  ``static_groups``, llm-compressor's default ``actorder="static"``): the saved layer
  needs no column permutation and no group index; the only order that takes
  ``scale_format="log8"`` (the fixed grids are snapped to gqsa's 8-bit scales before the sweep);
- ``group``: by decreasing Hessian diagonal, a group being G consecutive columns *of that
  order* with its grid found on the fly (AutoGPTQ's ``desc_act`` without static groups,
  llm-compressor's ``actorder="weight"``); the layer then needs a per-column group index
  (``g_idx``, :func:`group_index`) at inference.
"""

from __future__ import annotations

import torch

from gqsa.baselines.config import BaselineConfig
from gqsa.baselines.obs import obs_sweep
from gqsa.baselines.rtn import rtn_quantize
from gqsa.format_v2 import snap_scales
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


def act_order_permutation(H: torch.Tensor) -> torch.Tensor:
    """Column order [K] int64 by decreasing Hessian diagonal (ties keep the original order)."""
    return torch.argsort(torch.diag(H), descending=True, stable=True)


def group_index(H: torch.Tensor, cfg: BaselineConfig) -> torch.Tensor:
    """Quantization group [K] int64 of each original column under ``cfg.act_order``: column
    c belongs to scales[:, g_idx[c]] of :func:`gptq_layer`'s result."""
    k = H.shape[0]
    groups = torch.arange(k, device=H.device) // cfg.group_size
    if cfg.act_order != "group":
        return groups
    g_idx = torch.empty_like(groups)
    g_idx[act_order_permutation(H)] = groups
    return g_idx


def gptq_layer(weight: torch.Tensor, acc: HessianAccumulator, cfg: BaselineConfig) -> LayerResult:
    """GPTQ of one weight [N, K] given its calibration Hessian; see :func:`obs_sweep` for the
    result. Codes, keep and weight are in the original column order; with ``act_order="group"``
    scales/zeros [N, ceil(K/G)] are indexed by :func:`group_index`, else by column // G."""
    W = prepared_weight(weight, acc.H)
    if cfg.act_order == "off":
        U = inverse_cholesky_upper(damped_inverse(acc.H, cfg.damp))
        return obs_sweep(W, U, cfg)
    perm = act_order_permutation(acc.H)
    U = inverse_cholesky_upper(damped_inverse(acc.H[perm][:, perm], cfg.damp))
    if cfg.act_order == "static":
        _, scales, zeros, _ = rtn_quantize(W, cfg.bits, cfg.group_size, cfg.sym, cfg.clip_search)
        if cfg.scale_format == "log8":
            scales = snap_scales(scales)
        groups = (torch.arange(W.shape[1], device=W.device) // cfg.group_size)[perm]
        res = obs_sweep(W[:, perm], U, cfg, static=(groups, scales, zeros))
    else:
        res = obs_sweep(W[:, perm], U, cfg)
    inv = torch.argsort(perm)
    return LayerResult(res.codes[:, inv], res.scales, res.zeros, res.keep[:, inv], res.weight[:, inv])
