"""Load-time metadata that the GPU kernels read beside the packed format (never saved).

The saved layout stays format v1 (:mod:`gqsa.format`); everything here is derived
from it once per layer, on the layer's device, and held in non-persistent buffers:

================  ==================  ===============================================
tensor            shape, dtype        meaning
================  ==================  ===============================================
prog_rows         [P, 2] int32        task schedule: program p owns kept groups
                                      [p*T, (p+1)*T) (T = ceil(nnz/P)) and walks rows
                                      prog_rows[p, 0] <= r < prog_rows[p, 1]
fix_ws            [P+1, 16] float32   partial sums of rows cut by a program boundary
fix_cnt           [max(P+1, N/16)]    arrival counters of those rows, and of the
                  int32               small-batch kernel's output tiles
                                      (:mod:`gqsa.kernels.smallm`); fix_ws and fix_cnt
                                      are zero between calls (the last arriver resets)
mask_words        [N, NW] int32       kept-group bitmask, bit c%32 of word c//32
mask_prefix       [N, NW] int32       CSR index of the first kept group of each word
================  ==================  ===============================================

Rows cut by a program boundary get a slot: the index of the first boundary inside
them, ``row_start // T + 1``; each boundary cuts at most one row, so slots are unique.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gqsa.format import PackedGQS, keep_mask

PLAN_TENSORS = ("prog_rows", "fix_ws", "fix_cnt", "mask_words", "mask_prefix")
MAX_BLOCK_B = 16  # widest batch tile of the decode kernel; fix_ws holds one slot per column


@dataclass
class KernelPlan:
    """Derived tensors of one layer (see the module docstring for their layout)."""

    prog_rows: torch.Tensor
    fix_ws: torch.Tensor
    fix_cnt: torch.Tensor
    mask_words: torch.Tensor
    mask_prefix: torch.Tensor
    max_row_len: int = 0  # kept groups of the longest row (0: unknown, the kernels read it)
    row_len: int = 0  # kept groups of every row when all rows keep the same number, else 0

    @property
    def num_programs(self) -> int:
        return int(self.prog_rows.shape[0])


def groups_per_program(nnz: int, num_programs: int) -> int:
    """T of the task schedule: kept groups per program (at least 1)."""
    return max(1, math.ceil(nnz / num_programs))


def task_rows(row_ptr: torch.Tensor, num_programs: int) -> torch.Tensor:
    """Rows walked by each task program: [P, 2] int32 (first row, end row).

    Program p owns groups [E0, E1) with E0 = min(p*T, nnz), E1 = min(E0 + T, nnz). It
    walks the row holding E0 (cut, when it began earlier), every row whose start lies
    in [E0, E1) (empty rows included), and the last program also the empty rows at
    the end. ``row_ptr`` is [N+1] int32 on any device.
    """
    rp = row_ptr.to(torch.int64)
    nnz, n = int(rp[-1]), rp.numel() - 1
    t = groups_per_program(nnz, num_programs)
    e0 = torch.clamp(torch.arange(num_programs, device=rp.device) * t, max=nnz)
    e1 = torch.clamp(e0 + t, max=nnz)
    starts, ends = rp[:-1].contiguous(), rp[1:].contiguous()
    first = torch.minimum(torch.searchsorted(ends, e0, right=True), torch.searchsorted(starts, e0))
    last = torch.searchsorted(starts, e1)
    last[-1] = n
    return torch.stack([first, last], 1).to(torch.int32)


def kept_mask_words(packed: PackedGQS) -> tuple[torch.Tensor, torch.Tensor]:
    """Bitmask of kept groups [N, NW] int32 and each word's first CSR index [N, NW] int32."""
    n, ng = packed.out_features, packed.in_features // packed.group_size
    nw = max(1, math.ceil(ng / 32))
    dev = packed.row_ptr.device
    keep = torch.zeros(n, nw * 32, dtype=torch.int64, device=dev)
    keep[:, :ng] = keep_mask(packed)
    keep = keep.view(n, nw, 32)
    words = (keep << torch.arange(32, device=dev)).sum(-1)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    counts = keep.sum(-1)
    prefix = packed.row_ptr[:-1].to(torch.int64).unsqueeze(1) + torch.cumsum(counts, 1) - counts
    return words, prefix.to(torch.int32)


def build_plan(packed: PackedGQS, num_programs: int | None = None) -> KernelPlan:
    """Derive the kernel metadata of a layer on its device.

    ``num_programs`` (the task schedule's grid) defaults to 16 per multiprocessor on CUDA,
    the best of 1 to 32 on an H100 (docs/engine.md), and 8 elsewhere.
    """
    dev = packed.row_ptr.device
    if num_programs is None:
        num_programs = 16 * torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == "cuda" else 8
    words, prefix = kept_mask_words(packed)
    max_len, row_len = row_lengths(packed.row_ptr)
    return KernelPlan(
        prog_rows=task_rows(packed.row_ptr, num_programs),
        fix_ws=torch.zeros(num_programs + 1, MAX_BLOCK_B, dtype=torch.float32, device=dev),
        fix_cnt=torch.zeros(max(num_programs + 1, -(-packed.out_features // 16)), dtype=torch.int32, device=dev),
        mask_words=words, mask_prefix=prefix, max_row_len=max_len, row_len=row_len)


def row_lengths(row_ptr: torch.Tensor) -> tuple[int, int]:
    """(longest row, common row length or 0) in kept groups; reads the device once, at load."""
    counts = (row_ptr[1:] - row_ptr[:-1]).to(torch.int64)
    if counts.numel() == 0:
        return 0, 0
    lo, hi = int(counts.min()), int(counts.max())
    return hi, hi if lo == hi else 0
