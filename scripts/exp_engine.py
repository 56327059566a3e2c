"""Experiment (one device call): decode-kernel metadata layout and launch tiles vs the read floor.

For the LLaMA-2-7B shapes at S50 W4 G16 (uniform and layer-balanced rows), batch 1/2/4:
the decode kernel reading column/scale/zero from three arrays (format v1) or from one
packed int32 word per group (gqsa.kernels.plan.meta_words), over a few tiles; FP16
cuBLAS and tinygemm beside; and the read floor for the same bytes. Every variant is
checked against the reference first. Run: PYTHONPATH=. python scripts/exp_engine.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from gqsa.bench.floor import read_floor_us
from gqsa.bench.kernels import _clone_packed, baseline_weights
from gqsa.bench.synth import random_packed
from gqsa.bench.timing import copies_for, time_rotating
from gqsa.kernels.gemv import GemvConfig, gqs_gemv
from gqsa.kernels.plan import build_plan, meta_words
from gqsa.kernels.reference import gqs_linear_ref

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]
TILES = {1: [None, (2, 64, 4), (1, 128, 4), (2, 64, 2), (4, 32, 4), (1, 64, 2), (4, 64, 8)],
         2: [None, (2, 64, 4), (1, 64, 2)], 4: [None, (2, 32, 4), (1, 64, 4)]}


def check(y, x, p):
    ref = gqs_linear_ref(x.float(), p)
    err = ((y.float() - ref).norm() / ref.norm()).item()
    assert err <= 1e-2, err


def run_shape(n, k, pattern, out):
    p = random_packed(n, k, 16, 4, 0.5, pattern, "cuda", 0)
    plan = build_plan(p)
    copies = [p] + [_clone_packed(p) for _ in range(copies_for(p.nbytes()) - 1)]
    words = [meta_words(q) for q in copies]
    floor, blk = read_floor_us(p.nbytes())
    v1_bytes = p.nbytes()
    v2_bytes = v1_bytes - p.nnz * 5 + p.nnz * 4
    floor2, _ = read_floor_us(v2_bytes)
    recs = [dict(n=n, k=k, pattern=pattern, kind="floor_v1", us=floor, bytes=v1_bytes, block=blk),
            dict(n=n, k=k, pattern=pattern, kind="floor_meta", us=floor2, bytes=v2_bytes)]
    for m, tiles in TILES.items():
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        for tile in tiles:
            cfg = GemvConfig(*tile) if tile else None
            for kind, ws in (("v1", [None] * len(copies)), ("meta", words)):
                fn = lambda q, w: (lambda: gqs_gemv(x, q, None, plan, "rows", config=cfg, words=w))
                check(fn(p, ws[0])(), x, p)
                us = time_rotating([fn(q, w) for q, w in zip(copies, ws)])[0]
                recs.append(dict(n=n, k=k, pattern=pattern, m=m, kind=kind, tile=str(tile), us=us))
                print(recs[-1], flush=True)
        if pattern == "uniform":
            for name, build in baseline_weights(n, k, 0).items():
                if name not in ("fp16", "int4_tinygemm"):
                    continue
                nbytes, make = build()
                xx = x.to(torch.bfloat16) if name == "int4_tinygemm" else x
                fns = [make() for _ in range(copies_for(nbytes))]
                us = time_rotating([lambda f=f: f(xx) for f in fns])[0]
                recs.append(dict(n=n, k=k, pattern=pattern, m=m, kind=name, us=us))
                print(recs[-1], flush=True)
    print(recs[0], recs[1], flush=True)
    out.extend(recs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    recs = []
    for pattern in ("uniform", "layer"):
        for n, k in SHAPES:
            run_shape(n, k, pattern, recs)
            json.dump(recs, open(os.path.join(args.out, "exp_engine.json"), "w"), indent=1)
    summary(recs)


def summary(recs):
    print("\nshape pattern m | floor_v1 floor_meta | best v1 (tile) | best meta (tile) | fp16 tinygemm")
    for pattern in ("uniform", "layer"):
        for n, k in SHAPES:
            sel = [r for r in recs if r["n"] == n and r["k"] == k and r["pattern"] == pattern]
            fl = {r["kind"]: r["us"] for r in sel if r["kind"].startswith("floor")}
            for m in TILES:
                rows = [r for r in sel if r.get("m") == m]
                b = {kd: min((r for r in rows if r["kind"] == kd), key=lambda r: r["us"], default=None)
                     for kd in ("v1", "meta", "fp16", "int4_tinygemm")}
                dflt = {kd: next((r["us"] for r in rows if r["kind"] == kd and r["tile"] == "None"), 0)
                        for kd in ("v1", "meta")}
                f = lambda r: f"{r['us']:6.1f} ({r.get('tile')})" if r else "   -  "
                print(f"{n}x{k} {pattern} {m} | {fl.get('floor_v1', 0):5.1f} {fl.get('floor_meta', 0):5.1f} | "
                      f"dflt v1 {dflt['v1']:5.1f} meta {dflt['meta']:5.1f} | {f(b['v1'])} | {f(b['meta'])} | "
                      f"{f(b['fp16'])} {f(b['int4_tinygemm'])}")


if __name__ == "__main__":
    main()
