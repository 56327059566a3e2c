"""Small-batch kernel: ``y = x W^T + b`` on the tensor cores for a few activation rows (M <= 32).

Between batch-1 decode (CUDA cores, :mod:`gqsa.kernels.gemv`) and prefill
(:mod:`gqsa.kernels.gemm`), a layer still reads every packed byte once but each
weight now feeds several rows: enough arithmetic that the CUDA-core decode kernel
becomes issue-bound, too little for the prefill GEMM's long K loop to hide its
latency. This kernel keeps the tensor-core product of the prefill GEMM (a dense
[BLOCK_N, BLOCK_KG*G] weight tile rebuilt in registers, pruned groups as zeros, fed to
``tl.dot``) and removes the two things that made that GEMM slow at small M:

* **No dependent metadata load per K step.** A program loads the kept-group bitmask
  words and their CSR prefixes of all its rows and its whole K range once, up front
  (``[BLOCK_N, NWB]`` int32 each, a few registers per thread). Each step then finds its
  groups' CSR indices from registers (select the word, popcount the bits below), so
  the only loads inside the loop are the codes, scales and zeros themselves, which do
  not depend on an earlier load of the same step.
* **One launch.** K is split over program axis 1 so that enough programs run and none
  walks more than ``SmallMConfig.max_k`` input columns (512: one bitmask word at G = 16;
  longer walks measured slower); each
  split writes its fp32 partial tile to a scratch buffer, bumps the tile's arrival
  counter, and the last to arrive sums the partials, adds the bias, casts, stores and
  re-zeroes the counter (the plan's ``fix_cnt``, zero between calls). No zero-fill or
  cast kernels around it.

Measured on an H100 (docs/engine.md §5.2-5.3, S50 W4 G16): flat at ~15 us on 4096x4096 from
M = 3 to 16 (split-K GEMM 23-24 us, FP16 cuBLAS 14-17 us), FP16 parity at batch 16 over 15
layer shapes. Carrying each step's loads one step ahead (software prefetch by hand) made it
slower (24 us), so the loop is plain. The dispatcher uses it for M = 3..32.

Shapes: x [M, K] fp16/bf16 (M <= BLOCK_M, at most 32), packed tensors as in
:mod:`gqsa.format`, plan bitmask as in :mod:`gqsa.kernels.plan`, y [M, N] in x's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
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

MAX_M = 32


@dataclass(frozen=True)
class SmallMConfig:
    """Tile of the small-batch kernel. K is split so that about ``programs_per_sm`` programs
    run per multiprocessor, and further so that no program walks more than ``max_k`` input
    columns (0: no cap; a power of two of at least ``block_k``): long K loops measured slow
    (H100, docs/engine.md §5.3). A split is a whole bitmask word (32 groups) or, when
    ``max_k / G`` is under 32, an aligned power-of-two part of one."""

    block_n: int = 32
    block_k: int = 0  # input columns per step; 0: four groups (4 * G)
    num_warps: int = 4
    num_stages: int = 1
    programs_per_sm: int = 8
    max_k: int = 512


@triton.jit
def _step_idx(words, prefix, jw, w_lo, rows_ok, c0, NG, BLOCK_N: tl.constexpr, BLOCK_KG: tl.constexpr):
    """CSR index [L] and kept flag [L] of the lanes (row, c0 + g), row-major, from the preloaded bitmask.

    Select the step's word of each row (registers), popcount the bits below each
    lane's column and add the word's prefix; no memory access.
    """
    sel = jw[None, :] == c0 // 32 - w_lo
    word = tl.sum(tl.where(sel, words, 0), axis=1).to(tl.uint32, bitcast=True)
    pre = tl.sum(tl.where(sel, prefix, 0), axis=1)
    cg = c0 + tl.arange(0, BLOCK_KG)
    bit = (cg % 32).to(tl.uint32)
    w2 = word[:, None] + tl.zeros([BLOCK_N, BLOCK_KG], dtype=tl.uint32)
    kept = (((w2 >> bit[None, :]) & 1) != 0) & rows_ok[:, None] & (cg < NG)[None, :]
    below = w2 & ((tl.full([BLOCK_N, BLOCK_KG], 1, tl.uint32) << bit[None, :]) - 1)
    idx = pre[:, None] + popc32(below).to(tl.int32)
    L: tl.constexpr = BLOCK_N * BLOCK_KG
    return tl.reshape(tl.where(kept, idx, 0), [L]), tl.reshape(kept, [L])


@triton.jit
def _step(acc, c0, x_ptr, stride_xm, ms, M, K, codes_ptr, scale_ptr, zero_ptr, words, prefix, jw, w_lo, rows_ok,
          NG, G: tl.constexpr, BITS: tl.constexpr, BPG: tl.constexpr, UNIT_BITS: tl.constexpr, W: tl.constexpr,
          P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KG: tl.constexpr, DOT_F32: tl.constexpr):
    """acc [BLOCK_M, BLOCK_N] += x[:, c0*G : (c0+BLOCK_KG)*G] @ (dequantized tile)^T."""
    idx, kept = _step_idx(words, prefix, jw, w_lo, rows_ok, c0, NG, BLOCK_N, BLOCK_KG)
    w = dense_from_idx(codes_ptr, scale_ptr, zero_ptr, idx, kept, BITS, BPG, UNIT_BITS, W, P, BLOCK_N, BLOCK_KG)
    return dot_tile(acc, w, x_ptr, stride_xm, ms, M, K, c0, G, BLOCK_KG, DOT_F32)


@triton.jit
def _smallm_kernel(x_ptr, stride_xm, M, K, codes_ptr, scale_ptr, zero_ptr, words_ptr, prefix_ptr, N, NG, NW,
                   bias_ptr, y_ptr, stride_ym, ws_ptr, cnt_ptr, CG,
                   HAS_BIAS: tl.constexpr, G: tl.constexpr, BITS: tl.constexpr, BPG: tl.constexpr,
                   UNIT_BITS: tl.constexpr, W: tl.constexpr, P: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_KG: tl.constexpr, NWB: tl.constexpr, INTERP: tl.constexpr,
                   SPLIT: tl.constexpr):
    """Rows [pid0*BLOCK_N, +BLOCK_N) over group columns [pid1*CG, +CG); CG is a multiple of 32 or divides it."""
    pid_n = tl.program_id(0)
    kz = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_ok = rows < N
    c_lo = kz * CG
    c_hi = tl.minimum(c_lo + CG, NG)
    jw = tl.arange(0, NWB)
    w_lo = c_lo // 32
    wm = rows_ok[:, None] & (w_lo + jw < NW)[None, :]
    woff = rows[:, None] * NW + w_lo + jw[None, :]
    words = tl.load(words_ptr + woff, mask=wm, other=0)
    prefix = tl.load(prefix_ptr + woff, mask=wm, other=0)
    ms = tl.arange(0, BLOCK_M)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if INTERP:  # the interpreter cannot take a tensor as a range bound
        c0 = c_lo
        while c0 < c_hi:
            acc = _step(acc, c0, x_ptr, stride_xm, ms, M, K, codes_ptr, scale_ptr, zero_ptr, words, prefix, jw,
                        w_lo, rows_ok, NG, G, BITS, BPG, UNIT_BITS, W, P, BLOCK_N, BLOCK_KG, True)
            c0 += BLOCK_KG
    else:
        for c0 in range(c_lo, c_hi, BLOCK_KG):
            acc = _step(acc, c0, x_ptr, stride_xm, ms, M, K, codes_ptr, scale_ptr, zero_ptr, words, prefix, jw,
                        w_lo, rows_ok, NG, G, BITS, BPG, UNIT_BITS, W, P, BLOCK_N, BLOCK_KG, False)
    out_m = (ms < M)[:, None] & rows_ok[None, :]
    if SPLIT > 1:
        tile = ms[:, None] * N + rows[None, :]
        tl.store(ws_ptr + kz * BLOCK_M * N + tile, acc, mask=out_m)
        tl.debug_barrier()  # every thread's partial is written before the counter says so
        arrived = tl.atomic_add(cnt_ptr + pid_n, 1)
        if arrived == SPLIT - 1:  # last split of this tile: reduce, finish, re-arm the counter
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for sp in tl.static_range(SPLIT):
                acc += tl.load(ws_ptr + sp * BLOCK_M * N + tile, mask=out_m, other=0.0, cache_modifier=".cg")
            tl.store(cnt_ptr + pid_n, 0)
            _store_tile(acc, ms, rows, rows_ok, out_m, y_ptr, stride_ym, bias_ptr, HAS_BIAS)
    else:
        _store_tile(acc, ms, rows, rows_ok, out_m, y_ptr, stride_ym, bias_ptr, HAS_BIAS)


@triton.jit
def _store_tile(acc, ms, rows, rows_ok, out_m, y_ptr, stride_ym, bias_ptr, HAS_BIAS: tl.constexpr):
    """y[ms, rows] = acc (+ bias[rows]) in y's dtype."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=rows_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + ms[:, None] * stride_ym + rows[None, :], acc.to(y_ptr.dtype.element_ty), mask=out_m)


def default_config(group_size: int) -> SmallMConfig:
    """The tile for G (H100 sweep, docs/engine.md §5.7): four groups per step at every G; groups
    of 64-128 weights take 64-row tiles and up to 1,024 input columns per program (G = 128,
    11008x4096, M = 16: 58 -> 44 us), smaller groups 32-row tiles and 512 columns."""
    return SmallMConfig(block_n=64, max_k=1024) if group_size >= 64 else SmallMConfig()


def split_for(n_tiles: int, ng: int, programs: int, max_groups: int = 0) -> tuple[int, int]:
    """(splits, group columns per split): about ``programs`` programs, each split at most
    ``max_groups`` columns (0: no cap) and a whole number of units of ``min(32, max_groups)``
    columns (a 32-group bitmask word or an aligned part of one; ``max_groups`` is a multiple
    of 32 or a power of two below it)."""
    unit = min(32, max_groups) if max_groups else 32
    units = triton.cdiv(ng, unit)
    split = max(1, min(units, programs // max(1, n_tiles)))
    cg = triton.cdiv(units, split) * unit
    if max_groups:
        cg = min(cg, max_groups)
    return triton.cdiv(ng, cg), cg


def cap_groups(cfg: SmallMConfig, group_size: int, block_kg: int) -> int:
    """Group columns one program may walk (0: no cap), from ``cfg.max_k``; checks the cap."""
    if not cfg.max_k:
        return 0
    if cfg.max_k & (cfg.max_k - 1):
        raise ValueError(f"max_k must be a power of two, got {cfg.max_k}")
    return max(block_kg, cfg.max_k // group_size)


def gqs_smallm(x: torch.Tensor, p: PackedGQS, bias: torch.Tensor | None, plan: KernelPlan,
               config: SmallMConfig | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x W^T + b`` for x [M, K] with M <= 32 on the tensor cores; y [M, N] (or into ``out``)."""
    if x.dim() != 2 or x.shape[1] != p.in_features or x.shape[0] > MAX_M:
        raise ValueError(f"x must be [M <= {MAX_M}, {p.in_features}], got {tuple(x.shape)}")
    m, k = x.shape
    cfg = config or default_config(p.group_size)
    x = x.contiguous()
    n, g = p.out_features, p.group_size
    ng = k // g
    block_m = max(16, triton.next_power_of_2(m))
    block_n = cfg.block_n
    n_tiles = triton.cdiv(n, block_n)
    if plan.fix_cnt.numel() < n_tiles:
        raise ValueError(f"plan.fix_cnt holds {plan.fix_cnt.numel()} counters, {n_tiles} tiles need one each")
    block_kg = groups_per_step(cfg.block_k, g, 4)
    max_groups = cap_groups(cfg, g, block_kg)
    split, cg = split_for(n_tiles, ng, cfg.programs_per_sm * num_sms(x.device), max_groups)
    y = torch.empty(m, n, dtype=x.dtype, device=x.device) if out is None else out
    if y.shape != (m, n) or y.dtype != x.dtype or not y.is_contiguous():
        raise ValueError(f"out must be a contiguous [{m}, {n}] {x.dtype} tensor")
    ws = torch.empty(split, block_m, n, dtype=torch.float32, device=x.device) if split > 1 else y  # unused at 1
    _smallm_kernel[(n_tiles, split)](
        x, x.stride(0), m, k, p.codes, p.scales, p.zeros, plan.mask_words, plan.mask_prefix, n, ng,
        plan.mask_words.shape[1], bias if bias is not None else y, y, y.stride(0), ws, plan.fix_cnt, cg,
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_KG=block_kg,
        NWB=triton.next_power_of_2(triton.cdiv(cg, 32)), INTERP=INTERPRET, SPLIT=split,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **layout_meta(p.group_size, p.bits))
    return y
