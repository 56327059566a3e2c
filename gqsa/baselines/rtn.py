"""Round-to-nearest (RTN): per-group min-max quantization with no calibration data.

The naive baseline of GPTQ (Frantar et al. 2022, sec. 5): each group of ``group_size``
consecutive input weights of a row gets its own scale and zero point from its min and max
(the grid always includes 0, as in the GPTQ quantizer), and every weight is rounded to the
nearest grid point.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gqsa.baselines.config import BaselineConfig
from gqsa.solver.prune_quant import LayerResult
from gqsa.solver.quant import dequantize_codes, group_params, quantize


def rtn_quantize(W: torch.Tensor, bits: int, group_size: int, sym: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize W [N, K] per group of ``group_size`` columns (the last group may be shorter).

    Returns codes [N, K] (float of ints in [0, 2^bits)), scales and zeros [N, ceil(K/G)]
    and the dequantized weight [N, K] float32. The short last group is padded with zeros,
    which leaves its min-max range unchanged (the range always includes 0).
    """
    n, k = W.shape
    ng = -(-k // group_size)
    Wp = F.pad(W.float(), (0, ng * group_size - k)).reshape(n * ng, group_size)
    s, z = group_params(Wp, bits, sym, clip_search=False)
    q = quantize(Wp, s, z, bits)
    dq = dequantize_codes(q, s, z)
    crop = lambda t: t.reshape(n, ng * group_size)[:, :k]  # noqa: E731
    return crop(q), s.reshape(n, ng), z.reshape(n, ng), crop(dq)


def rtn_layer(weight: torch.Tensor, acc, cfg: BaselineConfig) -> LayerResult:
    """RTN of one weight [N, K]; ``acc`` (the calibration Hessian) is not used.

    Same signature as the other per-layer solvers, so the pipeline can run it.
    """
    codes, s, z, W_hat = rtn_quantize(weight.detach(), cfg.bits, cfg.group_size, cfg.sym)
    return LayerResult(codes, s, z, torch.ones_like(W_hat, dtype=torch.bool), W_hat)
