"""One layer, end to end: Hessian -> group scores -> mask -> joint prune + quantize."""

from __future__ import annotations

import torch

from gqsa.config import GQSAConfig
from gqsa.solver.hessian import (
    HessianAccumulator,
    damped_inverse,
    dead_inputs,
    inverse_cholesky_upper,
)
from gqsa.solver.prune_quant import LayerResult, prune_quantize, prune_quantize_act_order, round_to_nearest
from gqsa.solver.saliency import (
    magnitude_group_scores,
    obs_group_scores,
    protect_scores,
    protected_groups,
    select_groups,
    wanda_group_scores,
)


def choose_mask(W: torch.Tensor, acc: HessianAccumulator, Hinv: torch.Tensor, config: GQSAConfig,
                protect: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-mask [N, K/G] from the configured saliency and balance; ``protect`` [K/G] groups first."""
    if config.saliency == "obs":
        scores = obs_group_scores(W, Hinv, config.group_size)
    else:
        scores = wanda_group_scores(W, acc.sq_norm, config.group_size)
    return select_groups(protect_scores(scores, protect), config.sparsity, config.balance)


def protection(acc: HessianAccumulator, config: GQSAConfig) -> torch.Tensor | None:
    """The groups [K/G] bool that ``config.protect_ratio`` keeps in every row, or None when off."""
    if not config.protect_ratio:
        return None
    return protected_groups(acc.sq_norm, acc.n, config.protect_ratio, config.group_size)


def solve_layer(weight: torch.Tensor, acc: HessianAccumulator, config: GQSAConfig) -> LayerResult:
    """Compress one weight [N, K] given its accumulated calibration Hessian.

    Inputs that were always zero on the calibration data get weight 0 (they cannot
    contribute), as in GPTQ. Runs in float32 on the Hessian's device.
    """
    W = weight.detach().to(acc.H.device, torch.float32).clone()
    W[:, dead_inputs(acc.H)] = 0
    Hinv = damped_inverse(acc.H, config.damp)
    adaptive = config.mask == "adaptive"
    protect = protection(acc, config)
    keep = None if adaptive else choose_mask(W, acc, Hinv, config, protect)
    if config.act_order:
        del Hinv  # act-order inverts the permuted H itself: free this K x K float32 first (3.3 GB at K = 28,672)
        res = prune_quantize_act_order(W, acc.H, keep, config.group_size, config.bits, config.damp, config.sym,
                                       config.clip_search, config.block_size, config.act_order_grids)
    else:
        res = prune_quantize(W, inverse_cholesky_upper(Hinv), keep, config.group_size, config.bits, config.sym,
                             config.clip_search, config.block_size, sparsity=config.sparsity if adaptive else None,
                             protect=protect)
    res.protected = 0 if protect is None else int(protect.sum())
    return res


def solve_layer_naive(weight: torch.Tensor, acc: HessianAccumulator, config: GQSAConfig) -> LayerResult:
    """The naive counterpart at the same settings: magnitude group pruning + round-to-nearest.

    It ignores the calibration Hessian (``acc`` is only there for the common signature).
    """
    W = weight.detach().to(acc.H.device, torch.float32)
    keep = select_groups(magnitude_group_scores(W, config.group_size), config.sparsity, config.balance)
    return round_to_nearest(W, keep, config.group_size, config.bits, config.sym, config.clip_search)
