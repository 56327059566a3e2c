"""Instruction mix of the decode kernel as compiled for an H100, without a GPU.

The decode kernel is bound by issuing instructions and by load latency, not by
bytes (docs/engine.md §5.8): every format with the same number of 16-weight lanes
runs in about the same time. This counts the SASS instructions of one program of the
batch-1 kernel at the tile the dispatcher picks for 11008x4096 S50 W4 G16 (4 rows x 32
lanes, 4 unrolled steps), so a change to the kernel can be judged by its cost per
weight before any device time is spent. Arguments are specialised as the JIT
specialises them for aligned tensors, which decides the width of vector loads.

Run: ``python -m gqsa.bench.sass`` (needs Triton's bundled ``nvdisasm``).
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import tempfile

ALIGNED = ("x_ptr", "codes_ptr", "col_ptr", "scale_ptr", "zero_ptr", "row_ptr_ptr", "y_ptr", "stride_xb",
           "stride_yb", "N", "nnz")


def instruction_mix(cubin: bytes) -> collections.Counter:
    """Count of each SASS opcode (with the width suffix for loads and stores) in a cubin."""
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([tool, "-c", f.name], capture_output=True, text=True, check=True).stdout
    ops: collections.Counter = collections.Counter()
    for line in sass.splitlines():
        m = re.search(r"/\*[0-9a-f]{4}\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(\.[A-Z0-9_.]*)?", line)
        if m:
            ops[m.group(2) + ((m.group(3) or "") if m.group(2) in ("LDG", "LDS", "STS", "STG") else "")] += 1
    return ops


def decode_mix(group_size: int = 16, bits: int = 4) -> tuple[collections.Counter, int]:
    """(instruction mix, weights per thread) of one batch-1 decode program at the 4 x 32-lane tile."""
    from gqsa.bench.aot import compile_kernel, pointer_types
    from gqsa.kernels.gemv import _gemv_rows_kernel, decode_layout
    lay = decode_layout(group_size, bits)
    steps = 4
    consts = dict(HAS_BIAS=False, BLOCK_B=1, BLOCK_R=4, BLOCK_G=32, WHILE=False, STEPS=steps,
                  ROW_LEN=steps * 32 // lay["R"], W_POLICY="", X_POLICY="", **lay)
    k = compile_kernel(_gemv_rows_kernel, pointer_types("fp16"), consts, aligned=ALIGNED)
    return instruction_mix(k.asm["cubin"]), steps * 4 * 32 * lay["SG"] // 128


def main() -> None:
    for g, bits in ((16, 4), (16, 2), (128, 4)):
        ops, per_thread = decode_mix(g, bits)
        total = sum(ops.values())
        top = ", ".join(f"{op} {n}" for op, n in ops.most_common(10))
        print(f"G{g} b{bits}: {total} instructions per thread for {per_thread} weights "
              f"({total / per_thread:.2f} per weight) | {top}")


if __name__ == "__main__":
    main()
