"""Choose the compute path of GQSLinear: the GPU kernels on CUDA, the reference elsewhere.

Pure choices (no kernel is imported here); :mod:`gqsa.kernels.ops` asks them and runs
the answer. Rules (the measurements behind each number are in docs/engine.md):

* not CUDA, or autograd needs the graph (x or the scales require grad), or x is not
  fp16/bf16: the pure-PyTorch reference :func:`gqsa.kernels.reference.gqs_linear_ref`
  (:func:`use_reference`); otherwise, by :func:`choose_kernel`:
* M = x rows <= ``GEMV_MAX_BATCH``: the decode kernel (:mod:`gqsa.kernels.gemv`),
  with the layer's schedule (``rows`` unless rows are extremely skewed, see
  :func:`choose_schedule`);
* no kernel plan: dequantize with torch ops, then cuBLAS (slow; ops warns);
* M <= ``SMALLM_MAX_BATCH``: the small-batch tensor-core kernel
  (:mod:`gqsa.kernels.smallm`);
* M < ``DENSE_MIN_BATCH`` on layers of at least ``GEMM_MIN_WEIGHTS`` weights: the split-K
  Triton sparse GEMM (:mod:`gqsa.kernels.gemm`), tile by :func:`gemm_config`;
* larger M: dequantize to a dense weight, then cuBLAS.
"""

from __future__ import annotations

import torch

from gqsa.format import PackedGQS

GEMV_MAX_BATCH = 2  # decode kernel up to here (H100, 4096^2 S50: 11.0 us at M=2 vs 15.0 small-batch kernel)
SMALLM_MAX_BATCH = 32  # small-batch kernel up to here (H100, 4096^2 S50: 15.1 us at M=4 vs 17.6 decode,
# 22.1 at M=32 vs 28.5 split-K GEMM; docs/engine.md)
DENSE_MIN_BATCH = 48  # from here dequantize + cuBLAS beats the Triton GEMM (H100, M=64: 26 vs 45 us)
GEMM_MIN_WEIGHTS = 1 << 25  # below DENSE_MIN_BATCH the GEMM only wins on layers this large (H100, M=40:
# 11008x4096 73 vs 85 us dense, 4096x11008 73 vs 87; 4096x4096 43 vs 26 dense; docs/engine.md §5.9)
TASKS_MIN_SKEW = 8.0  # longest/mean row above which to try the task schedule; it lost every H100 case
# measured (max/mean <= 2 at S50), so this only fires for extreme tails at high sparsity


def gemm_config(m: int):
    """Tile of the Triton GEMM for M rows (H100 sweep, docs/engine.md)."""
    from gqsa.kernels.gemm import GemmConfig
    if m <= 16:
        return GemmConfig(block_m=16, block_n=64, num_warps=4, num_stages=3)
    if m <= 32:
        return GemmConfig(block_m=32, block_n=64, num_warps=4, num_stages=3)
    return GemmConfig(block_m=64, block_n=128, num_warps=4, num_stages=3)


def use_gemm(m: int, n: int, k: int) -> bool:
    """Whether M rows past the small-batch kernel take the Triton GEMM rather than dequantize + cuBLAS."""
    return SMALLM_MAX_BATCH < m < DENSE_MIN_BATCH and n * k >= GEMM_MIN_WEIGHTS


def choose_schedule(row_ptr: torch.Tensor) -> str:
    """``tasks`` when the longest row holds TASKS_MIN_SKEW x the mean kept groups, else ``rows``."""
    counts = (row_ptr[1:] - row_ptr[:-1]).float()
    mean = counts.mean().item() if counts.numel() else 0.0
    skew = counts.max().item() / mean if mean > 0 else 1.0
    return "tasks" if skew >= TASKS_MIN_SKEW else "rows"


def use_reference(x: torch.Tensor, packed: PackedGQS) -> bool:
    """Whether ``x`` [..., K] takes the pure-PyTorch reference rather than the custom op: off CUDA,
    when autograd needs the graph, or for activations other than fp16/bf16."""
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or packed.scales.requires_grad)
    return not x.is_cuda or needs_grad or x.dtype not in (torch.float16, torch.bfloat16)


KERNELS = ("gemv", "torch", "smallm", "gemm", "dense")


def choose_kernel(m: int, n: int, k: int, has_plan: bool) -> str:
    """Path of a CUDA call with M rows on a layer [N, K], one of :data:`KERNELS`: the decode kernel,
    a torch dequantize (no plan: slow but correct), the small-batch kernel, the split-K GEMM, or the
    Triton dequantize + cuBLAS."""
    if m <= GEMV_MAX_BATCH:
        return "gemv"
    if not has_plan:
        return "torch"
    if m <= SMALLM_MAX_BATCH:
        return "smallm"
    if use_gemm(m, n, k):
        return "gemm"
    return "dense"
