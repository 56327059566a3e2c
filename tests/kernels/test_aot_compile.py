"""Every Triton kernel compiles for an H100 (sm_90), checked on any machine, GPU or not.

The interpreter tests run the kernels' semantics on CPU but never lower them, so a
construct only the GPU compiler rejects would first fail on the device. This runs
``python -m gqsa.bench.aot`` in a fresh process (no TRITON_INTERPRET, an empty
Triton cache) and requires every variant to compile with the ptxas in Triton's wheel.
The instruction budget of the decode kernel holds for the Triton it was measured with
(SASS_TRITON, the GPU image's and the ``test`` extra's); other versions skip it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")
SASS_TRITON = "3.6"  # the Triton release the SASS budget below was calibrated on
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


@pytest.mark.skipif(not os.path.exists(PTXAS), reason="this Triton build ships no ptxas")
def test_all_kernels_compile_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    run = subprocess.run([sys.executable, "-m", "gqsa.bench.aot"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "0 of " in run.stdout and run.stdout.count("\nok ") + run.stdout.startswith("ok ") >= 20


NVDISASM = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")


@pytest.mark.skipif(not (os.path.exists(PTXAS) and os.path.exists(NVDISASM)), reason="no ptxas/nvdisasm")
@pytest.mark.skipif(not triton.__version__.startswith(SASS_TRITON + "."),
                    reason=f"the SASS budget was calibrated on Triton {SASS_TRITON}.x "
                           f"(pip install 'triton=={SASS_TRITON}.*' or the test extra); installed: {triton.__version__}")
def test_decode_kernel_loads_whole_lanes_per_thread(tmp_path):
    """The batch-1 decode kernel as the JIT specialises it (4 steps of 16-weight lanes per thread):
    per lane and step one 64-bit load of the codes and two 128-bit loads of activations, one
    int-to-float conversion per weight, and cross-thread traffic only for the final row sum
    (5 shuffles over 32 lanes, one shared-memory round trip to store) (docs/engine.md §5.8)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    code = ("from gqsa.bench.sass import decode_mix; ops, n = decode_mix(); "
            "print(n, ops['LDG.E.64'], ops['LDG.E.128'], ops['I2FP'], ops['SHFL'], ops['LDS.U16'], ops['BAR'])")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    weights, ldg64, ldg128, i2f, shfl, lds, bar = (int(v) for v in run.stdout.split())
    assert (ldg64, ldg128, i2f) == (weights // 16, weights // 8, weights)
    assert shfl <= 5 and lds <= 1 and bar <= 1
