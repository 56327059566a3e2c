"""Sweep the kernels' launch parameters and schedules; the numbers behind the defaults.

Decode: on the LLaMA-2-7B shapes at S50 (uniform and layer-balanced rows), the rows
schedule over tile configs at batch 1 (and 4, 8, 16 on one shape); the tasks schedule
over programs per SM and the two ways of combining cut rows. Small M: decode kernel,
split-K tensor-core GEMM tiles and dequantize + cuBLAS, with FP16 cuBLAS beside.
Every variant is checked against the reference before it is timed.

Run: ``python -m gqsa.bench.tune --out DIR`` (writes DIR/tune.json, prints a summary).

The sweeps live in :mod:`gqsa.bench.sweeps`; this module parses the options first and
imports them (and Triton) after, so ``--help`` works on any machine.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from gqsa.bench import require_triton
from gqsa.bench.kernels import parse_formats
from gqsa.bench.report import print_tune_summary


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="gqsa bench tune", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--patterns", nargs="*", default=["uniform", "layer"])
    ap.add_argument("--no-prefill", action="store_true")
    ap.add_argument("--smallm", action="store_true",
                    help="only the small-batch kernel's cap on group columns per program, batch 8 and 16")
    ap.add_argument("--smallm-tiles", action="store_true",
                    help="only the small-batch kernel's tiles (gqsa.bench.sweeps.SMALLM_TILES) at batch 8, 16, 32 "
                         "on the LLaMA-2-7B shapes")
    ap.add_argument("--decode-only", action="store_true",
                    help="only the rows-schedule tiles at batch 1 and 2 on every shape and pattern")
    ap.add_argument("--small-m", action="store_true",
                    help="only the small-M crossover (decode, small-batch, split-K GEMM, dense, FP16) on every shape")
    ap.add_argument("--formats", nargs="*", metavar="BITS:G",
                    help="only the decode (batch 1) and small-batch (batch 16) tiles of these formats")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the sweeps the options select; write OUT/tune*.json, print the summary."""
    args = parse_args(argv)
    require_triton("gqsa bench tune")
    if not torch.cuda.is_available():
        raise SystemExit("gqsa bench tune needs a CUDA GPU")
    from gqsa.bench.sweeps import (
        FORMAT_SHAPES,
        SHAPES,
        SMALLM_SHAPES,
        sweep_format,
        sweep_rows,
        sweep_small_m,
        sweep_smallm,
        sweep_smallm_tiles,
        sweep_tasks,
    )
    os.makedirs(args.out, exist_ok=True)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    recs = []

    def save(name: str = "tune.json") -> None:  # after each sweep: a cut run keeps what it measured
        with open(os.path.join(args.out, name), "w") as f:
            json.dump(recs, f)
    if args.smallm_tiles:
        for m in (8, 16, 32):
            for n, k in SHAPES:
                recs += sweep_smallm_tiles(n, k, m)
                save("tune_smallm_tiles.json")
        return recs
    if args.small_m:
        for n, k in SHAPES:
            recs += sweep_small_m(n, k)
            save("tune_small_m.json")
        print_tune_summary(recs)
        return recs
    if args.formats:
        for bits, g in parse_formats(args.formats):
            for n, k in FORMAT_SHAPES:
                recs += sweep_format(n, k, g, bits)
                save("tune_formats.json")
        return recs
    if args.smallm:
        for n, k in SMALLM_SHAPES:
            for m in (8, 16):
                recs += sweep_smallm(n, k, m)
        save("tune_smallm.json")
        return recs
    for n, k in SHAPES:
        for pattern in args.patterns:
            for m in (1, 2) if args.decode_only else (1,):
                recs += sweep_rows(n, k, pattern, m)
        save()
    if args.decode_only:
        print_tune_summary(recs)
        return recs
    for m in (4, 8, 16):
        recs += sweep_rows(11008, 4096, "uniform", m)
    for pattern in ("uniform", "heavy"):
        recs += sweep_tasks(11008, 4096, pattern, sms)
    save()
    print("decode sweeps done", flush=True)
    if not args.no_prefill:
        for n, k in SHAPES[:2]:
            recs += sweep_small_m(n, k)
            save()
    print_tune_summary(recs)
    return recs


if __name__ == "__main__":
    main()
