"""Kernel tests run the Triton kernels natively on a GPU and through Triton's interpreter on CPU.

``triton.jit`` reads TRITON_INTERPRET when it decorates a function, Triton's own
library functions (``tl.max``, ``tl.sum``) included, and the suite's root conftest
imports transformers, which imports Triton first. So on machines without CUDA this
conftest sets the variable and re-imports Triton's Python modules (its compiled
extension stays loaded) before any gqsa kernel module is imported. Elsewhere in the
suite nothing calls Triton on CPU (GQSLinear takes the PyTorch reference there).
"""

import os
import sys

import torch

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    os.environ["TRITON_INTERPRET"] = "1"
    kernel_modules = ("gqsa.kernels.g", "gqsa.kernels.jit", "gqsa.kernels.smallm", "gqsa.bench")
    if any(m.startswith(kernel_modules) for m in sys.modules):
        raise RuntimeError("gqsa kernel modules were imported before tests/kernels/conftest.py could set "
                           "TRITON_INTERPRET=1; run with TRITON_INTERPRET=1 in the environment")
    for name in [m for m in sys.modules if (m == "triton" or m.startswith("triton.")) and
                 not m.startswith("triton._C")]:
        del sys.modules[name]
