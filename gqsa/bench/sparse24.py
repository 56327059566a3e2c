"""2:4 baselines for the kernel benchmark: Triton decode kernels written like gqsa's own.

Two formats, both keeping 2 of every 4 consecutive input weights:

* ``fp16``: vals [N, K/2] fp16 (kept values in column order) and meta [N, K/32]
  int32; bits [2v, 2v+2) of a meta word give the position (0..3) inside its 4-block of
  kept value v (0..15) of the word's 32 columns.
* ``int4``: the same meta; values as 4-bit codes, 8 per int32 (vq [N, K/16]), code e
  at bits [4e, 4e+4); per 128 columns (64 kept values) one fp16 scale and one fp16
  zero: w = (q - z) * s.

The kernels use gqsa's tile idea (a program owns BLOCK_N rows, walks K in steps,
dequantizes in registers, gathers x by column from cache), so the comparison is
between formats more than kernel-writing effort. They are NOT well tuned: on an H100
they run slower than dense FP16 cuBLAS (docs/engine.md), so speedups over them
overstate; the bytes ratio is the fair yardstick. (A variant reading x densely and
rebuilding each 4-block in registers measured 1.7x slower and was dropped.) Bytes per weight: fp16 1.125,
int4 0.25 + 0.125 + 0.0625 = 0.4375 (vs gqsa W4 G16 at S50: 0.406).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def pack_24(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the 2 largest |w| of each 4-block. Returns (vals [N, K/2], meta [N, K/32] int32, dense 2:4 W)."""
    n, k = w.shape
    if k % 128 != 0:
        raise ValueError(f"K={k} must be a multiple of 128 for the 2:4 baselines")
    blocks = w.reshape(n, k // 4, 4)
    idx = blocks.abs().topk(2, dim=-1).indices.sort(-1).values  # [N, K/4, 2] ascending positions
    vals = blocks.gather(-1, idx).reshape(n, k // 2)
    codes = idx.reshape(n, k // 32, 16).to(torch.int64) << (2 * torch.arange(16, device=w.device))
    meta = codes.sum(-1)
    meta = torch.where(meta >= 2**31, meta - 2**32, meta).to(torch.int32)
    dense = torch.zeros_like(blocks).scatter_(-1, idx, blocks.gather(-1, idx)).reshape(n, k)
    return vals.contiguous(), meta.contiguous(), dense


def quantize_24_int4(vals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """4-bit asymmetric codes of 2:4 values, group of 64 kept values (128 columns).

    Returns (vq [N, K/16] int32, scales [N, K/128] fp16, zeros [N, K/128] fp16, dequantized vals fp32).
    """
    n, half = vals.shape
    g = vals.float().reshape(n, half // 64, 64)
    lo, hi = g.min(-1, keepdim=True).values, g.max(-1, keepdim=True).values
    s = ((hi - lo) / 15).clamp(min=1e-6)
    z = torch.round(-lo / s)
    q = torch.clamp(torch.round(g / s) + z, 0, 15).to(torch.int64)
    deq = ((q - z) * s).reshape(n, half)
    words = (q.reshape(n, half // 8, 8) << (4 * torch.arange(8, device=vals.device))).sum(-1)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return words.contiguous(), s.squeeze(-1).half(), z.squeeze(-1).half(), deq


@triton.jit
def _gemv24_kernel(x_ptr, stride_xb, B, vals_ptr, vq_ptr, meta_ptr, s_ptr, z_ptr, y_ptr, stride_yb, N,
                   K: tl.constexpr, INT4: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_W: tl.constexpr):
    """y[b, rows] for rows [pid*BLOCK_N, ...); K in steps of BLOCK_W meta words (32 columns each)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rok = rows < N
    bidx = tl.arange(0, BLOCK_B)
    h = tl.arange(0, 2)
    e = tl.arange(0, 8)
    v = h[:, None] * 8 + e[None, :]  # kept value index inside a meta word, [2, 8]
    acc = tl.zeros([BLOCK_B, BLOCK_N, BLOCK_W], dtype=tl.float32)
    for w0 in range(0, K // 32, BLOCK_W):
        wi = w0 + tl.arange(0, BLOCK_W)
        m2 = rok[:, None]
        meta = tl.load(meta_ptr + rows[:, None] * (K // 32) + wi[None, :], mask=m2, other=0)
        pos = (meta[:, :, None, None] >> (2 * v)[None, None, :, :]) & 3
        col = wi[None, :, None, None] * 32 + (v // 2)[None, None, :, :] * 4 + pos  # [BN, BW, 2, 8]
        if INT4:
            words = tl.load(vq_ptr + rows[:, None, None] * (K // 16) + wi[None, :, None] * 2 + h[None, None, :],
                            mask=m2[:, :, None], other=0)
            q = ((words[:, :, :, None] >> (4 * e)[None, None, None, :]) & 15).to(tl.float32)
            gi = rows[:, None] * (K // 128) + wi[None, :] // 4
            s = tl.load(s_ptr + gi, mask=m2, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + gi, mask=m2, other=0.0).to(tl.float32)
            wv = (q - z[:, :, None, None]) * s[:, :, None, None]
        else:
            vo = rows[:, None, None, None] * (K // 2) + wi[None, :, None, None] * 16 + v[None, None, :, :]
            wv = tl.load(vals_ptr + vo, mask=m2[:, :, None, None], other=0.0).to(tl.float32)
        xo = bidx[:, None, None, None, None] * stride_xb + col[None, :, :, :, :]
        xv = tl.load(x_ptr + xo, mask=(bidx < B)[:, None, None, None, None], other=0.0).to(tl.float32)
        acc += tl.sum(tl.sum(xv * wv[None, :, :, :, :], axis=4), axis=3)
    out = tl.sum(acc, axis=2)
    tl.store(y_ptr + bidx[:, None] * stride_yb + rows[None, :], out.to(y_ptr.dtype.element_ty),
             mask=(bidx < B)[:, None] & rok[None, :])


def gemv24(x: torch.Tensor, meta: torch.Tensor, vals: torch.Tensor | None = None,
           vq: torch.Tensor | None = None, scales: torch.Tensor | None = None, zeros: torch.Tensor | None = None,
           block_n: int = 4, block_w: int = 8, num_warps: int = 4) -> torch.Tensor:
    """x [B, K] (B <= 16) times a 2:4 weight; pass ``vals`` (fp16) or ``vq, scales, zeros`` (int4)."""
    b, k = x.shape
    if (k // 32) % block_w != 0:
        raise ValueError(f"K/32 = {k // 32} must be a multiple of block_w = {block_w}")
    n = meta.shape[0]
    int4 = vq is not None
    y = torch.empty(b, n, dtype=x.dtype, device=x.device)
    dummy = meta
    grid = (triton.cdiv(n, block_n),)
    _gemv24_kernel[grid](x, x.stride(0), b, vals if vals is not None else dummy, vq if int4 else dummy, meta,
                         scales if int4 else dummy, zeros if int4 else dummy, y, y.stride(0), n, K=k, INT4=int4,
                         BLOCK_B=triton.next_power_of_2(b), BLOCK_N=block_n, BLOCK_W=block_w,
                         num_warps=num_warps)
    return y
