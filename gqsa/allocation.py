"""Sparsity allocation under a fixed size: OWL-style outlier ratios from calibration data.

Uniform sparsity prunes every linear alike. OWL (Yin et al. 2024, "Outlier Weighed Layerwise
sparsity") measures, on the dense model, how many weights of each layer are outliers of
``|W_ij| * ||X_j||`` (more than ``OUTLIER_M`` times the layer's mean) and gives layers with
more outliers a lower sparsity. Here the ratios are measured block by block on the dense
chain of hidden states (the same one-block-at-a-time walk as the compression, so a model
larger than memory can be measured too) and turned into per-linear sparsities with exactly
the uniform run's number of kept groups:

1. densities ``d_l = (1 - S) + 2 * lam * (u_l - mean_w(u))``, ``u_l`` the ratios scaled to
   [0, 1] and ``mean_w`` weighted by each linear's weight count (``owl``: one ratio per block,
   pooled over its linears; ``owl-linear``: one per linear);
2. each linear keeps ``k_l = round(d_l * groups_per_row)`` groups per row (at least one);
3. single groups per row are moved between linears (from the most rounded-up, to the most
   rounded-down) until the total matches the uniform run's to within one row's step, so
   bits/weight equal the uniform run's to far better than 0.01.

The result is a ``layer_sparsity`` map for :class:`~gqsa.config.GQSAConfig`.

Under a size budget (``GQSAConfig.bits_per_weight``) the kept total of step 3 is the one whose
format-v2 bits hit the budget (:func:`budget_density`) instead of the uniform run's, and the
densities of step 1 centre on its mean; with ``allocation="uniform"`` every score is equal, so
the linears only differ by the single groups step 3 moves. With ``balance="layer"`` the counts
of steps 2 and 3 are a linear's whole groups rather than its groups per row (on SmolLM2 that
was worse than ``row`` at the same budget: docs/oneshot.md).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from tqdm.auto import tqdm

from gqsa.config import GQSAConfig
from gqsa.models import find_blocks, find_linears
from gqsa.pipeline import capture_block_inputs, move_outside, run_block

OUTLIER_M = 5.0  # OWL's M: an outlier is above M times the layer's mean |W| * ||X|| (their LLaMA setting)


def outlier_ratio(weight: torch.Tensor, sq_norm: torch.Tensor, m: float = OUTLIER_M) -> float:
    """Fraction of weights whose ``|W_ij| * ||X_j||`` exceeds ``m`` times the layer's mean.

    Args: weight [N, K] any float dtype; sq_norm [K] float32, sum over tokens of x_j^2.
    """
    a = weight.detach().float().abs() * sq_norm.to(weight.device).float().sqrt().unsqueeze(0)
    return float((a > m * a.mean()).float().mean())


def measure_ratios(model: nn.Module, config: GQSAConfig, calib: torch.Tensor, device: torch.device,
                   batch_size: int = 8, progress: bool = True, blocks_source=None) -> dict[str, tuple[float, int, int, int]]:
    """Outlier ratio of every compressed linear of the dense ``model`` on ``calib``.

    Walks the blocks like :func:`gqsa.pipeline.run_blocks` (each block on ``device`` in turn,
    or materialised from ``blocks_source``), without changing the model.
    Returns ``{full name: (ratio, out_features, in_features, block index)}``.
    """
    home = next(p.device for p in model.parameters() if not p.is_meta)
    blocks_name, blocks = find_blocks(model)
    move_outside(model, blocks, device)
    out: dict[str, tuple[float, int, int, int]] = {}
    with torch.no_grad():
        load = (lambda i: blocks[i].to(device)) if blocks_source is None else (
            lambda i: blocks_source.load(i, blocks[i], device))
        block = load(0)
        hidden, kwargs = capture_block_inputs(model, block, calib, device, batch_size)
        for i in tqdm(range(len(blocks)), desc="gqsa allocation", disable=not progress):
            block = block if i == 0 else load(i)
            linears = {f"{blocks_name}.{i}.{n}": m for n, m in find_linears(block).items()
                       if not config.skips(f"{blocks_name}.{i}.{n}")}
            norms = {n: torch.zeros(m.in_features, device=device) for n, m in linears.items()}
            handles = [m.register_forward_hook(_adder(norms[n])) for n, m in linears.items()]
            try:
                hidden = run_block(block, hidden, kwargs, batch_size)
            finally:
                for h in handles:
                    h.remove()
            for n, m in linears.items():
                out[n] = (outlier_ratio(m.weight, norms[n]), m.out_features, m.in_features, i)
            if blocks_source is None:
                blocks[i].to(home)
            else:
                blocks_source.release(i, blocks[i])
    move_outside(model, blocks, home)
    return out


def _adder(total: torch.Tensor):
    """A forward hook adding the squares of a linear's inputs, per input channel, to ``total`` [K]."""
    def hook(_module, inputs, _output) -> None:
        x = inputs[0].detach().float()
        total.add_(x.pow(2).reshape(-1, x.shape[-1]).sum(0))
    return hook


def allocate(ratios: dict[str, tuple[float, int, int, int]], config: GQSAConfig,
             biased: frozenset[str] = frozenset()) -> dict[str, float]:
    """Per-linear sparsities from outlier ratios (:func:`measure_ratios`): the uniform run's kept
    total, or under ``config.bits_per_weight`` the total that budget allows (``biased``: the
    linears with a bias, which the size counts).

    Returns ``{full name: sparsity}`` with ``sparsity * groups_per_row`` an integer for every linear
    (``balance="layer"``: ``sparsity * groups_of_the_linear``, since its rows may differ).
    """
    names = list(ratios)
    g = config.group_size
    rows = torch.tensor([ratios[n][1] for n in names], dtype=torch.float64)
    groups = torch.tensor([ratios[n][2] // g for n in names], dtype=torch.float64)
    if config.balance == "layer":  # a linear may keep any number of groups: count them whole, a step of one
        rows, groups = torch.ones_like(rows), rows * groups
    weights = rows * groups
    if config.bits_per_weight is None:
        base = 1 - config.sparsity
        target = float((rows * (groups - (config.sparsity * groups).round())).sum())  # as select_groups keeps
    else:
        base = budget_density({n: (*ratios[n][1:3], n in biased) for n in names}, config)
        target = base * float(weights.sum())
    score = _scores(ratios, names, config.allocation, weights)
    u = (score - score.min()) / (score.max() - score.min()).clamp_min(1e-12)
    density = base + 2 * config.allocation_strength * (u - (u * weights).sum() / weights.sum())
    ideal = density.clamp(0.0, 1.0) * groups
    kept = ideal.round().clamp(torch.ones_like(groups), groups)
    kept = _match_total(kept, ideal, rows, groups, target)
    return {n: float((groups[i] - kept[i]) / groups[i]) for i, n in enumerate(names)}


def budget_density(shapes: dict[str, tuple[int, int, bool]], config: GQSAConfig) -> float:
    """Fraction of groups to keep so that linears ``{name: (out, in, has_bias)}`` store
    ``config.bits_per_weight`` bits per weight in format v3: each kept group costs
    ``G*b + 8 + b`` bits (codes, scale code, zero), each group a mask bit, each row an 8-bit factor
    code (and a 16-bit bias) and each layer a 32-bit factor, whatever is kept; the byte padding of
    the mask and zero streams (under a byte per layer) is left out. ValueError when the budget is outside what one kept group per row
    to none pruned can store."""
    g, b = config.group_size, config.bits
    weights = sum(n * k for n, k, _ in shapes.values())
    fixed = sum(n * k / g + 8 * n + 32 + (16 * n if bias else 0) for n, k, bias in shapes.values())
    groups = sum(n * (k // g) for n, k, _ in shapes.values())
    per_group = g * b + 8 + b
    lo = (fixed + per_group * sum(n for n, _, _ in shapes.values())) / weights
    hi = (fixed + per_group * groups) / weights
    if not lo <= config.bits_per_weight <= hi:
        raise ValueError(f"bits_per_weight {config.bits_per_weight} is outside what W{b} G{g} can store here: "
                         f"{lo:.3f} (one group kept per row) to {hi:.3f} (nothing pruned)")
    return (config.bits_per_weight * weights - fixed) / (per_group * groups)


def _scores(ratios, names: list[str], allocation: str, weights: torch.Tensor) -> torch.Tensor:
    """One ratio per linear (``owl-linear``), the weight-pooled ratio of its block (``owl``), or
    zeros (``uniform``: equal densities)."""
    r = torch.tensor([ratios[n][0] for n in names], dtype=torch.float64)
    if allocation == "uniform":
        return torch.zeros_like(r)
    if allocation == "owl-linear":
        return r
    block = torch.tensor([ratios[n][3] for n in names])
    pooled = torch.zeros_like(r)
    for b in block.unique():
        sel = block == b
        pooled[sel] = (r[sel] * weights[sel]).sum() / weights[sel].sum()
    return pooled


def _match_total(kept: torch.Tensor, ideal: torch.Tensor, rows: torch.Tensor, groups: torch.Tensor,
                 target: float) -> torch.Tensor:
    """Move one group per row at a time (a linear's step is its row count) while that brings
    sum(rows * kept) closer to ``target``; each move goes to (or from) the linear whose count is
    furthest below (above) its ideal."""
    kept = kept.clone()
    none = torch.tensor(-1e30, dtype=kept.dtype)
    while True:
        diff = float((rows * kept).sum()) - target
        can = (kept > 1) if diff > 0 else (kept < groups)
        helps = can & (rows < 2 * abs(diff))  # the move shrinks |diff|
        if not bool(helps.any()):
            return kept
        slack = torch.where(helps, (kept - ideal) if diff > 0 else (ideal - kept), none)
        kept[int(slack.argmax())] += -1 if diff > 0 else 1


def with_allocation(model: nn.Module, config: GQSAConfig, calib: torch.Tensor, device: torch.device,
                    batch_size: int = 8, progress: bool = True, blocks_source=None) -> GQSAConfig:
    """``config`` with ``layer_sparsity`` filled in by its allocation (unchanged when given, or when
    uniform without a size budget); under a budget ``sparsity`` becomes the mean sparsity."""
    if config.layer_sparsity is not None or (config.allocation == "uniform" and config.bits_per_weight is None):
        return config
    linears = compressed_linears(model, config)
    if config.allocation == "uniform":  # equal scores: the budget alone decides
        ratios = {n: (0.0, m.out_features, m.in_features, 0) for n, m in linears.items()}
    else:
        ratios = measure_ratios(model, config, calib, device, batch_size, progress, blocks_source)
    biased = frozenset(n for n, m in linears.items() if m.bias is not None)
    sparsity = allocate(ratios, config, biased)
    if config.bits_per_weight is None:
        return dataclasses.replace(config, layer_sparsity=sparsity)
    groups = {n: m.out_features * (m.in_features // config.group_size) for n, m in linears.items()}
    mean = sum(sparsity[n] * groups[n] for n in sparsity) / sum(groups.values())
    return dataclasses.replace(config, layer_sparsity=sparsity, sparsity=mean)


def compressed_linears(model: nn.Module, config: GQSAConfig) -> dict[str, nn.Linear]:
    """The linears of the decoder blocks that ``config`` compresses, by full name (meta tensors
    are fine: only shapes and the presence of a bias are read)."""
    blocks_name, blocks = find_blocks(model)
    return {f"{blocks_name}.{i}.{n}": m for i, block in enumerate(blocks) for n, m in find_linears(block).items()
            if not config.skips(f"{blocks_name}.{i}.{n}")}
