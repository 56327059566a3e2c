"""Compile every Triton kernel of gqsa for an H100 (sm_90) on a machine without a GPU.

The CPU test suite runs the kernels through Triton's interpreter, which executes their
Python semantics but never lowers them; code the interpreter accepts can still fail
in Triton's compiler on the GPU (a nested jit function's constexpr default argument
did, once). This builds each kernel down to a cubin with the ptxas that ships in
Triton's wheel, at the constants the wrappers use, so CI catches such errors too.

Run: ``python -m gqsa.bench.aot`` (prints one line per kernel variant). It must not
run under ``TRITON_INTERPRET=1``: the interpreter replaces the kernels it compiles.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

CAPABILITY = 90  # H100
SMEM_LIMIT = 232448  # bytes of shared memory one H100 block may use


def compile_kernel(fn, pointers: dict[str, str], consts: dict, num_warps: int = 4, num_stages: int = 3,
                   aligned: tuple[str, ...] = ()):
    """Compile the jit function ``fn`` for sm_90: ``pointers`` name -> Triton pointer type
    (other runtime arguments are i32), ``consts`` name -> constexpr value; ``aligned`` names the
    arguments to treat as multiples of 16, as the JIT does for aligned tensors and such ints
    (it decides the width of vector loads)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    names = fn.arg_names
    sig = {n: "constexpr" if n in consts else pointers.get(n, "i32") for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    src = ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in consts.items()}, attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", CAPABILITY, 32),
                            options=dict(num_warps=num_warps, num_stages=num_stages))
    if kernel.metadata.shared > SMEM_LIMIT:  # the launch would fail with OutOfResources
        raise ValueError(f"needs {kernel.metadata.shared} B of shared memory, sm_{CAPABILITY} has {SMEM_LIMIT}")
    return kernel


FORMATS = [(16, 4), (8, 3), (128, 2), (32, 8), (64, 3)]
PACKED = dict(codes_ptr="*u8", col_ptr="*i16", scale_ptr="*fp16", zero_ptr="*u8", row_ptr_ptr="*i32",
              words_ptr="*i32", prefix_ptr="*i32", cnt_ptr="*i32", ws_ptr="*fp32", y32_ptr="*fp32",
              prog_rows_ptr="*i32")


PACKED_V2 = dict(col_ptr="*u8", scode_ptr="*u8", row_factor_ptr="*fp32")  # the lean format's plan and metadata


def pointer_types(dtype: str) -> dict:
    """Triton pointer type of every pointer argument of the kernels, activations in ``dtype``."""
    return dict(x_ptr=f"*{dtype}", bias_ptr=f"*{dtype}", y_ptr=f"*{dtype}", out_ptr=f"*{dtype}", **PACKED)


def variants() -> list[tuple[str, Callable[[], object]]]:
    """(name, compile thunk) for each kernel at the constants its wrapper launches with."""
    from gqsa.bench.floor import _read_kernel
    from gqsa.bench.sparse24 import _gemv24_kernel
    from gqsa.kernels.dispatch import gemm_config
    from gqsa.kernels.gemm import _dequant_kernel, _gemm_kernel, gemm_block_kg
    from gqsa.kernels.gemv import (
        _gemv_rows_kernel,
        _gemv_tasks_kernel,
        decode_layout,
        default_config,
    )
    from gqsa.format_v2 import SCALE_LEVELS, SPAN_OCTAVES
    from gqsa.kernels.gemv_v2 import _gemv_v2_rows_kernel
    from gqsa.kernels.jit import layout_meta
    from gqsa.kernels.smallm import _smallm_kernel
    out = []
    for i, (g, bits) in enumerate(FORMATS):
        dt = ("fp16", "bf16")[i % 2]
        lay = layout_meta(g, bits)
        block_b = (1, 4, 2, 16, 1)[i]
        cfg = default_config(g, block_b, 64.0)
        dec = decode_layout(g, bits)
        rows = dict(HAS_BIAS=i % 2 == 0, BLOCK_B=block_b, BLOCK_R=cfg.block_r, BLOCK_G=cfg.block_g, WHILE=False,
                    STEPS=(2, 0, 0, 4, 3)[i], ROW_LEN=(128, 0, 0, 0, 0)[i], W_POLICY=("", "evict_first")[i % 2],
                    X_POLICY=("", "evict_last")[i % 2], **dec)
        out.append((f"gemv rows G{g} b{bits} {dt}", lambda rows=rows, dt=dt:
                    compile_kernel(_gemv_rows_kernel, pointer_types(dt), rows)))
        v2 = dict(rows, SCALE_STEP=SPAN_OCTAVES / SCALE_LEVELS, TOP=float(SCALE_LEVELS))
        out.append((f"gemv v2 rows G{g} b{bits} {dt}", lambda v2=v2, dt=dt:
                    compile_kernel(_gemv_v2_rows_kernel, {**pointer_types(dt), **PACKED_V2}, v2)))
        tasks = dict(HAS_BIAS=True, SPLIT_MODE=i % 2, BLOCK_B=1, BLOCK_R=cfg.block_r, BLOCK_G=cfg.block_g,
                     WS_STRIDE=16, WHILE=False, **dec)
        out.append((f"gemv tasks G{g} b{bits} {dt}", lambda tasks=tasks, dt=dt:
                    compile_kernel(_gemv_tasks_kernel, pointer_types(dt), tasks)))
        small = dict(HAS_BIAS=i % 2 == 1, BLOCK_M=(16, 32)[i % 2], BLOCK_N=32, BLOCK_KG=4, NWB=2,
                     INTERP=False, SPLIT=(8, 1, 3, 2, 1)[i], **lay)
        out.append((f"smallm G{g} b{bits} {dt}", lambda small=small, dt=dt:
                    compile_kernel(_smallm_kernel, pointer_types(dt), small, num_stages=1)))
        gcfg = gemm_config((17, 40)[i % 2])  # the dispatcher's tiles, at its stages
        gemm = dict(HAS_BIAS=True, SPLIT=i % 2 == 0, BLOCK_M=gcfg.block_m, BLOCK_N=gcfg.block_n,
                    BLOCK_KG=gemm_block_kg(gcfg, g), INTERP=False, **lay)
        out.append((f"gemm G{g} b{bits} {dt}", lambda gemm=gemm, dt=dt, gcfg=gcfg: compile_kernel(
            _gemm_kernel, pointer_types(dt), gemm, gcfg.num_warps, gcfg.num_stages)))
        deq = dict(BLOCK_N=32, BLOCK_KG=max(1, 128 // g), **lay)
        out.append((f"dequant G{g} b{bits} {dt}", lambda deq=deq, dt=dt:
                    compile_kernel(_dequant_kernel, pointer_types(dt), deq)))
    out.append(("read floor", lambda: compile_kernel(_read_kernel, dict(src_ptr="*i32", out_ptr="*i32"),
                                                     dict(BLOCK=2048))))
    for int4 in (False, True):
        ptrs = dict(x_ptr="*fp16", vals_ptr="*fp16", vq_ptr="*i32", meta_ptr="*i32", s_ptr="*fp32",
                    z_ptr="*fp32", y_ptr="*fp16")
        out.append((f"sparse24 int4={int4}", lambda ptrs=ptrs, int4=int4: compile_kernel(
            _gemv24_kernel, ptrs, dict(K=4096, INT4=int4, BLOCK_B=1, BLOCK_N=4, BLOCK_W=8))))
    return out


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("gqsa.bench.aot: unset TRITON_INTERPRET (the interpreter does not compile)", file=sys.stderr)
        return 2
    failed = 0
    for name, build in variants():
        t0 = time.time()
        try:
            build()
            print(f"ok    {name} ({time.time() - t0:.1f} s)", flush=True)
        except Exception as e:  # report every failing kernel, not just the first
            failed += 1
            cause = e
            while cause.__cause__ is not None:
                cause = cause.__cause__
            print(f"FAIL  {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                  f"<- {type(cause).__name__}: {cause}", flush=True)
    print(f"{failed} of {len(variants())} kernel variants failed to compile for sm_{CAPABILITY}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
