"""Read floor: the time a kernel needs just to read N bytes once, launched like a layer.

Bandwidth figures for small layers mislead: a 7 MB weight cannot be streamed at the
copy bandwidth of a 1 GiB memcpy, because launch, ramp-up and the tail of the last
wave take a fixed few microseconds. This kernel reads ``nbytes`` contiguous bytes with
16-byte loads, sums them and writes one word per program: nothing a GEMV could do
with the same bytes is faster. Timed through the same rotated CUDA-graph harness as
every method (:mod:`gqsa.bench.timing`), it gives the floor beside each layer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gqsa.bench.timing import copies_for, time_rotating

BLOCKS = (1024, 2048, 4096)  # int32 words per program (4, 8, 16 KB); the fastest is reported


@triton.jit
def _read_kernel(src_ptr, out_ptr, n_words, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(src_ptr + offs, mask=offs < n_words, other=0)
    tl.store(out_ptr + tl.program_id(0), tl.sum(v, axis=0))


def read_once(src: torch.Tensor, out: torch.Tensor, block: int) -> torch.Tensor:
    """Read every int32 word of ``src`` once; out gets one partial sum per program."""
    n = src.numel()
    _read_kernel[(triton.cdiv(n, block),)](src, out, n, BLOCK=block, num_warps=4)
    return out


def read_floor_us(nbytes: int, device: str = "cuda") -> tuple[float, int]:
    """(fastest median microseconds to read ``nbytes`` once over :data:`BLOCKS`, that block)."""
    words = max(1, nbytes // 4)
    copies = [torch.randint(0, 7, (words,), dtype=torch.int32, device=device) for _ in range(copies_for(nbytes))]
    best = (float("inf"), 0)
    for block in BLOCKS:
        out = torch.empty(triton.cdiv(words, block), dtype=torch.int32, device=device)
        us = time_rotating([lambda s=s: read_once(s, out, block) for s in copies])[0]
        best = min(best, (us, block))
    return best
