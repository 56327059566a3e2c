"""Decode kernel over the lean format: ``y = x W^T + b`` reading the compact metadata of :mod:`gqsa.format_v2`.

A standalone path for benchmarking (not wired into the layer, the custom op or the dispatcher).
It keeps the tile of :mod:`gqsa.kernels.gemv` (rows schedule: a program takes ``BLOCK_R`` rows
and walks them in steps of ``BLOCK_G`` lanes per row, a lane being a sub-group of
``SG = min(G, 16)`` weights; ``STEPS`` unrolls, ``ROW_LEN`` skips the row pointers, ``WHILE`` is
the interpreter's loop) and changes only what each lane reads beside its codes:

==============  ===========================  ==============================================
lane reads      from                         how
==============  ===========================  ==============================================
codes           codes [nnz, G*bits/8] uint8  :func:`gqsa.kernels.jit.load_codes`, as v1
column          plan.col [nnz] uint8/int16   the group's column index (see :class:`PlanV2`)
scale factor    scale_codes [nnz] uint8      ``2^(-(255 - c) * SPAN_OCTAVES / 255)`` in float32
zero point      zeros [ceil(nnz/8)*bits]     bits [i*b, i*b+b) of the little-endian stream;
                uint8                        3-bit zeros may straddle two bytes (two loads)
==============  ===========================  ==============================================

The row's factor (float32, decoded once at plan time from the stored 8-bit ``row_code`` and the
layer's ``layer_scale``) multiplies its float32 sum once, after the lanes are reduced, then the
bias is added and the row is stored in x's dtype. Bytes read per kept group (codes + column
+ scale + zero): W4 G16 v1 8 + 2 + 2 + 1 = 13 B, v2 8 + 1 + 1 + 0.5 = 10.5 B; W3 G16 v1
6 + 2 + 2 + 1 = 11 B, v2 6 + 1 + 1 + 0.375 = 8.375 B (uint8 columns, K/G <= 256), plus per row
the two row pointers (as v1) and 4 B of row factor.

Shapes and dtypes: x [B, K] fp16/bf16/fp32 (B <= 16 per launch; the wrapper loops over chunks of
16), bias [N] or none, y [B, N] in x's dtype; accumulation is float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from gqsa.format_v2 import SCALE_LEVELS, SPAN_OCTAVES, PackedGQSv2, unpack_mask
from gqsa.kernels.gemv import (
    GemvConfig,
    _check,
    _finish_rows,
    decode_layout,
    default_config,
    lane_dot,
    lane_segments,
    output_buffer,
    static_steps,
)
from gqsa.kernels.jit import INTERPRET, load_codes
from gqsa.kernels.plan import MAX_BLOCK_B, row_lengths

UINT8_MAX_GROUPS = 256  # column indices 0..255 fit a uint8
INT16_MAX_GROUPS = 32767
INT32_MAX = tl.constexpr(2**31 - 1)  # the whole row's groups: no sub-range of the kept groups


@dataclass
class PlanV2:
    """Load-time tensors of one v2 layer on its device (derived from the mask, never saved).

    ``row_ptr`` [N+1] int32: kept groups of row r are ``row_ptr[r]:row_ptr[r+1]`` (popcount prefix
    sums of the mask); ``col`` [nnz] uint8 when K/G <= 256, else int16: column-group index of each
    kept group in CSR order. ``row_factor`` [N] float32: each row's decoded factor
    (:meth:`gqsa.format_v2.PackedGQSv2.row_factors`). ``max_row_len`` / ``row_len`` as in
    :class:`gqsa.kernels.plan.KernelPlan`. The uint8 column is what saves 1 B per kept group over
    v1's int16 ``col_idx``.
    """

    row_ptr: torch.Tensor
    col: torch.Tensor
    row_factor: torch.Tensor
    max_row_len: int = 0
    row_len: int = 0


def build_plan_v2(p: PackedGQSv2) -> PlanV2:
    """Row pointers, column indices and row factors of a lean layer from its mask and row codes,
    on the mask's device."""
    n, ng = p.out_features, p.in_features // p.group_size
    if ng > INT16_MAX_GROUPS:
        raise ValueError(f"{ng} groups per row; the int16 column index holds at most {INT16_MAX_GROUPS}")
    keep = unpack_mask(p.mask, n, ng)
    row_ptr = torch.zeros(n + 1, dtype=torch.int32, device=keep.device)
    row_ptr[1:] = torch.cumsum(keep.sum(1), 0).to(torch.int32)
    if int(row_ptr[-1]) != p.nnz:
        raise ValueError(f"the mask marks {int(row_ptr[-1])} kept groups, but the layer holds {p.nnz}")
    col_dtype = torch.uint8 if ng <= UINT8_MAX_GROUPS else torch.int16
    col = torch.arange(ng, device=keep.device).expand(n, ng)[keep].to(col_dtype)
    max_len, row_len = row_lengths(row_ptr)
    return PlanV2(row_ptr, col, p.row_factors(), max_len, row_len)


@triton.jit
def _zero_points(zero_ptr, gidx, ok, BITS: tl.constexpr, POLICY: tl.constexpr):
    """Zero points [L] float32 of groups ``gidx``: bits [gidx*BITS, gidx*BITS + BITS) of the stream."""
    bit = gidx * BITS
    shift = bit % 8
    v = tl.load(zero_ptr + bit // 8, mask=ok, other=0, eviction_policy=POLICY).to(tl.int32)
    if 8 % BITS != 0:  # 3-bit: a zero starting past bit 5 ends in the next byte (which then exists)
        hi = tl.load(zero_ptr + bit // 8 + 1, mask=ok & (shift + BITS > 8), other=0, eviction_policy=POLICY)
        v = v | (hi.to(tl.int32) << 8)
    return ((v >> shift) & ((1 << BITS) - 1)).to(tl.float32)


@triton.jit
def _step_v2(acc, t, seg_lo, seg_hi, lg, x_ptr, stride_xb, B, codes_ptr, col_ptr, scode_ptr, zero_ptr,
             G: tl.constexpr, R: tl.constexpr, SG: tl.constexpr, BITS: tl.constexpr, BPG: tl.constexpr,
             UNIT_BITS: tl.constexpr, W: tl.constexpr, P: tl.constexpr, BLOCK_B: tl.constexpr,
             W_POLICY: tl.constexpr, X_POLICY: tl.constexpr, SCALE_STEP: tl.constexpr, TOP: tl.constexpr):
    """One step: lanes take sub-group ``seg_lo + t + lg`` of their row; returns acc [BLOCK_B, L] updated
    (each lane's dot product times its group's scale factor, without the row scale)."""
    sidx = seg_lo + t + lg
    ok = sidx < seg_hi
    gidx = sidx // R
    col = tl.load(col_ptr + gidx, mask=ok, other=0, eviction_policy=W_POLICY).to(tl.int32)
    c = tl.load(scode_ptr + gidx, mask=ok, other=0, eviction_policy=W_POLICY).to(tl.float32)
    f = tl.exp2((c - TOP) * SCALE_STEP)
    z = _zero_points(zero_ptr, gidx, ok, BITS, W_POLICY)
    q = load_codes(codes_ptr, sidx, ok, BITS, BPG, UNIT_BITS, W, P, W_POLICY)
    dot = lane_dot(q, z, col, sidx, ok, x_ptr, stride_xb, B, G, R, SG, W, P, BLOCK_B, X_POLICY)
    return acc + dot * f[None, :]


@triton.jit
def _gemv_v2_rows_kernel(x_ptr, stride_xb, B, codes_ptr, col_ptr, scode_ptr, zero_ptr, row_ptr_ptr, row_factor_ptr,
                         bias_ptr, y_ptr, stride_yb, N,
                         HAS_BIAS: tl.constexpr, G: tl.constexpr, R: tl.constexpr, SG: tl.constexpr,
                         BITS: tl.constexpr, BPG: tl.constexpr, UNIT_BITS: tl.constexpr, W: tl.constexpr,
                         P: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr,
                         WHILE: tl.constexpr, STEPS: tl.constexpr, ROW_LEN: tl.constexpr,
                         W_POLICY: tl.constexpr, X_POLICY: tl.constexpr, SCALE_STEP: tl.constexpr,
                         TOP: tl.constexpr):
    """Program p computes rows [p*BLOCK_R, (p+1)*BLOCK_R); STEPS / ROW_LEN / WHILE as in gemv._row_block."""
    r0 = tl.program_id(0) * BLOCK_R
    L: tl.constexpr = BLOCK_R * BLOCK_G
    seg_lo, seg_hi, lg = lane_segments(row_ptr_ptr, r0, N, 0, INT32_MAX, R, BLOCK_R, BLOCK_G, ROW_LEN)  # no clamp
    acc = tl.zeros([BLOCK_B, L], dtype=tl.float32)
    if STEPS > 0:
        for i in tl.static_range(STEPS):
            acc = _step_v2(acc, i * BLOCK_G, seg_lo, seg_hi, lg, x_ptr, stride_xb, B, codes_ptr, col_ptr, scode_ptr,
                           zero_ptr, G, R, SG, BITS, BPG, UNIT_BITS, W, P, BLOCK_B, W_POLICY, X_POLICY, SCALE_STEP,
                           TOP)
    elif WHILE:  # the interpreter cannot take a tensor as a range bound
        steps = tl.max(seg_hi - seg_lo, axis=0)
        t = 0
        while t < steps:
            acc = _step_v2(acc, t, seg_lo, seg_hi, lg, x_ptr, stride_xb, B, codes_ptr, col_ptr, scode_ptr,
                           zero_ptr, G, R, SG, BITS, BPG, UNIT_BITS, W, P, BLOCK_B, W_POLICY, X_POLICY, SCALE_STEP,
                           TOP)
            t += BLOCK_G
    else:
        steps = tl.max(seg_hi - seg_lo, axis=0)
        for t in range(0, steps, BLOCK_G):
            acc = _step_v2(acc, t, seg_lo, seg_hi, lg, x_ptr, stride_xb, B, codes_ptr, col_ptr, scode_ptr,
                           zero_ptr, G, R, SG, BITS, BPG, UNIT_BITS, W, P, BLOCK_B, W_POLICY, X_POLICY, SCALE_STEP,
                           TOP)
    part = tl.sum(tl.reshape(acc, [BLOCK_B, BLOCK_R, BLOCK_G]), axis=2)
    rows = r0 + tl.arange(0, BLOCK_R)
    row_factor = tl.load(row_factor_ptr + rows, mask=rows < N, other=0.0)
    _finish_rows(part * row_factor[None, :], rows, N, B, y_ptr, stride_yb, bias_ptr, HAS_BIAS, BLOCK_B)


def gqs_gemv_v2(x: torch.Tensor, p: PackedGQSv2, bias: torch.Tensor | None = None, plan: PlanV2 | None = None,
                config: GemvConfig | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x W^T + b`` for a v2 layer with the decode kernel (rows schedule).

    Args:
        x: activations [B, K] fp16/bf16/fp32, any B (run in tiles of 16 rows).
        p: the layer's v2 tensors, on x's device (codes 4-byte aligned).
        bias: optional [N].
        plan: :func:`build_plan_v2` of ``p``; built here (a device sync) when None.
        config: launch parameters; :func:`gqsa.kernels.gemv.default_config` when None.
        out: optional contiguous [B, N] output in x's dtype.
    Returns:
        y [B, N] in x's dtype.
    """
    _check(x, p)
    plan = build_plan_v2(p) if plan is None else plan
    if (plan.row_ptr.numel() != p.out_features + 1 or plan.col.numel() != p.nnz
            or plan.row_factor.numel() != p.out_features):
        raise ValueError(f"plan has {plan.row_ptr.numel() - 1} rows and {plan.col.numel()} kept groups, the layer "
                         f"{p.out_features} and {p.nnz}; build it with build_plan_v2(p)")
    x = x.contiguous()
    y = output_buffer(x, p.out_features, out)
    for b0 in range(0, x.shape[0], MAX_BLOCK_B):
        _launch(x[b0:b0 + MAX_BLOCK_B], y[b0:b0 + MAX_BLOCK_B], p, bias, plan, config)
    return y


def _launch(x: torch.Tensor, y: torch.Tensor, p: PackedGQSv2, bias: torch.Tensor | None, plan: PlanV2,
            config: GemvConfig | None) -> None:
    b, n, nnz = x.shape[0], p.out_features, p.nnz
    block_b = triton.next_power_of_2(b)
    lay = decode_layout(p.group_size, p.bits)
    cfg = config or default_config(p.group_size, block_b, nnz / max(1, n), plan.row_len > 0, n)
    _gemv_v2_rows_kernel[(triton.cdiv(n, cfg.block_r),)](
        x, x.stride(0), b, p.codes, plan.col, p.scale_codes, p.zeros, plan.row_ptr, plan.row_factor,
        bias if bias is not None else y, y, y.stride(0), n,
        HAS_BIAS=bias is not None, BLOCK_B=block_b, BLOCK_R=cfg.block_r, BLOCK_G=cfg.block_g, WHILE=INTERPRET,
        STEPS=static_steps(plan, nnz, n, cfg.block_g, lay["R"]), ROW_LEN=plan.row_len,
        W_POLICY="evict_first" if cfg.evict else "", X_POLICY="evict_last" if cfg.evict else "",
        SCALE_STEP=SPAN_OCTAVES / SCALE_LEVELS, TOP=float(SCALE_LEVELS), num_warps=cfg.num_warps, **lay)
