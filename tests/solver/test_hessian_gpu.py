"""GPU check of the tensor-core Hessian (``gqsa.solver.hessian``): skipped without CUDA.

fp16/bf16 products are exact in float32, so the accumulated H differs from a float64 reference
only by float32 summation error. The bound: twice the error of the float32 SIMT product
(``allow_tf32`` off) of the same inputs, or 1e-5, whichever is larger; 1e-5 is nearly three
orders of magnitude below the sampling noise of the Hessian estimate itself (1/sqrt(T) = 8e-3 at
these 16,384 tokens). One tensor-core product over all 16,384 tokens measured 2.4e-5 (fp16) on an
H200 against 6.7e-7 for SIMT, hence the chunks of ``GRAM_CHUNK`` tokens. Both errors are printed.
"""

import pytest
import torch

from gqsa.solver.hessian import HessianAccumulator

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_hessian_matches_float64(dtype):
    torch.manual_seed(0)
    chunks = [torch.randn(b, 2048, 512, device="cuda").mul_(3.0).to(dtype) for b in (3, 5)]
    acc = HessianAccumulator(512, "cuda")
    for c in chunks:
        acc.add_batch(c)
    x = torch.cat([c.reshape(-1, 512) for c in chunks])
    ref = 2.0 * x.double().T @ x.double() / x.shape[0]
    simt = 2.0 * x.float().T @ x.float() / x.shape[0]
    err = ((acc.H.double() - ref).norm() / ref.norm()).item()
    simt_err = ((simt.double() - ref).norm() / ref.norm()).item()
    bound = max(2 * simt_err, 1e-5)
    print(f"{dtype}: relative error {err:.2e}, float32 SIMT {simt_err:.2e}")
    assert acc.n == x.shape[0] and err <= bound, f"relative error {err:.2e} > {bound:.2e}"
    assert torch.allclose(acc.sq_norm.double(), x.double().pow(2).sum(0), rtol=1e-5)
