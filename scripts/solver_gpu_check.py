"""GPU diagnostics of the solver's fast paths (run on a CUDA machine; prints, asserts nothing).

1. The Hessian product per path against float64: float32 SIMT, TF32 on widened inputs, and
   ``mm(out_dtype=float32)`` on fp16 / bf16 inputs.
2. The N:M sweep (SparseGPT 2:4 + W4) with the column loop eager twice and as a CUDA graph: where
   the results first differ (tests/solver/test_sweep_gpu.py found a difference).
"""

import time

import torch

from gqsa.baselines.config import BaselineConfig
from gqsa.baselines.sparsegpt import sparsegpt_layer
from gqsa.solver import sweep
from gqsa.solver.hessian import HessianAccumulator


def hessian_paths() -> None:
    torch.manual_seed(0)
    x32 = torch.randn(16384, 512, device="cuda") * 3
    for dt in (torch.float16, torch.bfloat16):
        x = x32.to(dt)
        ref = x.double().T @ x.double()
        rel = lambda h: ((h.double() - ref).norm() / ref.norm()).item()  # noqa: E731
        out = {"simt": rel(x.float().T @ x.float())}
        torch.backends.cuda.matmul.allow_tf32 = True
        out["tf32"] = rel(x.float().T @ x.float())
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            out["out_dtype"] = rel(torch.mm(x.T, x, out_dtype=torch.float32))
        except Exception as e:  # noqa: BLE001
            out["out_dtype"] = f"error {type(e).__name__}: {e}"
        from gqsa.solver import hessian
        for chunk in (256, 1024, 4096):
            hessian.GRAM_CHUNK = chunk
            out[f"chunks of {chunk}"] = rel(hessian._gram_exact(x))
        hessian.GRAM_CHUNK = 1024
        x8 = torch.randn(16384, 8192, device="cuda", dtype=dt)  # timing at 70B's K, 16k tokens
        for chunk in (1024, 16384):
            hessian.GRAM_CHUNK = chunk
            hessian._gram_exact(x8)
            torch.cuda.synchronize()
            t = time.perf_counter()
            hessian._gram_exact(x8)
            torch.cuda.synchronize()
            out[f"ms K=8192 T=16k chunks {chunk}"] = f"{(time.perf_counter() - t) * 1e3:.1f}"
        hessian.GRAM_CHUNK = 1024
        print("hessian", dt, {k: (f"{v:.2e}" if isinstance(v, float) else v) for k, v in out.items()})


def nm_sweep() -> None:
    n, k = 256, 1088
    gen = torch.Generator(device="cuda").manual_seed(0)
    W = torch.randn(n, k, device="cuda", generator=gen)
    X = (torch.randn(600, k, device="cuda", generator=gen) @ torch.randn(k, k, device="cuda", generator=gen)) * 0.05
    acc = HessianAccumulator(k, "cuda")
    acc.add_batch(X.half())
    for pattern, bits in (("2:4", 4), ("2:4", 16)):
        cfg = BaselineConfig(method="sparsegpt", pattern=pattern, bits=bits, group_size=128)
        runs = {}
        for name, graphs in (("eager1", False), ("eager2", False), ("graph", True)):
            sweep.USE_GRAPHS = graphs
            res = sparsegpt_layer(W, acc, cfg)
            if graphs:  # obs targets opt N:M out of graphs; force them in for the diagnosis
                orig = sweep.lazy_obs_sweep
                def forced(W_, U_, bs, t, graphs=None):  # noqa: E306
                    t.graph_safe = True
                    return orig(W_, U_, bs, t, graphs=True)
                import gqsa.baselines.obs as obs
                obs.lazy_obs_sweep = forced
                res = sparsegpt_layer(W, acc, cfg)
                obs.lazy_obs_sweep = orig
            runs[name] = res
        sweep.USE_GRAPHS = True
        for other in ("eager2", "graph"):
            a, b = runs["eager1"], runs[other]
            diff = {f: int((getattr(a, f) != getattr(b, f)).sum()) for f in ("codes", "keep", "weight")}
            cols = (a.weight != b.weight).any(0).nonzero().flatten()
            print(f"nm {pattern} w{bits}: eager1 vs {other}: differing entries {diff}, first column "
                  f"{int(cols[0]) if cols.numel() else None}")


if __name__ == "__main__":
    hessian_paths()
    nm_sweep()
