"""Decode kernel: ``y = x W^T + b`` for a packed GQS weight and a few activation rows.

Batch-1 decode is a matrix-vector product: every kept weight is read once and used
B times, so the time is the time to stream the packed bytes (codes, column indices,
scales, zeros) from device memory. The kernel dequantizes in registers and never
writes a dense weight.

Tile: a program works on ``BLOCK_R`` rows at a time and walks them together in
steps of ``BLOCK_G`` lanes per row, so one step holds ``BLOCK_R * BLOCK_G`` lanes.
A lane is one sub-group of ``SG = min(G, 16)`` consecutive weights of a kept group
(groups of 32-128 weights are walked as 2-8 sub-groups, whose codes lie back to back):
its codes ``[W, P]`` (W words of P codes; 3-bit codes are read in 24-bit chunks of 8),
its group's scale, zero and column index, and the activations it multiplies. Lanes
of the same size for every G keep the tile shape that measured fastest at G = 16;
whole 128-weight groups per lane ran at half that speed on an H100. Lanes past their
row's end are masked, so rows of unequal length are correct, at the cost of idle
lanes within a step.

Two schedules (see docs/engine.md for when each wins):

* ``rows`` (data-centric): program p takes rows ``[p*BLOCK_R, (p+1)*BLOCK_R)``;
  one output row is written by one program, no atomics. Programs of long rows run
  longer than programs of short rows.
* ``tasks`` (task-centric): a persistent grid of P programs; program p takes an
  equal share of the KEPT GROUPS, ``[p*T, (p+1)*T)``, whatever rows they fall in.
  Rows lying wholly inside a share are stored directly; a row cut by a share
  boundary gets partial sums from each program that touches it. ``SPLIT_MODE=0``
  (fix-up): each adds its partial into a float32 slot, bumps the slot's counter,
  and the last to arrive stores the row and zeroes the slot, so one launch does it
  all. ``SPLIT_MODE=1`` (atomic, the default: faster on H100, docs/engine.md):
  every row is atomically added into a zeroed float32 buffer that the host casts
  afterwards (two more small launches).

Shapes and dtypes: x [B, K] fp16/bf16 (B <= 16 per launch; the wrapper loops over
chunks of 16), codes [nnz, G*bits/8] uint8, col_idx [nnz] int16, row_ptr [N+1]
int32, scales [nnz] fp16, zeros [nnz] uint8, bias [N] or none, y [B, N] in x's dtype.
Accumulation is float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from gqsa.format import SUPPORTED_BITS, SUPPORTED_GROUP_SIZES, PackedGQS
from gqsa.kernels.jit import INTERPRET, code_layout, load_codes
from gqsa.kernels.plan import MAX_BLOCK_B, KernelPlan, groups_per_program

SCHEDULES = ("rows", "tasks")
MAX_STEPS = 32  # unroll at most this many steps; longer rows loop at run time


@dataclass(frozen=True)
class GemvConfig:
    """Launch parameters of the decode kernel (tuned in docs/engine.md)."""

    block_r: int
    block_g: int
    num_warps: int
    evict: bool = False  # hint the cache: weight bytes evict first, activations evict last


SUB_GROUP = 16  # weights per decode lane (at most)


def decode_layout(group_size: int, bits: int) -> dict:
    """Constexprs of a decode launch for G and bits: sub-groups of ``SG`` weights, ``R`` per group.

    Codes are loaded in units of at most 8 codes (2-bit: two 16-bit units per sub-group
    rather than one 32-bit unit of 16 codes)."""
    sg = min(group_size, SUB_GROUP)
    unit, w, p = code_layout(sg, bits)
    if p > 8:
        unit, w, p = unit // 2, w * 2, p // 2
    return dict(G=group_size, R=group_size // sg, SG=sg, BITS=bits, BPG=sg * bits // 8, UNIT_BITS=unit, W=w, P=p)


def default_config(group_size: int, block_b: int, row_len: float, uniform: bool = False,
                   n_rows: int = 0) -> GemvConfig:
    """Launch parameters for G, the batch tile, the mean kept groups per row, whether every
    row keeps the same number (``uniform``, known from the plan) and the layer's rows.

    Measured on an H100 (docs/engine.md §5.5, S50 W4 G16): at batch 1-2, 128 lanes per
    step and 4 warps; 64 lanes per row when rows hold <= 128 sub-groups, else 128.
    Uniform rows of <= 256 sub-groups in layers of >= 2048 rows take 32 lanes per row (4
    rows per program): 3-27 % faster there (e.g. 4096x4096 6.2 -> 5.9 us, 13824x5120 22.0
    -> 16.2), but slower on longer rows (8192x28672 43 -> 47), on few rows (1024x8192: too
    few programs, 4.3 -> 5.9) and on uneven rows (up to 30 %). G = 8 (8-weight lanes)
    takes 8192 weights per step: 1.6x faster than 2048 on 11008x4096 (docs/engine.md §5.7).
    """
    sg = min(group_size, SUB_GROUP)
    row_len = row_len * (group_size // sg)
    weights = (8192 if sg < SUB_GROUP else 2048) if block_b <= 2 else 1024 if block_b <= 8 else 512
    lanes = max(8, weights // sg)
    if sg == SUB_GROUP and uniform and block_b <= 2 and row_len <= 256 and n_rows >= 16 * lanes:
        return GemvConfig(block_r=lanes // 32, block_g=32, num_warps=4)
    block_g = max(4, min(lanes, triton.next_power_of_2(max(1, int(row_len)))))
    if sg == SUB_GROUP and block_g == lanes and row_len <= lanes and lanes >= 16:
        block_g = lanes // 2
    return GemvConfig(block_r=max(1, lanes // block_g), block_g=block_g, num_warps=4)


def static_steps(plan: KernelPlan | None, nnz: int, n: int, block_g: int, r: int = 1) -> int:
    """Steps to unroll (0: loop at run time): only when no row is much longer than the mean.
    ``block_g`` lanes of sub-groups per row and step, ``r`` sub-groups per group."""
    if plan is None or plan.max_row_len == 0:
        return 0
    steps = triton.cdiv(plan.max_row_len * r, block_g)
    mean_steps = nnz * r / max(1, n) / block_g
    return steps if steps <= MAX_STEPS and steps <= mean_steps * 1.25 + 1 else 0


@triton.jit
def _step(acc, t, seg_lo, seg_hi, lg, x_ptr, stride_xb, B, codes_ptr, col_ptr, scale_ptr, zero_ptr,
          G: tl.constexpr, R: tl.constexpr, SG: tl.constexpr, BITS: tl.constexpr, BPG: tl.constexpr,
          UNIT_BITS: tl.constexpr, W: tl.constexpr, P: tl.constexpr, BLOCK_B: tl.constexpr, W_POLICY: tl.constexpr,
          X_POLICY: tl.constexpr):
    """One step: lanes take sub-group ``seg_lo + t + lg`` of their row; returns acc [BLOCK_B, L] updated."""
    sidx = seg_lo + t + lg
    ok = sidx < seg_hi
    gidx = sidx // R
    col = tl.load(col_ptr + gidx, mask=ok, other=0, eviction_policy=W_POLICY).to(tl.int32)
    s = tl.load(scale_ptr + gidx, mask=ok, other=0.0, eviction_policy=W_POLICY).to(tl.float32)
    z = tl.load(zero_ptr + gidx, mask=ok, other=0, eviction_policy=W_POLICY).to(tl.float32)
    q = load_codes(codes_ptr, sidx, ok, BITS, BPG, UNIT_BITS, W, P, W_POLICY)
    dot = lane_dot(q, z, col, sidx, ok, x_ptr, stride_xb, B, G, R, SG, W, P, BLOCK_B, X_POLICY)
    return acc + dot * s[None, :]


@triton.jit
def lane_dot(q, z, col, sidx, ok, x_ptr, stride_xb, B, G: tl.constexpr, R: tl.constexpr, SG: tl.constexpr,
             W: tl.constexpr, P: tl.constexpr, BLOCK_B: tl.constexpr, X_POLICY: tl.constexpr):
    """Each lane's dot product [BLOCK_B, L] float32 of its sub-group's codes q [L, W, P] minus its
    zero point z [L] with the activations x [B, K] at column group ``col`` [L] (sub-group ``sidx % R``),
    unscaled; lanes that are not ``ok`` read zeros."""
    wq = q.to(tl.float32) - z[:, None, None]
    bidx = tl.arange(0, BLOCK_B)
    jj = tl.arange(0, W)[:, None] * P + tl.arange(0, P)[None, :]
    x0 = col * G + (sidx % R) * SG
    xo = bidx[:, None, None, None] * stride_xb + x0[None, :, None, None] + jj[None, None, :, :]
    xm = (bidx < B)[:, None, None, None] & ok[None, :, None, None]
    xv = tl.load(x_ptr + xo, mask=xm, other=0.0, eviction_policy=X_POLICY).to(tl.float32)
    return tl.sum(tl.sum(xv * wq[None, :, :, :], axis=3), axis=2)


@triton.jit
def lane_segments(row_ptr_ptr, r0, r_end, E0, E1, R: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr,
                  ROW_LEN: tl.constexpr):
    """The sub-groups each of the BLOCK_R * BLOCK_G lanes walks: lane l takes row r0 + l // BLOCK_G
    (none past r_end) from sub-group ``seg_lo + l % BLOCK_G`` up to ``seg_hi`` in steps of BLOCK_G,
    the row's kept groups clamped to [E0, E1) (ROW_LEN > 0: every row keeps ROW_LEN groups, no
    clamp); returns (seg_lo, seg_hi, lg) [L] int32 in sub-groups, lg = l % BLOCK_G."""
    lane = tl.arange(0, BLOCK_R * BLOCK_G)
    lrow = r0 + lane // BLOCK_G
    lg = lane % BLOCK_G
    live = lrow < r_end
    if ROW_LEN > 0:
        seg_lo = lrow * ROW_LEN
        seg_hi = tl.where(live, seg_lo + ROW_LEN, seg_lo)
    else:
        seg_lo = tl.maximum(tl.load(row_ptr_ptr + lrow, mask=live, other=0), E0)
        seg_hi = tl.minimum(tl.load(row_ptr_ptr + lrow + 1, mask=live, other=0), E1)
        seg_hi = tl.where(live, seg_hi, seg_lo)
    return seg_lo * R, seg_hi * R, lg


@triton.jit
def _row_block(x_ptr, stride_xb, B, codes_ptr, col_ptr, scale_ptr, zero_ptr, row_ptr_ptr,
               r0, r_end, E0, E1,
               G: tl.constexpr, R: tl.constexpr, SG: tl.constexpr, BITS: tl.constexpr, BPG: tl.constexpr,
               UNIT_BITS: tl.constexpr, W: tl.constexpr, P: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_R: tl.constexpr,
               BLOCK_G: tl.constexpr, WHILE: tl.constexpr, STEPS: tl.constexpr, ROW_LEN: tl.constexpr,
               W_POLICY: tl.constexpr, X_POLICY: tl.constexpr):
    """Partial sums [BLOCK_B, BLOCK_R] of rows r0.. (< r_end) over their groups in [E0, E1).

    STEPS > 0 unrolls a fixed number of steps (the layer's longest row), so every
    step's loads can issue before the first product; ROW_LEN > 0 says every row keeps
    ROW_LEN groups, so no row pointer is read. 0 means "read it at run time". Groups
    are walked as R sub-groups each.
    """
    L: tl.constexpr = BLOCK_R * BLOCK_G
    seg_lo, seg_hi, lg = lane_segments(row_ptr_ptr, r0, r_end, E0, E1, R, BLOCK_R, BLOCK_G, ROW_LEN)
    acc = tl.zeros([BLOCK_B, L], dtype=tl.float32)
    if STEPS > 0:
        for i in tl.static_range(STEPS):
            acc = _step(acc, i * BLOCK_G, seg_lo, seg_hi, lg, x_ptr, stride_xb, B, codes_ptr, col_ptr, scale_ptr,
                        zero_ptr, G, R, SG, BITS, BPG, UNIT_BITS, W, P, BLOCK_B, W_POLICY, X_POLICY)
    elif WHILE:  # the interpreter cannot take a tensor as a range bound
        steps = tl.max(seg_hi - seg_lo, axis=0)
        t = 0
        while t < steps:
            acc = _step(acc, t, seg_lo, seg_hi, lg, x_ptr, stride_xb, B, codes_ptr, col_ptr, scale_ptr, zero_ptr,
                        G, R, SG, BITS, BPG, UNIT_BITS, W, P, BLOCK_B, W_POLICY, X_POLICY)
            t += BLOCK_G
    else:
        steps = tl.max(seg_hi - seg_lo, axis=0)
        for t in range(0, steps, BLOCK_G):
            acc = _step(acc, t, seg_lo, seg_hi, lg, x_ptr, stride_xb, B, codes_ptr, col_ptr, scale_ptr, zero_ptr,
                        G, R, SG, BITS, BPG, UNIT_BITS, W, P, BLOCK_B, W_POLICY, X_POLICY)
    return tl.sum(tl.reshape(acc, [BLOCK_B, BLOCK_R, BLOCK_G]), axis=2)


@triton.jit
def _finish_rows(part, rows, r_end, B, y_ptr, stride_yb, bias_ptr, HAS_BIAS: tl.constexpr,
                 BLOCK_B: tl.constexpr):
    """Store finished rows: y[b, r] = part[b, r] + bias[r] in y's dtype."""
    bidx = tl.arange(0, BLOCK_B)
    ok = rows < r_end
    if HAS_BIAS:
        part += tl.load(bias_ptr + rows, mask=ok, other=0.0).to(tl.float32)[None, :]
    m = (bidx < B)[:, None] & ok[None, :]
    tl.store(y_ptr + bidx[:, None] * stride_yb + rows[None, :], part.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _gemv_rows_kernel(x_ptr, stride_xb, B, codes_ptr, col_ptr, scale_ptr, zero_ptr, row_ptr_ptr,
                      bias_ptr, y_ptr, stride_yb, N, nnz,
                      HAS_BIAS: tl.constexpr, G: tl.constexpr, R: tl.constexpr, SG: tl.constexpr,
                      BITS: tl.constexpr, BPG: tl.constexpr, UNIT_BITS: tl.constexpr, W: tl.constexpr, P: tl.constexpr,
                      BLOCK_B: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr,
                      WHILE: tl.constexpr, STEPS: tl.constexpr, ROW_LEN: tl.constexpr,
                      W_POLICY: tl.constexpr, X_POLICY: tl.constexpr):
    """Data-centric schedule: program p computes rows [p*BLOCK_R, (p+1)*BLOCK_R)."""
    r0 = tl.program_id(0) * BLOCK_R
    part = _row_block(x_ptr, stride_xb, B, codes_ptr, col_ptr, scale_ptr, zero_ptr, row_ptr_ptr,
                      r0, N, 0, nnz, G, R, SG, BITS, BPG, UNIT_BITS, W, P, BLOCK_B, BLOCK_R, BLOCK_G, WHILE, STEPS,
                      ROW_LEN, W_POLICY, X_POLICY)
    _finish_rows(part, r0 + tl.arange(0, BLOCK_R), N, B, y_ptr, stride_yb, bias_ptr, HAS_BIAS, BLOCK_B)


@triton.jit
def _fixup_rows(part, rows, r_end, lo, hi, E0, E1, T, B, y_ptr, stride_yb, bias_ptr, ws_ptr, cnt_ptr,
                HAS_BIAS: tl.constexpr, BLOCK_B: tl.constexpr, WS_STRIDE: tl.constexpr):
    """Rows cut by a share boundary: add into their slot; the last arriver stores them."""
    bidx = tl.arange(0, BLOCK_B)
    cut = (rows < r_end) & ((lo < E0) | (hi > E1))
    slot = lo // T + 1
    parts = (hi - 1) // T - lo // T + 1
    wsp = ws_ptr + slot[None, :] * WS_STRIDE + bidx[:, None]
    tl.atomic_add(wsp, part, mask=cut[None, :] & (bidx < B)[:, None])
    tl.debug_barrier()  # every thread's partial lands before the counter says so
    arrived = tl.atomic_add(cnt_ptr + slot, 1, mask=cut)
    last = cut & (arrived == parts - 1)
    lm = last[None, :] & (bidx < B)[:, None]
    total = tl.where(lm, tl.atomic_add(wsp, tl.zeros_like(part), mask=lm), 0.0)
    tl.store(wsp, tl.zeros_like(part), mask=lm)
    tl.store(cnt_ptr + slot, tl.zeros_like(slot), mask=last)
    if HAS_BIAS:
        total += tl.load(bias_ptr + rows, mask=last, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + bidx[:, None] * stride_yb + rows[None, :], total.to(y_ptr.dtype.element_ty), mask=lm)


@triton.jit
def _gemv_tasks_kernel(x_ptr, stride_xb, B, codes_ptr, col_ptr, scale_ptr, zero_ptr, row_ptr_ptr,
                       bias_ptr, y_ptr, stride_yb, y32_ptr, prog_rows_ptr, ws_ptr, cnt_ptr, nnz, T,
                       HAS_BIAS: tl.constexpr, SPLIT_MODE: tl.constexpr, G: tl.constexpr, R: tl.constexpr,
                       SG: tl.constexpr, BITS: tl.constexpr, BPG: tl.constexpr, UNIT_BITS: tl.constexpr,
                       W: tl.constexpr, P: tl.constexpr,
                       BLOCK_B: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr,
                       WS_STRIDE: tl.constexpr, WHILE: tl.constexpr):
    """Task-centric schedule: program p computes kept groups [p*T, (p+1)*T)."""
    pid = tl.program_id(0)
    E0 = tl.minimum(pid * T, nnz)
    E1 = tl.minimum(E0 + T, nnz)
    r_first = tl.load(prog_rows_ptr + 2 * pid)
    r_end = tl.load(prog_rows_ptr + 2 * pid + 1)
    bidx = tl.arange(0, BLOCK_B)
    r0 = r_first
    while r0 < r_end:  # a data-dependent trip count: the interpreter wants a while loop here too
        part = _row_block(x_ptr, stride_xb, B, codes_ptr, col_ptr, scale_ptr, zero_ptr, row_ptr_ptr,
                          r0, r_end, E0, E1, G, R, SG, BITS, BPG, UNIT_BITS, W, P, BLOCK_B, BLOCK_R, BLOCK_G, WHILE,
                          0, 0, "", "")
        rows = r0 + tl.arange(0, BLOCK_R)
        if SPLIT_MODE == 1:
            m = (bidx < B)[:, None] & (rows < r_end)[None, :]
            tl.atomic_add(y32_ptr + bidx[:, None] * stride_yb + rows[None, :], part, mask=m)
        else:
            lo = tl.load(row_ptr_ptr + rows, mask=rows < r_end, other=0)
            hi = tl.load(row_ptr_ptr + rows + 1, mask=rows < r_end, other=0)
            whole = (lo >= E0) & (hi <= E1)
            _finish_rows(part, rows, tl.where(whole, r_end, -1), B, y_ptr, stride_yb, bias_ptr, HAS_BIAS,
                         BLOCK_B)
            _fixup_rows(part, rows, r_end, lo, hi, E0, E1, T, B, y_ptr, stride_yb, bias_ptr, ws_ptr, cnt_ptr,
                        HAS_BIAS, BLOCK_B, WS_STRIDE)
        r0 += BLOCK_R


def _check(x: torch.Tensor, p: PackedGQS) -> None:
    if x.dim() != 2 or x.shape[1] != p.in_features:
        raise ValueError(f"x must be [B, {p.in_features}], got {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"x dtype {x.dtype} is not float16, bfloat16 or float32")
    if p.bits not in SUPPORTED_BITS or p.group_size not in SUPPORTED_GROUP_SIZES:
        raise ValueError(f"unsupported bits={p.bits} / group_size={p.group_size} (bits 2,3,4,8; G 8..128)")
    if p.codes.data_ptr() % 4 != 0:
        raise ValueError("codes must be 4-byte aligned (a fresh tensor is)")


def gqs_gemv(x: torch.Tensor, p: PackedGQS, bias: torch.Tensor | None = None, plan: KernelPlan | None = None,
             schedule: str = "rows", split_mode: int = 1, config: GemvConfig | None = None,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x W^T + b`` with the decode kernel; x [B, K] (any B, run in tiles of 16), y [B, N].

    ``schedule="tasks"`` needs ``plan`` (its prog_rows and fix-up slots); ``out`` is an
    optional contiguous [B, N] output in x's dtype.
    """
    _check(x, p)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "tasks" and plan is None:
        raise ValueError("the tasks schedule needs a KernelPlan (gqsa.kernels.plan.build_plan)")
    x = x.contiguous()
    y = output_buffer(x, p.out_features, out)
    for b0 in range(0, x.shape[0], MAX_BLOCK_B):
        xb, yb = x[b0:b0 + MAX_BLOCK_B], y[b0:b0 + MAX_BLOCK_B]
        _launch(xb, yb, p, bias, plan, schedule, split_mode, config)
    return y


def output_buffer(x: torch.Tensor, n: int, out: torch.Tensor | None) -> torch.Tensor:
    """The [B, n] output for x [B, K] in x's dtype: ``out`` when given (checked: contiguous, that
    shape and dtype), else a new tensor."""
    y = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device) if out is None else out
    if y.shape != (x.shape[0], n) or y.dtype != x.dtype or not y.is_contiguous():
        raise ValueError(f"out must be a contiguous [{x.shape[0]}, {n}] {x.dtype} tensor")
    return y


def _launch(x, y, p, bias, plan, schedule, split_mode, config):
    b, n, nnz = x.shape[0], p.out_features, p.nnz
    block_b = triton.next_power_of_2(b)
    lay = decode_layout(p.group_size, p.bits)
    uniform = plan is not None and plan.row_len > 0
    cfg = config or default_config(p.group_size, block_b, nnz / max(1, n), uniform, n)
    meta = dict(HAS_BIAS=bias is not None, BLOCK_B=block_b, BLOCK_R=cfg.block_r, BLOCK_G=cfg.block_g,
                WHILE=INTERPRET, num_warps=cfg.num_warps, **lay)
    args = (x, x.stride(0), b, p.codes, p.col_idx, p.scales, p.zeros, p.row_ptr)
    bias_arg = bias if bias is not None else y
    if schedule == "rows":
        grid = (triton.cdiv(n, cfg.block_r),)
        _gemv_rows_kernel[grid](*args, bias_arg, y, y.stride(0), n, nnz,
                                W_POLICY="evict_first" if cfg.evict else "",
                                X_POLICY="evict_last" if cfg.evict else "",
                                STEPS=static_steps(plan, nnz, n, cfg.block_g, lay["R"]),
                                ROW_LEN=plan.row_len if plan is not None else 0, **meta)
        return
    t = groups_per_program(nnz, plan.num_programs)
    y32 = torch.zeros(y.shape, dtype=torch.float32, device=y.device) if split_mode == 1 else y
    _gemv_tasks_kernel[(plan.num_programs,)](*args, bias_arg, y, y.stride(0), y32, plan.prog_rows,
                                             plan.fix_ws, plan.fix_cnt, nnz, t, SPLIT_MODE=split_mode,
                                             WS_STRIDE=plan.fix_ws.stride(0), **meta)
    if split_mode == 1:
        y.copy_(y32 if bias is None else y32 + bias.float())
