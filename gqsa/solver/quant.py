"""Asymmetric/symmetric uniform quantization grid of one group (scale, integer zero point).

A weight w maps to the code q = clamp(round(w / s) + z, 0, 2^b - 1) and back to (q - z) * s.
Scales are rounded to float16 here, since that is what the packed format stores: the
solver must compensate the error of the weights that will actually be used.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

CLIP_GRID = torch.linspace(1.0, 0.70, 16).tolist()


def minmax_params(w: torch.Tensor, bits: int, sym: bool, shrink: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point [R] of each row of w [R, G] from its (shrunk) range."""
    scale, zero = minmax_params_batched(w, bits, sym, _shrinks((shrink,), w.dtype, w.device))
    return scale.squeeze(1), zero.squeeze(1)


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes of w [R, C] for per-row scale/zero [R] (as float tensor of integers)."""
    maxq = (1 << bits) - 1
    return torch.clamp(torch.round(w / scale.unsqueeze(1)) + zero.unsqueeze(1), 0, maxq)


def dequantize_codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """(q - z) * s for codes q [R, C] and per-row scale/zero [R]."""
    return (q - zero.unsqueeze(1)) * scale.unsqueeze(1)


def group_params(w: torch.Tensor, bits: int, sym: bool, clip_search: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale/zero [R] for each row of w [R, G]; with clip_search, the range shrink in
    CLIP_GRID that gives the smallest squared rounding error of that row (the first such
    shrink on ties). On a GPU all shrinks are tried in one batch (:func:`clip_search_batched`:
    a few kernel launches per group instead of a few per shrink); on the CPU one shrink at a
    time (:func:`clip_search_loop`, faster there). Both give the same values."""
    if not clip_search:
        return minmax_params(w, bits, sym)
    return (clip_search_batched if w.is_cuda else clip_search_loop)(w, bits, sym)


def clip_search_loop(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The clip search of :func:`group_params`, one shrink after another."""
    scale, zero = minmax_params(w, bits, sym)
    best = (dequantize_codes(quantize(w, scale, zero, bits), scale, zero) - w).pow(2).sum(1)
    for shrink in CLIP_GRID[1:]:
        s, z = minmax_params(w, bits, sym, shrink)
        err = (dequantize_codes(quantize(w, s, z, bits), s, z) - w).pow(2).sum(1)
        better = err < best
        scale, zero, best = torch.where(better, s, scale), torch.where(better, z, zero), torch.minimum(err, best)
    return scale, zero


CLIP_CHUNK_ELEMENTS = 1 << 25  # rows x shrinks x G per batch of the clip search (128 MiB float32 tensors)


def clip_search_batched(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The clip search of :func:`group_params` with every shrink at once ([R, S, G] tensors),
    in batches of rows so that no temporary exceeds :data:`CLIP_CHUNK_ELEMENTS` elements (the
    whole of a 70B down_proj at once would need 15 GB per temporary). Rows are independent, so
    the batches change no value."""
    shrink = _shrinks(tuple(CLIP_GRID), w.dtype, w.device)
    rows = max(1, CLIP_CHUNK_ELEMENTS // (shrink.numel() * max(1, w.shape[1])))
    if w.shape[0] <= rows:
        return _clip_search_rows(w, bits, sym, shrink)
    parts = [_clip_search_rows(w[r:r + rows], bits, sym, shrink) for r in range(0, w.shape[0], rows)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _clip_search_rows(w: torch.Tensor, bits: int, sym: bool, shrink: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    wg = w.unsqueeze(1).expand(-1, shrink.numel(), -1)
    scale, zero = minmax_params_batched(w, bits, sym, shrink)  # [R, S]
    q = torch.clamp(torch.round(wg / scale.unsqueeze(-1)) + zero.unsqueeze(-1), 0, (1 << bits) - 1)
    err = ((q - zero.unsqueeze(-1)) * scale.unsqueeze(-1) - wg).pow(2).sum(-1)  # [R, S]
    best = err.argmin(1, keepdim=True)  # the first minimum, as the loop's strict < keeps
    return scale.gather(1, best).squeeze(1), zero.gather(1, best).squeeze(1)


@functools.lru_cache(maxsize=64)
def _shrinks(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Range shrinks [S] on ``device``, made once per value set: a host-to-device copy cannot
    happen inside the solver's CUDA graphs (gqsa.solver.sweep), so the eager warm-up block makes it."""
    return torch.tensor(values, dtype=dtype, device=device)


def minmax_params_batched(w: torch.Tensor, bits: int, sym: bool, shrink: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each row of w [R, G] from its range shrunk by each of ``shrink``
    [S]: [R, S] each (float16-rounded scales, integer zeros; a flat row gets the range [-1, 1])."""
    maxq = (1 << bits) - 1
    lo = torch.clamp(w.min(1).values, max=0).unsqueeze(1) * shrink
    hi = torch.clamp(w.max(1).values, min=0).unsqueeze(1) * shrink
    if sym:
        hi = torch.maximum(lo.abs(), hi)
        lo = -hi
    flat = hi == lo
    lo, hi = torch.where(flat, -torch.ones_like(lo), lo), torch.where(flat, torch.ones_like(hi), hi)
    scale = ((hi - lo) / maxq).to(torch.float16).float().clamp_min(1e-7)
    zero = torch.full_like(scale, (maxq + 1) // 2) if sym else torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero


def rtn_quantize(W: torch.Tensor, bits: int, group_size: int, sym: bool = False, clip_search: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest of W [N, K] per group of ``group_size`` columns (the last may be shorter).

    Returns codes [N, K] (float of ints in [0, 2^bits)), scales and zeros [N, ceil(K/G)] and
    the dequantized weight [N, K] float32. A short last group is padded with zeros, which
    leaves its min-max range unchanged (the range always includes 0).
    """
    n, k = W.shape
    ng = -(-k // group_size)
    s, z = group_params(_padded_groups(W, group_size), bits, sym, clip_search)
    s, z = s.reshape(n, ng), z.reshape(n, ng)
    q, dq = grid_quantize(W, s, z, bits, group_size)
    return q, s, z, dq


def grid_quantize(W: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, group_size: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Round W [N, K] to the given grids, scales and zeros [N, ceil(K/G)] float; returns the codes
    and the dequantized weight, both [N, K] float32."""
    n, k = W.shape
    s, z = scales.reshape(-1), zeros.reshape(-1)
    q = quantize(_padded_groups(W, group_size), s, z, bits)
    dq = dequantize_codes(q, s, z)
    crop = lambda t: t.reshape(n, -1)[:, :k]  # noqa: E731
    return crop(q), crop(dq)


def _padded_groups(W: torch.Tensor, group_size: int) -> torch.Tensor:
    """W [N, K] -> float32 [N * ceil(K/G), G], the short last group of each row padded with zeros."""
    n, k = W.shape
    ng = -(-k // group_size)
    return F.pad(W.float(), (0, ng * group_size - k)).reshape(n * ng, group_size)
