"""The timed methods of the kernel benchmark (:mod:`gqsa.bench.kernels`): baselines and gqsa's
paths on one layer shape, each over enough weight copies to miss the L2. CUDA and Triton needed.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from triton.errors import TritonError

from gqsa.bench.floor import read_floor_us
from gqsa.bench.sparse24 import gemv24, pack_24, quantize_24_int4
from gqsa.bench.synth import random_packed
from gqsa.bench.timing import copies_for, time_rotating
from gqsa.format import PackedGQS
from gqsa.kernels import ops
from gqsa.kernels.gemm import gqs_dense_linear, gqs_gemm
from gqsa.kernels.gemv import gqs_gemv
from gqsa.kernels.plan import KernelPlan, build_plan
from gqsa.kernels.smallm import MAX_M as SMALLM_MAX
from gqsa.kernels.smallm import gqs_smallm

DECODE_MAX = 16
DETAIL_BATCHES = (1, 16, 128)  # batches at which each gqsa kernel is timed beside the dispatch path
DEVICE = "cuda"  # the benchmark's device (a CPU dry run under TRITON_INTERPRET sets "cpu")


def _clone_packed(p: PackedGQS) -> PackedGQS:
    return PackedGQS(p.codes.clone(), p.col_idx.clone(), p.row_ptr.clone(), p.scales.clone(), p.zeros.clone(),
                     p.out_features, p.in_features, p.group_size, p.bits)


def layer_copies(p: PackedGQS) -> list[tuple[PackedGQS, KernelPlan]]:
    """Enough copies of a packed layer to miss the L2, each with its own kernel plan (its bitmask
    is read by the small-batch and prefill kernels, so a shared plan would be served from L2)."""
    copies = [p] + [_clone_packed(p) for _ in range(copies_for(p.nbytes()) - 1)]
    return [(q, build_plan(q)) for q in copies]


def baseline_weights(n: int, k: int, seed: int) -> dict[str, Callable[[], tuple[int, Callable]]]:
    """Builders of each baseline: () -> (bytes of one weight copy, make() -> fn(x) over a fresh copy).

    int4_tinygemm takes bf16 activations (its only dtype); the others fp16.
    """
    gen = torch.Generator(device=DEVICE).manual_seed(seed)

    def fp16():
        w = torch.randn(n, k, generator=gen, device=DEVICE, dtype=torch.float16) * 0.02
        return w.numel() * 2, lambda: (lambda x, w=w.clone(): F.linear(x, w))

    def tinygemm():
        wq = torch.randint(0, 256, (n, k // 2), generator=gen, device=DEVICE, dtype=torch.uint8)
        packed = torch.ops.aten._convert_weight_to_int4pack(wq, 8)
        sz = (torch.rand(k // 128, n, 2, generator=gen, device=DEVICE) * 0.02).to(torch.bfloat16)
        nbytes = packed.numel() * packed.element_size() + sz.numel() * 2
        return nbytes, lambda: (lambda x, p=packed.clone(), s=sz.clone():
                                torch.ops.aten._weight_int4pack_mm(x, p, 128, s))

    def cslt():
        from torch.sparse import to_sparse_semi_structured
        _, _, dense = pack_24(torch.randn(n, k, generator=gen, device=DEVICE, dtype=torch.float16))
        return n * k * 9 // 16, lambda: (lambda x, w=to_sparse_semi_structured(dense.clone()): F.linear(x, w))

    def t24(int4: bool):
        vals, meta, _ = pack_24(torch.randn(n, k, generator=gen, device=DEVICE, dtype=torch.float16))
        if not int4:
            return n * k * 9 // 16, lambda: (lambda x, v=vals.clone(), m=meta.clone(): gemv24(x, m, vals=v))
        vq, s, z, _ = quantize_24_int4(vals)
        nbytes = vq.numel() * 4 + meta.numel() * 4 + s.numel() * 4
        return nbytes, lambda: (lambda x, a=vq.clone(), m=meta.clone(), b=s.clone(), c=z.clone():
                                gemv24(x, m, vq=a, scales=b, zeros=c))

    return {"fp16": fp16, "int4_tinygemm": tinygemm, "sparse24_cslt": cslt,
            "triton24_fp16": lambda: t24(False), "triton24_int4": lambda: t24(True)}


def gqsa_variants(schedule: str, m: int, detail: bool) -> dict[str, Callable]:
    """Makers ``(packed, plan) -> fn(x)`` for one layer copy: the dispatch path, and with
    ``detail`` each kernel."""
    v = {"": lambda q, pl: (lambda x: ops.call(x, q, None, pl, schedule))}
    if not detail or m not in DETAIL_BATCHES:
        return v
    from gqsa.kernels.dispatch import gemm_config
    if m <= DECODE_MAX:
        v["_rows"] = lambda q, pl: (lambda x: gqs_gemv(x, q, None, pl, "rows"))
        v["_tasks"] = lambda q, pl: (lambda x: gqs_gemv(x, q, None, pl, "tasks"))
    if 1 < m <= SMALLM_MAX:
        v["_smallm"] = lambda q, pl: (lambda x: gqs_smallm(x, q, None, pl))
    if m > 1:
        v["_gemm"] = lambda q, pl: (lambda x: gqs_gemm(x, q, None, pl, gemm_config(m)))
    if m > DECODE_MAX:
        v["_dense"] = lambda q, pl: (lambda x: gqs_dense_linear(x, q, None, pl))
    return v


def time_method(make: Callable[[], Callable], copies: int, x: torch.Tensor) -> tuple[float, bool]:
    fns = [make() for _ in range(copies)]
    return time_rotating([lambda f=f: f(x) for f in fns])


def bench_shape(n: int, k: int, batches, sparsities, seed: int, skip: set[str], detail: bool,
                formats: tuple[tuple[int, int], ...] = ()) -> list[dict]:
    """All methods on one shape; one record per (method, batch). ``detail`` adds each gqsa kernel
    and the layer-balanced row pattern at S50; ``formats`` ((bits, G) pairs) other formats at S50."""
    recs = []
    xs = {m: torch.randn(m, k, device=DEVICE, dtype=torch.float16) for m in batches}
    xs_bf16 = {m: x.to(torch.bfloat16) for m, x in xs.items()}
    for name, build in baseline_weights(n, k, seed).items():
        if name in skip:
            continue
        try:
            nbytes, make = build()
        except (RuntimeError, ValueError) as e:  # a baseline missing on this build: report, go on
            recs.append(dict(n=n, k=k, method=name, error=str(e)[:200]))
            continue
        for m in batches:
            if name.startswith("triton24") and m > DECODE_MAX:
                continue
            try:
                x = xs_bf16[m] if name == "int4_tinygemm" else xs[m]
                us, graph = time_method(make, copies_for(nbytes), x)
                recs.append(dict(n=n, k=k, m=m, method=name, us=us, graph=graph, bytes=nbytes))
            except (RuntimeError, ValueError) as e:
                recs.append(dict(n=n, k=k, m=m, method=name, error=str(e)[:200]))
        torch.cuda.empty_cache()
    cases = [(s, "uniform") for s in sparsities] + ([(0.5, "layer")] if detail and 0.5 in sparsities else [])
    for s, pattern in cases:
        recs += bench_gqsa(n, k, s, pattern, xs, seed, detail)
    for bits, g in formats:
        if (bits, g) != (4, 16):
            recs += bench_gqsa(n, k, 0.5, "uniform", xs, seed, False, bits, g)
    return recs


def bench_gqsa(n: int, k: int, s: float, pattern: str, xs: dict, seed: int, detail: bool, bits: int = 4,
               group_size: int = 16) -> list[dict]:
    """gqsa (W4 G16 unless told) at sparsity s on one shape, every batch of ``xs``."""
    from gqsa.kernels.dispatch import choose_schedule
    p = random_packed(n, k, group_size, bits, s, pattern, DEVICE, seed)
    sched = choose_schedule(p.row_ptr)
    copies = layer_copies(p)
    name = f"gqsa_S{round(s * 100)}" + ("" if pattern == "uniform" else f"_{pattern}")
    name += "" if (bits, group_size) == (4, 16) else f"_b{bits}g{group_size}"
    floor_us = read_floor_us(p.nbytes())[0]
    recs = []
    for m, x in xs.items():
        variants = gqsa_variants(sched, m, detail and pattern == "uniform")
        for suffix, make in variants.items():
            fns = [make(q, pl) for q, pl in copies]
            try:
                us, graph = time_rotating([lambda f=f: f(x) for f in fns])
            except (RuntimeError, ValueError, TritonError) as e:  # e.g. a tile over the shared memory: report, go on
                print(f"FAILED {name + suffix} {n}x{k} M={m}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                recs.append(dict(n=n, k=k, m=m, method=name + suffix, error=str(e)[:200]))
                continue
            recs.append(dict(n=n, k=k, m=m, method=name + suffix, us=us, graph=graph, bytes=p.nbytes(), nnz=p.nnz,
                             schedule=sched, floor_us=floor_us))
    if detail and pattern == "uniform":
        recs += bench_v2(p, xs, name, floor_us)
    del copies, p
    torch.cuda.empty_cache()
    return recs


def bench_v2(p: PackedGQS, xs: dict, name: str, v1_floor_us: float) -> list[dict]:
    """The v2 decode kernel (:mod:`gqsa.kernels.gemv_v2`, not yet in the dispatch path) on the same
    layer as ``p`` converted to format v2, batches up to 16: records ``{name}_v2`` with the bytes it
    reads (the lean tensors and its plan's row pointers, columns and row factors) and their read floor."""
    from gqsa.format_v2 import from_v1
    from gqsa.kernels.gemv_v2 import build_plan_v2, gqs_gemv_v2
    p2 = from_v1(p)[0]
    plan = build_plan_v2(p2)
    # what the kernel reads: the stored tensors but the row codes and the layer factor, which the plan
    # decodes into float32 row factors, plus the plan's columns and row pointers
    nbytes = (p2.nbytes() - p2.row_code.numel() - 4 * p2.layer_scale.numel() + 4 * plan.row_factor.numel()
              + plan.col.numel() * plan.col.element_size() + plan.row_ptr.numel() * 4)
    copies = [(p2, plan)] + [(q, build_plan_v2(q)) for q in (_clone_v2(p2) for _ in range(copies_for(nbytes) - 1))]
    floor_us = read_floor_us(nbytes)[0]
    recs = []
    for m, x in xs.items():
        if m > DECODE_MAX:
            continue
        fns = [lambda x=x, q=q, pl=pl: gqs_gemv_v2(x, q, None, pl) for q, pl in copies]
        try:
            us, graph = time_rotating(fns)
        except (RuntimeError, ValueError, TritonError) as e:
            print(f"FAILED {name}_v2 {p.out_features}x{p.in_features} M={m}: {str(e)[:200]}", flush=True)
            recs.append(dict(n=p.out_features, k=p.in_features, m=m, method=name + "_v2", error=str(e)[:200]))
            continue
        recs.append(dict(n=p.out_features, k=p.in_features, m=m, method=name + "_v2", us=us, graph=graph,
                         bytes=nbytes, nnz=p.nnz, floor_us=floor_us, v1_floor_us=v1_floor_us))
    return recs


def _clone_v2(p):
    from dataclasses import replace

    from gqsa.format_v2 import TENSOR_NAMES_V3
    return replace(p, **{t: getattr(p, t).clone() for t in TENSOR_NAMES_V3})
