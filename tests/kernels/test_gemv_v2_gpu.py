"""GPU-only checks of the format-v2 decode kernel at real layer shapes (S50 W4 G16).

Skipped without CUDA. Runs under pytest (``pytest -m gpu tests/kernels``) or as a plain script
(``python tests/kernels/test_gemv_v2_gpu.py``). Tolerances as in test_gemv_interpret.py:
``||y - ref|| / ||ref||`` against the float32 reference of ``to_v1(p2)``, at most 2e-3 for fp16
and 1e-2 for bf16.
"""

from __future__ import annotations

import sys

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]
TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _check(y, x, p2, bias):
    from gqsa.format_v2 import to_v1
    from gqsa.kernels.reference import gqs_linear_ref
    ref = gqs_linear_ref(x.float(), to_v1(p2), bias.float())
    assert torch.isfinite(y).all(), "output element left unwritten (NaN poison survived) or overflowed"
    err = ((y.float() - ref).norm() / ref.norm()).item()
    assert err <= TOL[x.dtype], f"relative error {err:.2e} > {TOL[x.dtype]:.0e}"


@pytest.mark.parametrize("pattern", ["uniform", "heavy"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,k", SHAPES)
def test_decode_v2_real_shapes(n, k, dtype, pattern):
    """uniform: the unrolled ROW_LEN path; heavy: uneven rows (run-time loop over steps)."""
    from gqsa.bench.synth import random_packed
    from gqsa.format_v2 import from_v1
    from gqsa.kernels.gemv_v2 import build_plan_v2, gqs_gemv_v2
    p2, clamped = from_v1(random_packed(n, k, 16, 4, 0.5, pattern, "cuda", seed=n + k))
    assert clamped == 0  # random_packed's scales span ~2.3 octaves, inside the 6-octave grid
    plan = build_plan_v2(p2)
    assert plan.col.dtype == (torch.uint8 if k // 16 <= 256 else torch.int16)  # down_proj K/G = 688: int16
    assert (plan.row_len > 0) == (pattern == "uniform")
    bias = torch.randn(n, device="cuda", dtype=dtype)
    for m in (1, 2, 8, 16):
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        out = torch.full((m, n), float("nan"), device="cuda", dtype=dtype)
        _check(gqs_gemv_v2(x, p2, bias, plan, out=out), x, p2, bias)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", "-rs"]))
