"""Prefill kernels: ``y = x W^T + b`` for many activation rows (M >= 32 or so).

With many rows the product is bound by arithmetic, not by reading the weight, so the
weight should reach the tensor cores. Two ways, chosen in :mod:`gqsa.kernels.dispatch`
by the measured crossover (docs/engine.md):

* ``dense``: :func:`dequantize_dense` writes the dense weight W [N, K] (pruned groups
  as zeros) with one Triton kernel, then cuBLAS runs ``F.linear``. Costs one extra
  write and read of the dense weight; wins once M is large enough to hide it.
* ``triton``: :func:`gqs_gemm` dequantizes a [BLOCK_N, BLOCK_K] tile of W into
  registers and feeds ``tl.dot`` directly; the dense weight never exists in memory.

Both find kept groups through the plan's bitmask (:mod:`gqsa.kernels.plan`): the
CSR index of group column c of row r is
``mask_prefix[r, c//32] + popcount(mask_words[r, c//32] & ((1 << c%32) - 1))``.

Shapes: x [M, K] fp16/bf16, packed tensors as in :mod:`gqsa.format`, bias [N] or
none, y [M, N] in x's dtype; dense W [N, K] in x's dtype. Accumulation is float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from gqsa.format import PackedGQS
from gqsa.kernels.jit import (
    INTERPRET,
    dense_from_idx,
    dot_tile,
    groups_per_step,
    layout_meta,
    num_sms,
    popc32,
)
from gqsa.kernels.plan import KernelPlan


@dataclass(frozen=True)
class GemmConfig:
    """Tile of the Triton sparse GEMM."""

    block_m: int = 64
    block_n: int = 128
    block_k: int = 0  # input columns per step; 0: see gemm_block_kg
    num_warps: int = 4
    num_stages: int = 3
    split_k: int = 0  # 0: enough splits of K for ~4 programs per multiprocessor


@triton.jit
def _dense_tile(codes_ptr, scale_ptr, zero_ptr, words_ptr, prefix_ptr, r0, c0, N, NG, NW,
                BITS: tl.constexpr, BPG: tl.constexpr, UNIT_BITS: tl.constexpr, W: tl.constexpr,
                P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KG: tl.constexpr):
    """Dense weight tile [BLOCK_N, BLOCK_KG*G] fp32 of rows r0.., group columns c0.. (0 where pruned)."""
    L: tl.constexpr = BLOCK_N * BLOCK_KG
    lane = tl.arange(0, L)
    row = r0 + lane // BLOCK_KG
    cg = c0 + lane % BLOCK_KG
    inside = (row < N) & (cg < NG)
    word = tl.load(words_ptr + row * NW + cg // 32, mask=inside, other=0).to(tl.uint32, bitcast=True)
    bit = (cg % 32).to(tl.uint32)
    kept = inside & (((word >> bit) & 1) != 0)
    below = word & ((tl.full([L], 1, tl.uint32) << bit) - 1)
    idx = tl.load(prefix_ptr + row * NW + cg // 32, mask=inside, other=0) + popc32(below).to(tl.int32)
    idx = tl.where(kept, idx, 0)
    return dense_from_idx(codes_ptr, scale_ptr, zero_ptr, idx, kept, BITS, BPG, UNIT_BITS, W, P, BLOCK_N,
                          BLOCK_KG)


@triton.jit
def _gemm_step(acc, c0, x_ptr, stride_xm, ms, M, K, codes_ptr, scale_ptr, zero_ptr, words_ptr, prefix_ptr, r0,
               N, NG, NW, G: tl.constexpr, BITS: tl.constexpr, BPG: tl.constexpr, UNIT_BITS: tl.constexpr,
               W: tl.constexpr, P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KG: tl.constexpr,
               DOT_F32: tl.constexpr):
    """acc [BLOCK_M, BLOCK_N] += x[:, c0*G : (c0+BLOCK_KG)*G] @ W tile^T."""
    w = _dense_tile(codes_ptr, scale_ptr, zero_ptr, words_ptr, prefix_ptr, r0, c0, N, NG, NW,
                    BITS, BPG, UNIT_BITS, W, P, BLOCK_N, BLOCK_KG)
    return dot_tile(acc, w, x_ptr, stride_xm, ms, M, K, c0, G, BLOCK_KG, DOT_F32)


@triton.jit
def _gemm_kernel(x_ptr, stride_xm, M, K, codes_ptr, scale_ptr, zero_ptr, words_ptr, prefix_ptr, N, NG, NW,
                 bias_ptr, y_ptr, y32_ptr, stride_ym, CG,
                 HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, G: tl.constexpr, BITS: tl.constexpr,
                 BPG: tl.constexpr, UNIT_BITS: tl.constexpr, W: tl.constexpr, P: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KG: tl.constexpr, INTERP: tl.constexpr):
    """y tile [BLOCK_M, BLOCK_N] (+)= x tile @ dequantized W tile^T over group columns [kz*CG, (kz+1)*CG).

    With SPLIT, the K range is cut over program axis 2 and partial tiles are added
    into the float32 y32 (zeroed by the host, which casts and adds the bias after).
    """
    r0 = tl.program_id(0) * BLOCK_N
    ms = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    c_lo = tl.program_id(1) * CG
    c_hi = tl.minimum(c_lo + CG, NG)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if INTERP:  # the interpreter cannot take a tensor as a range bound
        c0 = c_lo
        while c0 < c_hi:
            acc = _gemm_step(acc, c0, x_ptr, stride_xm, ms, M, K, codes_ptr, scale_ptr, zero_ptr, words_ptr,
                             prefix_ptr, r0, N, NG, NW, G, BITS, BPG, UNIT_BITS, W, P, BLOCK_N, BLOCK_KG, True)
            c0 += BLOCK_KG
    else:
        for c0 in range(c_lo, c_hi, BLOCK_KG):
            acc = _gemm_step(acc, c0, x_ptr, stride_xm, ms, M, K, codes_ptr, scale_ptr, zero_ptr, words_ptr,
                             prefix_ptr, r0, N, NG, NW, G, BITS, BPG, UNIT_BITS, W, P, BLOCK_N, BLOCK_KG, False)
    ns = r0 + tl.arange(0, BLOCK_N)
    m = (ms < M)[:, None] & (ns < N)[None, :]
    offs = ms[:, None] * stride_ym + ns[None, :]
    if SPLIT:
        tl.atomic_add(y32_ptr + offs, acc, mask=m)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + ns, mask=ns < N, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _dequant_kernel(codes_ptr, scale_ptr, zero_ptr, words_ptr, prefix_ptr, N, NG, NW, K, out_ptr,
                    G: tl.constexpr, BITS: tl.constexpr, BPG: tl.constexpr, UNIT_BITS: tl.constexpr,
                    W: tl.constexpr, P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KG: tl.constexpr):
    """Write the dense tile of rows [r0, r0+BLOCK_N), group columns [c0, c0+BLOCK_KG) of W."""
    r0 = tl.program_id(0) * BLOCK_N
    c0 = tl.program_id(1) * BLOCK_KG
    w = _dense_tile(codes_ptr, scale_ptr, zero_ptr, words_ptr, prefix_ptr, r0, c0, N, NG, NW,
                    BITS, BPG, UNIT_BITS, W, P, BLOCK_N, BLOCK_KG)
    ns = r0 + tl.arange(0, BLOCK_N)
    ks = c0 * G + tl.arange(0, BLOCK_KG * G)
    tl.store(out_ptr + ns[:, None] * K + ks[None, :], w.to(out_ptr.dtype.element_ty),
             mask=(ns < N)[:, None] & (ks < K)[None, :])


def dequantize_dense(p: PackedGQS, plan: KernelPlan, dtype: torch.dtype) -> torch.Tensor:
    """Dense weight [N, K] in ``dtype`` (pruned groups 0), written by one Triton kernel."""
    n, k, g = p.out_features, p.in_features, p.group_size
    ng = k // g
    out = torch.empty(n, k, dtype=dtype, device=p.codes.device)
    block_kg = max(1, 128 // g)
    grid = (triton.cdiv(n, 32), triton.cdiv(ng, block_kg))
    _dequant_kernel[grid](p.codes, p.scales, p.zeros, plan.mask_words, plan.mask_prefix, n, ng,
                          plan.mask_words.shape[1], k, out, BLOCK_N=32, BLOCK_KG=block_kg, num_warps=4,
                          **layout_meta(p.group_size, p.bits))
    return out


def gqs_dense_linear(x: torch.Tensor, p: PackedGQS, bias: torch.Tensor | None, plan: KernelPlan) -> torch.Tensor:
    """Prefill through a dense weight: dequantize (Triton), then cuBLAS ``F.linear``."""
    return F.linear(x, dequantize_dense(p, plan, x.dtype), bias)


def split_k_for(n_tiles: int, steps: int, programs: int) -> int:
    """Splits of K so that about ``programs`` programs run, each at least 2 K steps."""
    return max(1, min(steps // 2, programs // max(1, n_tiles)))


def gemm_block_kg(cfg: GemmConfig, group_size: int) -> int:
    """Groups per K step of the GEMM: by default four (as the small-batch kernel, whose H100
    sweep found four fastest at every G) but at most 128 input columns, so that three pipeline
    stages of a 64 x 128 tile fit in an H100's shared memory."""
    return groups_per_step(cfg.block_k, group_size, max(1, min(4, 128 // group_size)))


def gqs_gemm(x: torch.Tensor, p: PackedGQS, bias: torch.Tensor | None, plan: KernelPlan,
             config: GemmConfig | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Sparse GEMM on the tensor cores; x [M, K] fp16/bf16, y [M, N] (or into ``out``).

    ``config.split_k`` 0 picks the split from the device's multiprocessor count.
    """
    if x.dim() != 2 or x.shape[1] != p.in_features:
        raise ValueError(f"x must be [M, {p.in_features}], got {tuple(x.shape)}")
    cfg = config or GemmConfig()
    x = x.contiguous()
    m, n, k, g = x.shape[0], p.out_features, p.in_features, p.group_size
    ng, block_kg = k // g, gemm_block_kg(cfg, g)
    y = torch.empty(m, n, dtype=x.dtype, device=x.device) if out is None else out
    if y.shape != (m, n) or y.dtype != x.dtype or not y.is_contiguous():
        raise ValueError(f"out must be a contiguous [{m}, {n}] {x.dtype} tensor")
    tiles = triton.cdiv(n, cfg.block_n) * triton.cdiv(m, cfg.block_m)
    steps = triton.cdiv(ng, block_kg)
    split = cfg.split_k or split_k_for(tiles, steps, 4 * num_sms(x.device))
    cg = triton.cdiv(steps, split) * block_kg
    split = triton.cdiv(ng, cg)
    y32 = torch.zeros(m, n, dtype=torch.float32, device=x.device) if split > 1 else y
    grid = (triton.cdiv(n, cfg.block_n), split, triton.cdiv(m, cfg.block_m))
    _gemm_kernel[grid](x, x.stride(0), m, k, p.codes, p.scales, p.zeros, plan.mask_words, plan.mask_prefix,
                       n, ng, plan.mask_words.shape[1], bias if bias is not None else y, y, y32, y.stride(0), cg,
                       HAS_BIAS=bias is not None, SPLIT=split > 1, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                       BLOCK_KG=block_kg, INTERP=INTERPRET, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                       **layout_meta(p.group_size, p.bits))
    if split > 1:
        y.copy_(y32 if bias is None else y32 + bias.float())
    return y

