"""Experiment (one device call): the small-batch tensor-core kernel (gqsa.kernels.smallm) vs the
split-K GEMM and the decode kernel at M = 2..32, S50 W4 G16, LLaMA-2-7B shapes, FP16 beside.

Stage 1 sweeps tiles at M=16 on two shapes; stage 2 times the best few at every M and shape.
Every config is checked against the reference (twice: the arrival counters must re-arm).
Run: PYTHONPATH=. python scripts/exp_smallm.py --out DIR
"""

from __future__ import annotations

import argparse
import itertools
import json
import os

import torch
import torch.nn.functional as F

from gqsa.bench.kernels import _clone_packed
from gqsa.bench.synth import random_packed
from gqsa.bench.timing import copies_for, time_rotating
from gqsa.kernels.dispatch import gemm_config
from gqsa.kernels.gemm import gqs_gemm
from gqsa.kernels.gemv import gqs_gemv
from gqsa.kernels.plan import build_plan
from gqsa.kernels.reference import gqs_linear_ref
from gqsa.kernels.smallm import SmallMConfig, gqs_smallm

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]
SWEEP = [SmallMConfig(bn, bk, 4, st, pps) for bn, bk, st, pps in
         itertools.product((16, 32, 64), (32, 64, 128), (1, 2), (8, 16, 32))]


def setup(n, k, pattern):
    p = random_packed(n, k, 16, 4, 0.5, pattern, "cuda", 0)
    copies = [p] + [_clone_packed(p) for _ in range(copies_for(p.nbytes()) - 1)]
    plans = [build_plan(q) for q in copies]
    return p, copies, plans


def timed(fn, copies, plans, x, p):
    ref = gqs_linear_ref(x.float(), p)
    for _ in range(2):
        y = fn(copies[0], plans[0])
        err = ((y.float() - ref).norm() / ref.norm()).item()
        assert err <= 1e-2, err
    assert plans[0].fix_cnt.abs().sum().item() == 0
    return time_rotating([lambda q=q, pl=pl: fn(q, pl) for q, pl in zip(copies, plans)])[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    recs = []
    dump = lambda: json.dump(recs, open(os.path.join(args.out, "exp_smallm.json"), "w"), indent=1)
    score = {}
    for n, k in SHAPES[:2]:
        p, copies, plans = setup(n, k, "uniform")
        x = torch.randn(16, k, device="cuda", dtype=torch.float16)
        for cfg in SWEEP:
            us = timed(lambda q, pl: gqs_smallm(x, q, None, pl, cfg), copies, plans, x, p)
            recs.append(dict(stage=1, n=n, k=k, m=16, cfg=str(cfg), us=us))
            score[cfg] = score.get(cfg, 0.0) + us
        dump()
    best = sorted(score, key=score.get)[:3]
    print("stage 1 best:", [(str(c), round(score[c] / 2, 1)) for c in best], flush=True)
    for pattern in ("uniform", "layer"):
        for n, k in SHAPES:
            p, copies, plans = setup(n, k, pattern)
            w16 = [torch.randn(n, k, device="cuda", dtype=torch.float16) for _ in range(copies_for(n * k * 2))]
            for m in (2, 4, 8, 16, 32):
                x = torch.randn(m, k, device="cuda", dtype=torch.float16)
                row = dict(n=n, k=k, m=m, pattern=pattern)
                row["fp16"] = time_rotating([lambda w=w: F.linear(x, w) for w in w16])[0]
                row["gemm"] = timed(lambda q, pl: gqs_gemm(x, q, None, pl, gemm_config(m)), copies, plans, x, p)
                if m <= 8:
                    row["gemv"] = timed(lambda q, pl: gqs_gemv(x, q, None, pl, "rows"), copies, plans, x, p)
                for i, cfg in enumerate(best):
                    row[f"smallm{i}"] = timed(lambda q, pl: gqs_smallm(x, q, None, pl, cfg), copies, plans, x, p)
                recs.append(dict(stage=2, **row))
                print(" ".join(f"{a}={b:.1f}" if isinstance(b, float) else f"{a}={b}" for a, b in row.items()),
                      flush=True)
            dump()
            del copies, plans, w16
    print("configs:", [str(c) for c in best])


if __name__ == "__main__":
    main()
