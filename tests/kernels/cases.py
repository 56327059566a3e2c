"""Shared pieces of the kernel tests: random packed layers, the reference check, poisoned outputs.

Tolerance: ``||y - ref|| / ||ref||`` against a float32 reference, at most 2e-3 for fp16
outputs (their rounding is ~5e-4) and 1e-2 for bf16 (rounding ~4e-3).
"""

from __future__ import annotations

import os

import pytest
import torch

from gqsa.format import TENSOR_NAMES, PackedGQS, pack_layer
from gqsa.kernels.reference import gqs_linear_ref

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET or not torch.cuda.is_available() else "cuda"
TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}
NEEDS_BACKEND = pytest.mark.skipif(DEVICE == "cpu" and not INTERPRET,
                                reason="no CUDA and the kernels were imported before TRITON_INTERPRET was set")


def random_layer(n: int, ng: int, g: int, bits: int, gen: torch.Generator, keep_p: float = 0.5,
                 empty_rows=(0,), full_rows=(1,)) -> PackedGQS:
    """Packed [n, ng*g] layer with random codes; ``empty_rows`` keep nothing, ``full_rows`` keep all."""
    q = torch.randint(0, 2 ** bits, (n, ng * g), generator=gen)
    keep = torch.rand(n, ng, generator=gen) < keep_p
    keep[list(empty_rows)] = False
    keep[list(full_rows)] = True
    s = torch.rand(n, ng, generator=gen) * 0.05 + 0.01
    z = torch.randint(0, 2 ** bits, (n, ng), generator=gen).float()
    p = pack_layer(q, keep, s, z, g, bits)
    return PackedGQS(*(getattr(p, t).to(DEVICE) for t in TENSOR_NAMES),
                     n, ng * g, g, bits)


def check(y: torch.Tensor, x: torch.Tensor, p: PackedGQS, bias: torch.Tensor | None) -> None:
    ref = gqs_linear_ref(x.float(), p, None if bias is None else bias.float())
    assert not torch.isnan(y).any(), "output element left unwritten (NaN poison survived)"
    err = ((y.float() - ref).norm() / ref.norm().clamp(min=1e-12)).item()
    assert err <= TOL[x.dtype], f"relative error {err:.2e} > {TOL[x.dtype]:.0e}"


def poisoned(m: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.full((m, n), float("nan"), dtype=dtype, device=DEVICE)


CASES = [(g, bits) for g in (8, 16, 32, 64, 128) for bits in (2, 3, 4, 8)]
