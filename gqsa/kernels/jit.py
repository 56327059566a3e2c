"""What the Triton kernels share: device helpers and the host-side layout of a launch.

* :data:`INTERPRET`: whether Triton runs its interpreter (``TRITON_INTERPRET=1``, the CPU
  tests); the interpreter cannot take a tensor as a range bound, so the kernels take a
  ``while`` loop there.
* :func:`code_layout` / :func:`layout_meta`: how one group's codes are loaded.
* :func:`load_codes`: a group's codes as int32 (decode, small-batch, GEMM, dequantize).
* :func:`popc32`, :func:`dense_from_idx`, :func:`dot_tile`: the tensor-core kernels'
  bitmask popcount, dense weight tile and tile product (small-batch and GEMM).
* :func:`groups_per_step`, :func:`num_sms`: their K step and their grid.

Codes are laid out as in :mod:`gqsa.format`: codes [nnz, G*bits/8] uint8, scales [nnz]
fp16, zeros [nnz] uint8.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def code_layout(group_size: int, bits: int) -> tuple[int, int, int]:
    """(UNIT_BITS, W, P): how one group's codes are loaded.

    2-, 4- and 8-bit codes never straddle a load unit: a group is W units of UNIT_BITS
    (32, 16 or 8, the widest dividing the group's bytes), each holding P codes.
    3-bit codes are read in 24-bit chunks of 8 codes (three byte loads per chunk, every
    G a multiple of 8): W = G / 8, P = 8, UNIT_BITS = 24. (Reading them code by code,
    two byte loads per code, ran at half the 4-bit speed on an H100.)
    """
    nbytes = group_size * bits // 8
    if 8 % bits != 0:
        return 24, group_size // 8, 8
    unit = 32 if nbytes % 4 == 0 else 16 if nbytes % 2 == 0 else 8
    return unit, group_size * bits // unit, unit // bits


def layout_meta(group_size: int, bits: int) -> dict:
    """Constexprs of a whole-group launch (GEMM, small-batch, dequantize): G, BITS, BPG (bytes per
    group) and the code layout UNIT_BITS, W, P of :func:`code_layout`."""
    unit, w, p = code_layout(group_size, bits)
    return dict(G=group_size, BITS=bits, BPG=group_size * bits // 8, UNIT_BITS=unit, W=w, P=p)


def groups_per_step(block_k: int, group_size: int, default: int) -> int:
    """Group columns per K step of a tensor-core kernel: ``block_k / G`` (1..32), or ``default``
    when ``block_k`` is 0."""
    return min(32, max(1, block_k // group_size)) if block_k else default


def num_sms(device: torch.device) -> int:
    """Multiprocessors of a CUDA device (8 elsewhere: the interpreter's stand-in grid)."""
    if device.type != "cuda":
        return 8
    return torch.cuda.get_device_properties(device).multi_processor_count


@triton.jit
def load_codes(codes_ptr, gidx, ok, BITS: tl.constexpr, BPG: tl.constexpr,
               UNIT_BITS: tl.constexpr, W: tl.constexpr, P: tl.constexpr, POLICY: tl.constexpr):
    """Codes of the lanes' groups as int32 [L, W, P]; code j = w*P + p."""
    w = tl.arange(0, W)
    if UNIT_BITS == 24:  # 3-bit: chunk w is bytes 3w..3w+2 of the group, code w*8+p at its bit 3p
        base = codes_ptr + gidx[:, None] * BPG + 3 * w[None, :]
        m = ok[:, None]
        b0 = tl.load(base, mask=m, other=0, eviction_policy=POLICY).to(tl.int32)
        b1 = tl.load(base + 1, mask=m, other=0, eviction_policy=POLICY).to(tl.int32)
        b2 = tl.load(base + 2, mask=m, other=0, eviction_policy=POLICY).to(tl.int32)
        chunk = b0 | (b1 << 8) | (b2 << 16)
        return (chunk[:, :, None] >> (tl.arange(0, P) * BITS)[None, None, :]) & ((1 << BITS) - 1)
    if UNIT_BITS == 32:
        up = codes_ptr.to(tl.pointer_type(tl.int32))
    elif UNIT_BITS == 16:
        up = codes_ptr.to(tl.pointer_type(tl.int16))
    else:
        up = codes_ptr
    units = tl.load(up + gidx[:, None] * W + w[None, :], mask=ok[:, None], other=0,
                    eviction_policy=POLICY).to(tl.int32)
    shifts = tl.arange(0, P) * BITS
    return (units[:, :, None] >> shifts[None, None, :]) & ((1 << BITS) - 1)


@triton.jit
def popc32(v):
    """Set bits of each uint32 element (SWAR; portable to the interpreter)."""
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    return (v * 0x01010101) >> 24


@triton.jit
def dense_from_idx(codes_ptr, scale_ptr, zero_ptr, idx, kept, BITS: tl.constexpr, BPG: tl.constexpr,
                   UNIT_BITS: tl.constexpr, W: tl.constexpr, P: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_KG: tl.constexpr):
    """Dequantized tile [BLOCK_N, BLOCK_KG*G] fp32 of lanes (row-major) with CSR index idx; 0 where not kept."""
    q = load_codes(codes_ptr, idx, kept, BITS, BPG, UNIT_BITS, W, P, "")
    s = tl.load(scale_ptr + idx[:, None, None], mask=kept[:, None, None], other=0.0).to(tl.float32)
    z = tl.load(zero_ptr + idx[:, None, None], mask=kept[:, None, None], other=0).to(tl.float32)
    w = (q.to(tl.float32) - z) * s
    return tl.reshape(w, [BLOCK_N, BLOCK_KG * W * P])


@triton.jit
def dot_tile(acc, w, x_ptr, stride_xm, ms, M, K, c0, G: tl.constexpr, BLOCK_KG: tl.constexpr,
             DOT_F32: tl.constexpr):
    """acc [BLOCK_M, BLOCK_N] += x[ms, c0*G : (c0+BLOCK_KG)*G] @ w^T for a weight tile w [BLOCK_N, BLOCK_KG*G]."""
    ks = c0 * G + tl.arange(0, BLOCK_KG * G)
    xt = tl.load(x_ptr + ms[:, None] * stride_xm + ks[None, :], mask=(ms < M)[:, None] & (ks < K)[None, :],
                 other=0.0)
    if DOT_F32:  # the interpreter's bf16 tl.dot is wrong (triton 3.6); fp32 is exact there
        return acc + tl.dot(xt.to(tl.float32), tl.trans(w))
    return acc + tl.dot(xt, tl.trans(w.to(xt.dtype)))
