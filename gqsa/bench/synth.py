"""Random packed layers for benchmarks and kernel tests (no compressor involved).

Row patterns of kept-group counts (sparsity S of the whole layer in every case):

* ``uniform``: every row keeps the same number of groups (row-balanced pruning).
* ``layer``: layer-balanced pruning: one threshold over the layer on a saliency
  ``a_r * u`` (row scale a_r ~ lognormal(0, 0.5), u ~ U(0, 1)), so a row keeps
  ``ng * max(0, 1 - t / a_r)`` groups; rows differ moderately and some are empty.
* ``heavy``: heavy-tailed rows: counts proportional to lognormal(0, 1.5) draws,
  capped at the row length, so a few rows are nearly full and many nearly empty.
"""

from __future__ import annotations

import torch

from gqsa.format import TENSOR_NAMES, PackedGQS

PATTERNS = ("uniform", "layer", "heavy")


def _fit_total(weights: torch.Tensor, total: int, cap: int) -> torch.Tensor:
    """Integer counts proportional to ``weights``, each <= cap, summing to ``total``."""
    scale = total / weights.sum()
    for _ in range(50):  # raise the scale until the capped counts reach the total
        c = torch.clamp(weights * scale, max=cap)
        if c.sum() >= total - 0.5:
            break
        scale *= total / c.sum()
    c = torch.clamp(weights * scale, max=cap)
    counts = torch.floor(c).long()
    rest = int(total - counts.sum())
    if rest > 0:  # hand the remainder to the rows with the largest fractional parts and room left
        frac = torch.where(counts < cap, c - counts, torch.full_like(c, -1.0))
        counts[torch.topk(frac, rest).indices] += 1
    return counts


def row_counts(n: int, ng: int, sparsity: float, pattern: str, gen: torch.Generator) -> torch.Tensor:
    """Kept groups of each row [n] int64 for a pattern of :data:`PATTERNS`."""
    total = round((1.0 - sparsity) * n * ng)
    if pattern == "uniform":
        return _fit_total(torch.ones(n, dtype=torch.float64), total, ng)
    if pattern == "layer":
        a = torch.exp(0.5 * torch.randn(n, generator=gen, dtype=torch.float64))
        lo, hi = 0.0, float(a.max())
        for _ in range(60):  # bisect the threshold t of the kept fraction mean(max(0, 1 - t/a))
            t = (lo + hi) / 2
            kept = (ng * torch.clamp(1 - t / a, min=0)).sum()
            lo, hi = (t, hi) if kept > total else (lo, t)
        return _fit_total(torch.clamp(1 - t / a, min=0) + 1e-9, total, ng)
    if pattern == "heavy":
        return _fit_total(torch.exp(1.5 * torch.randn(n, generator=gen, dtype=torch.float64)), total, ng)
    raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")


def random_packed(n: int, k: int, group_size: int = 16, bits: int = 4, sparsity: float = 0.5,
                  pattern: str = "uniform", device: str | torch.device = "cpu", seed: int = 0) -> PackedGQS:
    """A valid packed layer [n, k] on ``device``: random codes, scales in [0.005, 0.025), zeros."""
    gen = torch.Generator().manual_seed(seed)
    dgen = torch.Generator(device=device).manual_seed(seed)
    ng = k // group_size
    counts = row_counts(n, ng, sparsity, pattern, gen).to(device)
    order = torch.rand(n, ng, generator=dgen, device=device).argsort(1)
    keep = torch.zeros(n, ng, dtype=torch.bool, device=device)
    keep.scatter_(1, order, torch.arange(ng, device=device).expand(n, ng) < counts[:, None])
    col = keep.nonzero()[:, 1]
    nnz = col.numel()
    row_ptr = torch.zeros(n + 1, dtype=torch.int32, device=device)
    row_ptr[1:] = torch.cumsum(counts, 0).to(torch.int32)
    return PackedGQS(
        codes=torch.randint(0, 256, (nnz, group_size * bits // 8), generator=dgen, dtype=torch.uint8, device=device),
        col_idx=col.to(torch.int16), row_ptr=row_ptr,
        scales=(torch.rand(nnz, generator=dgen, device=device) * 0.02 + 0.005).to(torch.float16),
        zeros=torch.randint(0, 2 ** bits, (nnz,), generator=dgen, dtype=torch.uint8, device=device),
        out_features=n, in_features=k, group_size=group_size, bits=bits)


def to_device(p: PackedGQS, device: str | torch.device) -> PackedGQS:
    """The same layer with its tensors on ``device``."""
    moved = {name: getattr(p, name).to(device) for name in TENSOR_NAMES}
    return PackedGQS(**moved, out_features=p.out_features, in_features=p.in_features,
                     group_size=p.group_size, bits=p.bits)
