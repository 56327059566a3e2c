"""Every GPU path against the reference on 1,040 random cases (skipped without CUDA).

A case is a random layer and a batch: format (G 8-128, 2/3/4/8 bits), shape (2-300 rows, 1-40
groups a row), kept fraction (0 to 1, with an empty and a full row in every layer), bias or
none, fp16 or bf16 activations, batch 1-128. Each case runs through the dispatcher
(:func:`gqsa.kernels.ops.run`) and through every kernel that takes its batch directly: the
decode kernel (both schedules, batch <= 16), the small-batch kernel (batch <= 32), the split-K
GEMM and dequantize + cuBLAS; outputs that a kernel writes into start as NaN. 8 chunks of 13
layers x 10 batches, so pytest-xdist spreads them. Tolerance as in :mod:`tests.kernels.cases`:
relative error <= 2e-3 (fp16) and 1e-2 (bf16) against a float32 reference.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernels.cases import CASES, DEVICE, check, poisoned, random_layer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CHUNKS, LAYERS, BATCHES = 8, 13, 10
BATCH_CHOICES = (1, 2, 3, 4, 7, 8, 16, 17, 32, 33, 48, 64, 100, 128)
KEEP_CHOICES = (0.0, 0.1, 0.5, 0.9, 1.0)


def _cases(chunk: int):
    """(layer, dtype, bias, batches) for the chunk's layers, from a generator seeded by the chunk."""
    gen = torch.Generator().manual_seed(1000 + chunk)

    def pick(n: int) -> int:
        return int(torch.randint(0, n, (1,), generator=gen))
    for i in range(LAYERS):
        g, bits = CASES[pick(len(CASES))]
        n, ng = 2 + pick(299), 1 + pick(40)
        p = random_layer(n, ng, g, bits, gen, keep_p=KEEP_CHOICES[pick(len(KEEP_CHOICES))])
        dtype = (torch.float16, torch.bfloat16)[i % 2]
        bias = torch.randn(n, generator=gen).to(DEVICE, dtype) if pick(2) else None
        batches = [BATCH_CHOICES[j] for j in torch.randperm(len(BATCH_CHOICES), generator=gen)[:BATCHES].tolist()]
        yield p, dtype, bias, batches


def _paths(m: int):
    """(name, fn(x, p, bias, plan, out)) of the kernels that take m rows directly."""
    from gqsa.kernels import dispatch
    from gqsa.kernels.gemm import gqs_dense_linear, gqs_gemm
    from gqsa.kernels.gemv import gqs_gemv
    from gqsa.kernels.smallm import MAX_M, gqs_smallm
    out = []
    if m <= 16:
        out += [("gemv rows", lambda x, p, b, pl, y: gqs_gemv(x, p, b, pl, "rows", out=y)),
                ("gemv tasks", lambda x, p, b, pl, y: gqs_gemv(x, p, b, pl, "tasks", out=y))]
    if m <= MAX_M:
        out.append(("smallm", lambda x, p, b, pl, y: gqs_smallm(x, p, b, pl, out=y)))
    out.append(("gemm", lambda x, p, b, pl, y: gqs_gemm(x, p, b, pl, dispatch.gemm_config(m), out=y)))
    out.append(("dense", lambda x, p, b, pl, y: gqs_dense_linear(x, p, b, pl)))
    return out


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_cases(chunk):
    from gqsa.kernels import ops
    from gqsa.kernels.plan import build_plan
    for p, dtype, bias, batches in _cases(chunk):
        plan = build_plan(p)
        for m in batches:
            x = torch.randn(m, p.in_features, device=DEVICE, dtype=dtype)
            where = f"{p.out_features}x{p.in_features} G{p.group_size} b{p.bits} nnz {p.nnz} {dtype} M={m}"
            for name, fn in _paths(m) + [("dispatch", lambda x, p, b, pl, y: ops.run(x, p, b, pl, "rows"))]:
                y = fn(x, p, bias, plan, poisoned(m, p.out_features, dtype))
                try:
                    check(y, x, p, bias)
                except AssertionError as e:
                    raise AssertionError(f"{name} on {where}: {e}") from None
