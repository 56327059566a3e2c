"""GPU check of the solver's CUDA-graph column loop (``gqsa.solver.sweep``): skipped without CUDA.

The graphs replay the eager loop's kernels on the same buffers, so every solver and baseline
must give bit-identical codes, grids, masks and weights with and without them.
"""

import pytest
import torch

from gqsa.baselines.config import BaselineConfig
from gqsa.baselines.gptq import gptq_layer
from gqsa.baselines.sparsegpt import sparsegpt_layer
from gqsa.solver import sweep
from gqsa.solver.hessian import HessianAccumulator, damped_inverse, inverse_cholesky_upper
from gqsa.solver.prune_quant import prune_quantize, prune_quantize_act_order

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

N, K = 256, 1088  # 8.5 lazy blocks of 128: a full width and a narrower last block


def _problem():
    gen = torch.Generator(device="cuda").manual_seed(0)
    W = torch.randn(N, K, device="cuda", generator=gen)
    X = (torch.randn(600, K, device="cuda", generator=gen) @ torch.randn(K, K, device="cuda", generator=gen)) * 0.05
    acc = HessianAccumulator(K, "cuda")
    acc.add_batch(X.half())
    return W, acc


CASES = {
    "gqsa fixed mask": lambda W, acc, U, keep: prune_quantize(W, U, keep, 16, 4),
    "gqsa adaptive mask": lambda W, acc, U, keep: prune_quantize(W, U, None, 16, 3, sparsity=0.3),
    "gqsa act-order": lambda W, acc, U, keep: prune_quantize_act_order(W, acc.H, keep, 16, 4, 0.01),
    "gqsa act-order, original grids": lambda W, acc, U, keep: prune_quantize_act_order(
        W, acc.H, keep, 16, 4, 0.01, grids="original"),
    "gptq w3 g128 static": lambda W, acc, U, keep: gptq_layer(W, acc, BaselineConfig(
        method="gptq", bits=3, group_size=128, act_order="static")),
    "gptq w4 g64": lambda W, acc, U, keep: gptq_layer(W, acc, BaselineConfig(method="gptq", bits=4, group_size=64,
                                                                            act_order="off")),
    "sparsegpt 2:4 w4": lambda W, acc, U, keep: sparsegpt_layer(W, acc, BaselineConfig(
        method="sparsegpt", pattern="2:4", bits=4, group_size=128)),
    "sparsegpt 50%": lambda W, acc, U, keep: sparsegpt_layer(W, acc, BaselineConfig(
        method="sparsegpt", pattern="unstructured", sparsity=0.5)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_graphs_match_the_eager_loop(case, monkeypatch):
    W, acc = _problem()
    U = inverse_cholesky_upper(damped_inverse(acc.H, 0.01))
    keep = torch.rand(N, K // 16, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1)) > 0.4
    graphed = CASES[case](W, acc, U, keep)
    monkeypatch.setattr(sweep, "USE_GRAPHS", False)
    eager = CASES[case](W, acc, U, keep)
    for name in ("codes", "scales", "zeros", "keep", "weight"):
        a, b = getattr(graphed, name), getattr(eager, name)
        assert torch.equal(a, b), f"{case}: {name} differs"
    assert graphed.weight.abs().sum() > 0
