"""Run the decode kernel (batch 1) and the small-batch kernel (batch 16) a few times on one layer
shape, for a profiler to attach to (``ncu``): the numbers behind docs/engine.md §5.8.

Usage (on a CUDA machine): ``ncu --section ... python scripts/profile_kernels.py [N K]``.
"""

from __future__ import annotations

import sys

import torch

from gqsa.bench.synth import random_packed
from gqsa.kernels.gemv import gqs_gemv
from gqsa.kernels.plan import build_plan
from gqsa.kernels.smallm import gqs_smallm


def main(n: int = 11008, k: int = 4096) -> None:
    p = random_packed(n, k, 16, 4, 0.5, "uniform", "cuda", 0)
    plan = build_plan(p)
    for m, fn in ((1, lambda x: gqs_gemv(x, p, None, plan, "rows")), (16, lambda x: gqs_smallm(x, p, None, plan))):
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        for _ in range(3):
            fn(x)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
