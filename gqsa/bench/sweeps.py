"""The launch-parameter sweeps of :mod:`gqsa.bench.tune` (CUDA and Triton needed).

Every variant is checked against the reference before it is timed; each sweep returns
its records (dicts) for ``tune.json``, which :func:`gqsa.bench.report.print_tune_summary`
prints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton

from gqsa.bench.methods import layer_copies
from gqsa.bench.synth import random_packed
from gqsa.bench.timing import copies_for, time_rotating
from gqsa.kernels.gemm import GemmConfig, gqs_dense_linear, gqs_gemm
from gqsa.kernels.gemv import SUB_GROUP, GemvConfig, gqs_gemv
from gqsa.kernels.plan import build_plan
from gqsa.kernels.reference import gqs_linear_ref
from gqsa.kernels.smallm import SmallMConfig, gqs_smallm

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]
GEMV_CONFIGS = {  # (block_r, block_g, num_warps[, evict]) per batch tile; 1 to 4 kept groups per thread and step
    1: [(1, 128, 4), (2, 64, 4), (2, 64, 2), (4, 64, 4), (4, 32, 2), (2, 128, 4), (8, 64, 4), (1, 128, 2),
        (4, 32, 4), (8, 16, 4), (8, 32, 8), (1, 128, 4, True), (2, 64, 4, True), (4, 32, 4, True)],
    2: [(2, 64, 4), (1, 64, 2), (2, 32, 2), (4, 32, 4), (1, 64, 2, True), (2, 64, 4, True)],
    4: [(2, 32, 4), (2, 64, 4), (1, 64, 2)],
    8: [(1, 64, 4), (2, 32, 4), (1, 32, 2)],
    16: [(1, 32, 4), (1, 64, 8), (1, 16, 2)],
}
PROGRAMS_PER_SM = (8, 16, 32)
GEMM_CONFIGS = [(16, 64, 64, 4, 3), (16, 128, 64, 4, 3), (32, 64, 64, 4, 3), (64, 128, 64, 4, 3)]
SMALL_M = (2, 4, 8, 16, 32, 33, 40, 47, 64, 128)
DEVICE = "cuda"


def _timed(make, copies, x, p) -> float:
    """Check one call against the reference, then time the rotation over ``copies`` ((packed, plan)
    pairs, :func:`gqsa.bench.methods.layer_copies`); ``make(packed, plan) -> fn(x)``; microseconds."""
    y = make(*copies[0])(x)
    ref = gqs_linear_ref(x.float(), p)
    err = ((y.float() - ref).norm() / ref.norm()).item()
    if not err <= 1e-2:
        raise AssertionError(f"variant off the reference: relative error {err:.2e}")
    fns = [make(q, pl) for q, pl in copies]
    return time_rotating([lambda f=f: f(x) for f in fns])[0]


def _fp16_us(n: int, k: int, x: torch.Tensor) -> float:
    """FP16 cuBLAS time for x [M, K] against rotated [n, k] weights; microseconds."""
    w = torch.randn(n, k, device=DEVICE, dtype=torch.float16) * 0.02
    ws = [w] + [w.clone() for _ in range(copies_for(w.numel() * 2) - 1)]
    return time_rotating([lambda w=w: F.linear(x, w) for w in ws])[0]


def sweep_rows(n: int, k: int, pattern: str, m: int) -> list[dict]:
    """Rows schedule over tile configs (with the plan's unrolled steps), and once without a plan."""
    p = random_packed(n, k, 16, 4, 0.5, pattern, DEVICE, 0)
    copies = layer_copies(p)
    x = torch.randn(m, k, device=DEVICE, dtype=torch.float16)
    base = dict(n=n, k=k, pattern=pattern, m=m, bytes=p.nbytes(), sweep="rows")
    recs = [dict(base, kind="rows_noplan", cfg="default",
                 us=_timed(lambda q, pl: lambda x: gqs_gemv(x, q, None, None, "rows"), copies, x, p))]
    for c in GEMV_CONFIGS[m]:
        cfg = GemvConfig(*c)
        us = _timed(lambda q, pl: lambda x: gqs_gemv(x, q, None, pl, "rows", config=cfg), copies, x, p)
        recs.append(dict(base, kind="rows", cfg="r{}g{}w{}".format(*c) + ("e" if cfg.evict else ""), us=us))
    return recs


def sweep_tasks(n: int, k: int, pattern: str, sms: int) -> list[dict]:
    """Tasks schedule at batch 1: programs per SM and the two ways to combine cut rows."""
    p = random_packed(n, k, 16, 4, 0.5, pattern, DEVICE, 0)
    copies = layer_copies(p)
    x = torch.randn(1, k, device=DEVICE, dtype=torch.float16)
    base = dict(n=n, k=k, pattern=pattern, m=1, bytes=p.nbytes(), sweep="tasks")
    recs = []
    for pp in PROGRAMS_PER_SM:
        per_sm = [(q, build_plan(q, pp * sms)) for q, _ in copies]
        for split in (0, 1):
            us = _timed(lambda q, pl: lambda x: gqs_gemv(x, q, None, pl, "tasks", split), per_sm, x, p)
            recs.append(dict(base, kind=f"tasks_p{pp}_split{split}", cfg="default", us=us))
    return recs


def sweep_small_m(n: int, k: int) -> list[dict]:
    """Decode kernel vs split-K tensor-core GEMM vs dequantize + cuBLAS vs FP16 over small M."""
    p = random_packed(n, k, 16, 4, 0.5, "uniform", DEVICE, 0)
    copies = layer_copies(p)
    recs = []
    for m in SMALL_M:
        x = torch.randn(m, k, device=DEVICE, dtype=torch.float16)
        base = dict(n=n, k=k, m=m, sweep="small_m")
        recs.append(dict(base, kind="fp16", us=_fp16_us(n, k, x)))
        if m <= 32:
            us = _timed(lambda q, pl: lambda x: gqs_gemv(x, q, None, pl), copies, x, p)
            recs.append(dict(base, kind="gemv", us=us))
            us = _timed(lambda q, pl: lambda x: gqs_smallm(x, q, None, pl), copies, x, p)
            recs.append(dict(base, kind="smallm", us=us))
        recs.append(dict(base, kind="dense", us=_timed(lambda q, pl: lambda x: gqs_dense_linear(x, q, None, pl),
                                                     copies, x, p)))
        for c in GEMM_CONFIGS:
            cfg = GemmConfig(*c)
            try:
                us = _timed(lambda q, pl: lambda x: gqs_gemm(x, q, None, pl, cfg), copies, x, p)
            except triton.runtime.errors.OutOfResources as e:  # a tile too big for this chip: record it
                print(f"gemm {c}: {e}")
                us = float("inf")
            recs.append(dict(base, kind="gemm", cfg="m{}n{}k{}w{}s{}".format(*c), us=us))
    return recs


SMALLM_SHAPES = [(4096, 4096), (11008, 4096), (14336, 4096), (4096, 14336), (8192, 8192), (28672, 8192)]


def _smallm_configs(n: int, k: int, m: int, sweep: str, cfgs: dict[str, SmallMConfig], dense: bool = False
                    ) -> list[dict]:
    """Small-batch kernel at batch m under each named config on a W4 S50 G16 layer [n, k], FP16 cuBLAS
    (and, with ``dense``, dequantize + cuBLAS) beside; a config too big for the chip is recorded as inf."""
    p = random_packed(n, k, 16, 4, 0.5, "uniform", DEVICE, 0)
    copies = layer_copies(p)
    x = torch.randn(m, k, device=DEVICE, dtype=torch.float16)
    base = dict(n=n, k=k, m=m, sweep=sweep)
    recs = [dict(base, kind="fp16", us=_fp16_us(n, k, x))]
    if dense:
        recs.append(dict(base, kind="dense", us=_timed(lambda q, pl: lambda x: gqs_dense_linear(x, q, None, pl),
                                                     copies, x, p)))
    for name, cfg in cfgs.items():
        try:
            us = _timed(lambda q, pl: lambda x: gqs_smallm(x, q, None, pl, cfg), copies, x, p)
        except triton.runtime.errors.OutOfResources as e:
            print(f"smallm {name}: {e}")
            us = float("inf")
        recs.append(dict(base, kind="smallm", cfg=name, us=us))
    return recs


def sweep_smallm(n: int, k: int, m: int) -> list[dict]:
    """Small-batch kernel at batch m over the cap on group columns per program, FP16 beside."""
    recs = _smallm_configs(n, k, m, "smallm", {f"cap{cap}": SmallMConfig(max_k=cap * 16) for cap in (32, 64, 128, 0)})
    print(" ".join(f"{r.get('cfg', r['kind'])}={r['us']:.1f}" for r in recs), dict(n=n, k=k, m=m), flush=True)
    return recs


SMALLM_TILES = [(bn, bk, w, st, mk) for bn in (32, 64) for bk in (64, 128) for w in (4, 8) for st in (1, 2)
                for mk in (512, 1024)]  # block_n, block_k, num_warps, num_stages, max_k


def sweep_smallm_tiles(n: int, k: int, m: int) -> list[dict]:
    """Small-batch kernel at batch m over its tile (rows, input columns per step, warps, pipeline
    stages, columns per program), FP16 cuBLAS and dequantize + cuBLAS beside."""
    cfgs = {f"n{bn}k{bk}w{w}s{st}c{mk}": SmallMConfig(block_n=bn, block_k=bk, num_warps=w, num_stages=st, max_k=mk)
            for bn, bk, w, st, mk in SMALLM_TILES}
    recs = _smallm_configs(n, k, m, "smallm_tiles", cfgs, dense=True)
    best = min((r for r in recs if r["kind"] == "smallm"), key=lambda r: r["us"])
    print(f"{n}x{k} M={m}: fp16 {recs[0]['us']:.1f} dense {recs[1]['us']:.1f} best smallm {best['cfg']}="
          f"{best['us']:.1f} | " + " ".join(f"{r['cfg']}={r['us']:.1f}" for r in recs[2:]), flush=True)
    return recs


FORMAT_SHAPES = [(11008, 4096), (4096, 11008)]
SMALLM_FORMAT_CONFIGS = [(32, 2, 512), (32, 4, 512), (32, 4, 1024), (32, 4, 2048), (32, 8, 1024),
                         (16, 4, 1024), (64, 4, 1024), (32, 4, 0)]  # block_n, groups per step, max_k


def gemv_candidates(g: int, row_len: int) -> list[GemvConfig]:
    """Decode tiles to try for group size g (lanes of sub-groups): 2048-8192 weights per step, whole
    rows or parts of them, and the 32-lane tile."""
    sg = min(g, SUB_GROUP)
    out = []
    for weights in (2048, 4096, 8192):
        lanes = max(4, weights // sg)
        top = min(lanes, triton.next_power_of_2(row_len * g // sg))
        for block_g in sorted({top, max(1, top // 2)}):
            for warps in ((4, 8) if weights >= 8192 else (4,)):
                out.append(GemvConfig(lanes // block_g, block_g, warps))
        if top > 32:
            out.append(GemvConfig(lanes // 32, 32, 4))
    return list(dict.fromkeys(out))


def sweep_format(n: int, k: int, g: int, bits: int) -> list[dict]:
    """One format on one shape at S50: decode tiles at batch 1, small-batch tiles at batch 16."""
    p = random_packed(n, k, g, bits, 0.5, "uniform", DEVICE, 0)
    copies = layer_copies(p)
    base = dict(n=n, k=k, g=g, bits=bits, bytes=p.nbytes(), sweep="format")
    x1 = torch.randn(1, k, device=DEVICE, dtype=torch.float16)
    recs = [dict(base, m=1, kind="gemv", cfg="default",
                 us=_timed(lambda q, pl: lambda x: gqs_gemv(x, q, None, pl, "rows"), copies, x1, p))]
    for cfg in gemv_candidates(g, p.nnz // n):
        us = _timed(lambda q, pl: lambda x: gqs_gemv(x, q, None, pl, "rows", config=cfg), copies, x1, p)
        recs.append(dict(base, m=1, kind="gemv", cfg=f"r{cfg.block_r}g{cfg.block_g}w{cfg.num_warps}", us=us))
    x16 = torch.randn(16, k, device=DEVICE, dtype=torch.float16)
    for bn, kg, mk in SMALLM_FORMAT_CONFIGS:
        bk = kg * g
        if mk and mk < bk:
            continue
        cfg = SmallMConfig(block_n=bn, block_k=bk, max_k=mk)
        us = _timed(lambda q, pl: lambda x: gqs_smallm(x, q, None, pl, cfg), copies, x16, p)
        recs.append(dict(base, m=16, kind="smallm", cfg=f"n{bn}k{bk}mk{mk}", us=us))
    for m in (1, 16):
        rs = [r for r in recs if r["m"] == m]
        best = min(rs, key=lambda r: r["us"])
        print(f"{n}x{k} b{bits}g{g} M={m}: best {best['cfg']}={best['us']:.1f} | "
              + " ".join(f"{r['cfg']}={r['us']:.1f}" for r in rs), flush=True)
    return recs
