"""The dispatcher's choice of path by batch and layer size (gqsa.kernels.dispatch)."""

from __future__ import annotations

import torch

from gqsa.format import TENSOR_NAMES
from gqsa.kernels import dispatch


def test_gemm_only_between_small_batch_and_dense_and_only_on_large_layers():
    big, small = (11008, 4096), (4096, 4096)
    assert not dispatch.use_gemm(dispatch.SMALLM_MAX_BATCH, *big)  # the small-batch kernel's range
    assert dispatch.use_gemm(dispatch.SMALLM_MAX_BATCH + 1, *big)
    assert dispatch.use_gemm(dispatch.DENSE_MIN_BATCH - 1, *big)
    assert not dispatch.use_gemm(dispatch.DENSE_MIN_BATCH, *big)
    assert not dispatch.use_gemm(40, *small)  # dequantize + cuBLAS measured faster there


def test_schedule_follows_row_skew():
    even = torch.arange(0, 101, 10, dtype=torch.int32)  # ten rows of 10
    skewed = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 100], dtype=torch.int32)  # one row of 91
    assert dispatch.choose_schedule(even) == "rows"
    assert dispatch.choose_schedule(skewed) == "tasks"


def test_kernel_by_batch_and_plan():
    big = (11008, 4096)
    assert dispatch.choose_kernel(dispatch.GEMV_MAX_BATCH, *big, has_plan=False) == "gemv"
    assert dispatch.choose_kernel(dispatch.GEMV_MAX_BATCH + 1, *big, has_plan=False) == "torch"
    assert dispatch.choose_kernel(dispatch.SMALLM_MAX_BATCH, *big, has_plan=True) == "smallm"
    assert dispatch.choose_kernel(dispatch.SMALLM_MAX_BATCH + 1, *big, has_plan=True) == "gemm"
    assert dispatch.choose_kernel(dispatch.SMALLM_MAX_BATCH + 1, 4096, 4096, has_plan=True) == "dense"
    assert dispatch.choose_kernel(dispatch.DENSE_MIN_BATCH, *big, has_plan=True) == "dense"


def test_reference_off_cuda_for_grad_and_for_float32():
    from tests.kernels.cases import random_layer
    p = random_layer(n=8, ng=2, g=16, bits=4, gen=torch.Generator().manual_seed(0))
    assert dispatch.use_reference(torch.randn(2, p.in_features).half(), p)  # CPU
    if torch.cuda.is_available():
        x = torch.randn(2, p.in_features, device="cuda")
        assert dispatch.use_reference(x, p) and not dispatch.use_reference(x.half(), p)
        assert dispatch.use_reference(x.half().requires_grad_(), p)


def test_custom_op_on_cpu_is_the_reference():
    """On CPU tensors torch.ops.gqsa.gqs_linear runs gqs_linear_ref (bit for bit), never a Triton kernel."""
    from gqsa.kernels import ops
    from gqsa.kernels.plan import build_plan
    from gqsa.kernels.reference import gqs_linear_ref
    from tests.kernels.cases import random_layer
    gen = torch.Generator().manual_seed(1)
    p = random_layer(n=24, ng=4, g=16, bits=4, gen=gen)
    p = type(p)(*(getattr(p, t).cpu() for t in TENSOR_NAMES),
                p.out_features, p.in_features, p.group_size, p.bits)
    x = torch.randn(2, 5, p.in_features, generator=gen).half()
    bias = torch.randn(24, generator=gen).half()
    for plan in (None, build_plan(p, num_programs=3)):
        y = ops.call(x, p, bias, plan, "rows")
        assert torch.equal(y, gqs_linear_ref(x, p, bias))
