"""Round-to-nearest (RTN): per-group min-max quantization with no calibration data.

The naive baseline of GPTQ (Frantar et al. 2022, sec. 5): each group of ``group_size``
consecutive input weights of a row gets its own scale and zero point from its min and max
(the grid always includes 0, as in the GPTQ quantizer), and every weight is rounded to the
nearest grid point.
"""

from __future__ import annotations

import torch

from gqsa.baselines.config import BaselineConfig
from gqsa.format_v2 import snap_scales
from gqsa.solver.prune_quant import LayerResult
from gqsa.solver.quant import (
    grid_quantize,
    rtn_quantize,  # the one RTN quantizer, shared with the solver's naive path
)


def rtn_layer(weight: torch.Tensor, acc, cfg: BaselineConfig) -> LayerResult:
    """RTN of one weight [N, K]; ``acc`` (the calibration Hessian) is not used.

    Same signature as the other per-layer solvers, so the pipeline can run it. With
    ``cfg.scale_format == "log8"`` the scales are snapped to gqsa's stored grid and the weights
    rounded again to it.
    """
    codes, s, z, W_hat = rtn_quantize(weight.detach(), cfg.bits, cfg.group_size, cfg.sym, cfg.clip_search)
    if cfg.scale_format == "log8":
        s = snap_scales(s)
        codes, W_hat = grid_quantize(weight.detach(), s, z, cfg.bits, cfg.group_size)
    return LayerResult(codes, s, z, torch.ones_like(W_hat, dtype=torch.bool), W_hat)
