"""Every Triton kernel compiles for an H100 (sm_90), checked on any machine, GPU or not.

The interpreter tests run the kernels' semantics on CPU but never lower them, so a
construct only the GPU compiler rejects would first fail on the device. This runs
``python -m gqsa.kernels.aot`` in a fresh process (no TRITON_INTERPRET, an empty
Triton cache) and requires every variant to compile with the ptxas in Triton's wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


@pytest.mark.skipif(not os.path.exists(PTXAS), reason="this Triton build ships no ptxas")
def test_all_kernels_compile_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    run = subprocess.run([sys.executable, "-m", "gqsa.kernels.aot"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "0 of " in run.stdout and run.stdout.count("\nok ") + run.stdout.startswith("ok ") >= 20
