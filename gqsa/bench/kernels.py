"""Kernel benchmark: gqsa's GQS linear against FP16 cuBLAS, int4 tinygemm and 2:4 kernels.

Every method runs in the same process on the same activations, each weight rotated
through enough copies to miss the L2 (:mod:`gqsa.bench.timing`), timed as
back-to-back calls in a CUDA graph. Methods:

==============  =================================================================
fp16            ``F.linear`` on a dense fp16 weight (cuBLAS)
int4_tinygemm   ``aten._weight_int4pack_mm``, bf16 activations, group 128
sparse24_cslt   PyTorch 2:4 semi-structured (``to_sparse_semi_structured``), fp16
triton24_fp16   gqsa's Triton 2:4 decode kernel, fp16 values + 2-bit metadata
triton24_int4   the same with 4-bit values, group 128 (:mod:`gqsa.bench.sparse24`)
gqsa_S{s}       packed GQS, W4 G16, sparsity s; the dispatch path (:mod:`ops`)
gqsa_S{s}_rows  decode kernel, rows schedule (batch 1 and 16)
gqsa_S{s}_tasks decode kernel, tasks schedule (batch 1 and 16)
gqsa_S{s}_smallm small-batch tensor-core kernel (batch 16)
gqsa_S{s}_gemm  split-K Triton sparse GEMM (batch 16 and 128)
gqsa_S{s}_dense dequantize + cuBLAS (batch 128)
gqsa_S{s}_v2    the v2 decode kernel (gqsa.kernels.gemv_v2, not yet dispatched), batch <= 16
gqsa_S50_layer  dispatch path on layer-balanced rows (llama2-7b only)
gqsa_S50_b{b}g{G} dispatch path for another bit width / group size (``--formats``, S50, uniform)
==============  =================================================================

Bandwidth is the packed bytes (all five tensors) over the time, as a fraction of
the device-to-device copy bandwidth measured in the same run. Beside it, every gqsa
record carries ``floor_us``: the time a kernel that only reads the same number of
bytes once takes in the same harness (:mod:`gqsa.bench.floor`), the real limit for a
layer of a few megabytes, where launch and ramp-up cost as much as the stream.

Run: ``python -m gqsa.bench.kernels --out DIR`` (the CLI wires it as ``gqsa bench kernels``).

The timed methods live in :mod:`gqsa.bench.methods`; this module parses the options first
and imports them (and Triton) after, so ``--help`` works on any machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os

import torch

from gqsa.bench import report, require_triton
from gqsa.bench.timing import copy_bandwidth
from gqsa.format import SUPPORTED_BITS, SUPPORTED_GROUP_SIZES

SHAPES = {  # (N, K) = (out_features, in_features)
    "llama2-7b": [(4096, 4096), (11008, 4096), (4096, 11008)],
    "llama2-13b": [(5120, 5120), (13824, 5120), (5120, 13824)],
    "llama3-8b": [(14336, 4096), (4096, 14336)],
    "qwen2.5-7b": [(3584, 3584), (18944, 3584), (3584, 18944)],
    "llama2-70b": [(8192, 8192), (28672, 8192), (8192, 28672), (1024, 8192)],
}
BATCHES = (1, 2, 4, 8, 16, 32, 128)
SPARSITIES = (0.0, 0.2, 0.5, 0.7)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="gqsa bench kernels", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench_out", help="folder for kernels.json (and kernels.png)")
    ap.add_argument("--models", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--batches", nargs="*", type=int, default=list(BATCHES))
    ap.add_argument("--sparsities", nargs="*", type=float, default=list(SPARSITIES))
    ap.add_argument("--trim", action="store_true",
                    help="models other than llama2-7b: batch 1 and 16, S50, dispatch path only (time-limited runs)")
    ap.add_argument("--skip", nargs="*", default=[], help="baseline names to leave out")
    ap.add_argument("--formats", nargs="*", default=[], metavar="BITS:G",
                    help="other formats to time at S50 on llama2-7b (or every model without --trim), "
                         "e.g. 2:16 3:16 8:16 4:8 4:32 4:64 4:128")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def parse_formats(specs: list[str]) -> tuple[tuple[int, int], ...]:
    """``["2:16", "4:128"]`` -> ((2, 16), (4, 128)); a clear error for anything else."""
    out = []
    for spec in specs:
        bits, _, g = spec.partition(":")
        if not (bits.isdigit() and g.isdigit()) or int(bits) not in SUPPORTED_BITS or int(g) not in SUPPORTED_GROUP_SIZES:
            raise SystemExit(f"--formats takes BITS:G with BITS in 2,3,4,8 and G in 8..128, got {spec!r}")
        out.append((int(bits), int(g)))
    return tuple(out)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, write OUT/kernels.json (+ kernels.png), print the summary table."""
    args = parse_args(argv)
    require_triton("gqsa bench kernels")
    if not torch.cuda.is_available():
        raise SystemExit("gqsa bench kernels needs a CUDA GPU")
    from gqsa.bench.methods import bench_shape
    os.makedirs(args.out, exist_ok=True)
    result = dict(device=torch.cuda.get_device_name(), date=datetime.datetime.now().isoformat(timespec="seconds"),
                  torch=torch.__version__, copy_bw=copy_bandwidth(), records=[])
    for model in args.models:
        batches, sparsities, detail, formats = args.batches, args.sparsities, True, parse_formats(args.formats)
        if args.trim and model != "llama2-7b":
            batches, sparsities, detail, formats = [b for b in batches if b in (1, 16)], [0.5], False, ()
        for n, k in SHAPES[model]:
            recs = bench_shape(n, k, batches, sparsities, args.seed, set(args.skip), detail, formats)
            for r in recs:
                r["model"] = model
            result["records"] += recs
            with open(os.path.join(args.out, "kernels.json"), "w") as f:  # after each shape: a cut run keeps it
                json.dump(result, f, indent=1)
            print(f"done {model} {n}x{k}", flush=True)
    report.print_formats(result)
    report.print_kernel_table(result)
    report.plot_kernels(result, os.path.join(args.out, "kernels.png"))
    return result


if __name__ == "__main__":
    main()
