"""The dispatcher's choice of path by batch and layer size (gqsa.kernels.dispatch)."""

from __future__ import annotations

import torch

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
