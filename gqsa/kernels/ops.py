"""The GQS kernels as a torch custom op, so GQSLinear runs under torch.compile and CUDA graphs.

``torch.ops.gqsa.gqs_linear`` takes the packed tensors of :mod:`gqsa.format` and the
optional plan tensors of :mod:`gqsa.kernels.plan` and returns ``x W^T + b``. Its fake
implementation only states the output shape, so the compiler never traces the
Triton launches; on CUDA, :func:`run` launches the kernel that
:mod:`gqsa.kernels.dispatch` chooses by batch size; on CPU the op is the pure-PyTorch
reference (:mod:`gqsa.kernels.reference`). :func:`gqs_linear` is the entry point of
GQSLinear: the reference where dispatch says so, else the op.

The Triton modules are imported inside :func:`run` only, so this module (and GQSLinear
on CPU) works without Triton installed.

The task schedule's fix-up slots (``fix_ws``, ``fix_cnt``) are written during a call
but hold zeros again when it returns, so the op declares no mutated arguments.
"""

from __future__ import annotations

import warnings

import torch

from gqsa.format import PackedGQS, dequantize
from gqsa.kernels import dispatch
from gqsa.kernels.plan import KernelPlan
from gqsa.kernels.reference import gqs_linear_ref

SCHEDULE_IDS = {"rows": 0, "tasks": 1}


@torch.library.custom_op("gqsa::gqs_linear", mutates_args=())
def gqs_linear_op(x: torch.Tensor, codes: torch.Tensor, col_idx: torch.Tensor, row_ptr: torch.Tensor,
                  scales: torch.Tensor, zeros: torch.Tensor, bias: torch.Tensor | None,
                  prog_rows: torch.Tensor | None, fix_ws: torch.Tensor | None, fix_cnt: torch.Tensor | None,
                  mask_words: torch.Tensor | None, mask_prefix: torch.Tensor | None,
                  in_features: int, group_size: int, bits: int, schedule: int, max_row_len: int,
                  row_len: int) -> torch.Tensor:
    """x [..., K] fp16/bf16 -> y [..., N]; plan tensors may all be None (then rows schedule / torch dequant)."""
    p = PackedGQS(codes, col_idx, row_ptr, scales, zeros, row_ptr.numel() - 1, in_features, group_size, bits)
    plan = None
    if prog_rows is not None:
        plan = KernelPlan(prog_rows, fix_ws, fix_cnt, mask_words, mask_prefix, max_row_len, row_len)
    y = run(x.reshape(-1, in_features), p, bias, plan, "tasks" if schedule == 1 else "rows")
    return y.reshape(*x.shape[:-1], p.out_features)


@gqs_linear_op.register_fake
def _(x, codes, col_idx, row_ptr, scales, zeros, bias, prog_rows, fix_ws, fix_cnt, mask_words, mask_prefix,
      in_features, group_size, bits, schedule, max_row_len, row_len):
    return x.new_empty(*x.shape[:-1], row_ptr.shape[0] - 1)


@gqs_linear_op.register_kernel("cpu")
def _(x, codes, col_idx, row_ptr, scales, zeros, bias, prog_rows, fix_ws, fix_cnt, mask_words, mask_prefix,
      in_features, group_size, bits, schedule, max_row_len, row_len):
    # the Triton kernels run on CUDA only; on CPU the op computes the reference (plan tensors unused)
    p = PackedGQS(codes, col_idx, row_ptr, scales, zeros, row_ptr.numel() - 1, in_features, group_size, bits)
    return gqs_linear_ref(x, p, bias)


def gqs_linear(x: torch.Tensor, packed: PackedGQS, bias: torch.Tensor | None = None,
               plan: KernelPlan | None = None, schedule: str = "rows") -> torch.Tensor:
    """``y = x W^T + b`` for a packed GQS weight; same contract as :func:`gqs_linear_ref`.

    ``plan`` and ``schedule`` come from :meth:`gqsa.layer.GQSLinear.prepare_kernels`;
    without a plan, CUDA inputs still take the decode kernel (rows schedule).
    """
    if dispatch.use_reference(x, packed):
        return gqs_linear_ref(x, packed, bias)
    return call(x, packed, bias, plan, schedule)


def run(x: torch.Tensor, p: PackedGQS, bias: torch.Tensor | None, plan: KernelPlan | None,
        schedule: str) -> torch.Tensor:
    """Route a 2-D x [M, K] to the decode, small-batch or GEMM kernel, or dequantize + cuBLAS."""
    from gqsa.kernels.gemm import gqs_dense_linear, gqs_gemm
    from gqsa.kernels.gemv import gqs_gemv
    from gqsa.kernels.smallm import gqs_smallm

    m = x.shape[0]
    kernel = dispatch.choose_kernel(m, p.out_features, p.in_features, plan is not None)
    if kernel == "gemv":
        return gqs_gemv(x, p, bias, plan, schedule if plan is not None else "rows")
    if kernel == "torch":  # no bitmask: build the dense weight with torch ops (slow but correct)
        warnings.warn("gqsa: a GQSLinear ran without its kernel plan (compiled or captured before its first "
                      f"eager CUDA forward?), so {m} rows took a slow torch dequantize; call "
                      "GQSLinear.prepare_kernels() (or gqsa.prepare_kernels(model)) first", RuntimeWarning,
                      stacklevel=2)
        return torch.nn.functional.linear(x, dequantize(p, x.dtype), bias)
    if kernel == "smallm":
        return gqs_smallm(x, p, bias, plan)
    if kernel == "gemm":
        return gqs_gemm(x, p, bias, plan, dispatch.gemm_config(m))
    return gqs_dense_linear(x, p, bias, plan)

def call(x: torch.Tensor, p: PackedGQS, bias: torch.Tensor | None, plan: KernelPlan | None,
         schedule: str) -> torch.Tensor:
    """Call the custom op with a PackedGQS and an optional KernelPlan."""
    t = (plan.prog_rows, plan.fix_ws, plan.fix_cnt, plan.mask_words, plan.mask_prefix) if plan else (None,) * 5
    lens = (plan.max_row_len, plan.row_len) if plan else (0, 0)
    return torch.ops.gqsa.gqs_linear(x, p.codes, p.col_idx, p.row_ptr, p.scales, p.zeros, bias, *t,
                                     p.in_features, p.group_size, p.bits, SCHEDULE_IDS[schedule], *lens)
