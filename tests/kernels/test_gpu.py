"""GPU-only checks of the GQS kernels at real layer shapes, under torch.compile and CUDA graphs.

Skipped without CUDA. Runs under pytest (``pytest -m gpu tests/kernels``) or as a
plain script (``python tests/kernels/test_gpu.py``). Tolerances as in
test_gemv_interpret.py: ``||y - ref|| / ||ref||`` against a float32 reference, at most
2e-3 for fp16 and 1e-2 for bf16.
"""

from __future__ import annotations

import sys

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]
TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _layer(n, k, sparsity=0.5, pattern="uniform", g=16, bits=4, seed=0):
    from gqsa.bench.synth import random_packed
    from gqsa.kernels.plan import build_plan
    p = random_packed(n, k, g, bits, sparsity, pattern, "cuda", seed)
    return p, build_plan(p)


def _check(y, x, p, bias=None):
    from gqsa.kernels.reference import gqs_linear_ref
    ref = gqs_linear_ref(x.float(), p, None if bias is None else bias.float())
    assert torch.isfinite(y).all()
    err = ((y.float() - ref).norm() / ref.norm()).item()
    assert err <= TOL[x.dtype], f"relative error {err:.2e}"


@pytest.mark.parametrize("pattern", ["uniform", "heavy"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,k", SHAPES)
def test_decode_real_shapes(n, k, dtype, pattern):
    from gqsa.kernels.gemv import gqs_gemv
    p, plan = _layer(n, k, pattern=pattern)
    for m in (1, 16):
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        bias = torch.randn(n, device="cuda", dtype=dtype)
        for schedule, split in (("rows", 0), ("tasks", 0), ("tasks", 1)):
            out = torch.full((m, n), float("nan"), device="cuda", dtype=dtype)
            _check(gqs_gemv(x, p, bias, plan, schedule, split, out=out), x, p, bias)
    assert plan.fix_cnt.abs().sum().item() == 0 and plan.fix_ws.abs().sum().item() == 0


@pytest.mark.parametrize("pattern", ["uniform", "layer"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,k", SHAPES)
def test_smallm_real_shapes(n, k, dtype, pattern):
    """Small-batch kernel, batches 2..32, poisoned outputs, called twice (arrival counters re-arm)."""
    from gqsa.kernels.smallm import gqs_smallm
    p, plan = _layer(n, k, pattern=pattern)
    bias = torch.randn(n, device="cuda", dtype=dtype)
    for m in (2, 3, 8, 16, 32, 8):
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        out = torch.full((m, n), float("nan"), device="cuda", dtype=dtype)
        _check(gqs_smallm(x, p, bias, plan, out=out), x, p, bias)
    assert plan.fix_cnt.abs().sum().item() == 0


@pytest.mark.parametrize("bits,g", [(2, 32), (3, 16), (8, 64), (4, 128)])
def test_smallm_other_formats(bits, g):
    from gqsa.kernels.smallm import gqs_smallm
    p, plan = _layer(4096, 4096, 0.3, "layer", g, bits)
    x = torch.randn(8, 4096, device="cuda", dtype=torch.float16)
    _check(gqs_smallm(x, p, None, plan), x, p)


@pytest.mark.parametrize("bits,g", [(2, 32), (3, 16), (8, 64), (4, 128)])
def test_decode_other_formats(bits, g):
    from gqsa.kernels.gemv import gqs_gemv
    p, plan = _layer(4096, 4096, 0.3, "layer", g, bits)
    x = torch.randn(4, 4096, device="cuda", dtype=torch.float16)
    for schedule in ("rows", "tasks"):
        _check(gqs_gemv(x, p, None, plan, schedule), x, p)


@pytest.mark.parametrize("bits,g", [(2, 16), (3, 16), (8, 16), (4, 8), (4, 32), (4, 64), (4, 128)])
def test_dispatch_other_formats(bits, g):
    """Every path the dispatcher takes (decode, small-batch, split-K GEMM, dense) at each benchmarked format."""
    from gqsa.kernels import ops
    p, plan = _layer(4096, 4096, 0.5, "uniform", g, bits)
    for m in (1, 8, 40, 128):
        x = torch.randn(m, 4096, device="cuda", dtype=torch.float16)
        _check(ops.run(x, p, None, plan, "rows"), x, p)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [17, 32, 300, 1024])
def test_prefill_paths(m, dtype):
    from gqsa.kernels import ops
    from gqsa.kernels.gemm import gqs_dense_linear, gqs_gemm
    p, plan = _layer(11008, 4096)
    x = torch.randn(m, 4096, device="cuda", dtype=dtype)
    bias = torch.randn(11008, device="cuda", dtype=dtype)
    _check(gqs_gemm(x, p, bias, plan), x, p, bias)
    _check(gqs_dense_linear(x, p, bias, plan), x, p, bias)
    _check(ops.run(x, p, bias, plan, "rows"), x, p, bias)


def generate_error(device: str, dtype: torch.dtype, cache: str, new_tokens: int = 10) -> float:
    """Greedy ``model.generate`` of a gqsa-compressed tiny LLaMA on ``device``/``dtype`` with a
    dynamic or static KV cache: relative error of the logits it returns for each new token
    against the float32 CPU reference model's logits on the generated sequence (teacher-forced,
    so a near-tie in argmax cannot make the check flaky)."""
    import copy

    from gqsa.compression import compress
    from gqsa.config import GQSAConfig
    from tests.tiny_models import calib_ids, tiny_model
    model = tiny_model("llama")
    compress(model, GQSAConfig(sparsity=0.5), calib_ids(4, 32), progress=False)
    run = copy.deepcopy(model).to(device, dtype)
    run.generation_config.eos_token_id = None  # always decode new_tokens steps
    prompt = calib_ids(1, 12, seed=5).to(device)
    kw = dict(max_new_tokens=new_tokens, do_sample=False, output_scores=True, return_dict_in_generate=True,
              pad_token_id=0)
    if cache == "static":
        kw["cache_implementation"] = "static"
    out = run.generate(prompt, **kw)
    assert out.sequences.shape[1] == prompt.shape[1] + new_tokens
    with torch.no_grad():
        ref = model(out.sequences.cpu()).logits[0, prompt.shape[1] - 1:-1].float()
    got = torch.stack(out.scores)[:, 0].float().cpu()
    return ((got - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_hf_generate(cache):
    """transformers' generate through the gqsa custom op (prefill: small-batch kernel; steps:
    decode kernel), fp16, with its dynamic cache and with a static cache."""
    err = generate_error("cuda", torch.float16, cache)
    assert err <= 1e-2, f"relative logit error {err:.2e}"


def _model(dtype):
    from gqsa.bench.synth import random_packed
    from gqsa.layer import GQSLinear
    a = GQSLinear.from_packed(random_packed(1024, 512, 16, 4, 0.5, "layer", "cuda", 1),
                              torch.zeros(1024, device="cuda", dtype=dtype))
    b = GQSLinear.from_packed(random_packed(512, 1024, 16, 4, 0.5, "heavy", "cuda", 2))
    model = torch.nn.Sequential(a, torch.nn.SiLU(), b)
    for layer in (a, b):
        layer.prepare_kernels()
    return model


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_compile(dtype):
    model = _model(dtype)
    compiled = torch.compile(model, fullgraph=True)
    for m in (1, 5, 64):
        x = torch.randn(m, 512, device="cuda", dtype=dtype)
        with torch.no_grad():
            ref, got = model(x), compiled(x)
        err = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
        assert err <= TOL[dtype], f"compiled vs eager {err:.2e} at batch {m}"


@pytest.mark.parametrize("m", [2, 8])  # decode kernel; small-batch kernel (its counters re-arm in the graph)
def test_cuda_graph_capture(m):
    model = _model(torch.float16)
    static_x = torch.randn(m, 512, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        model(static_x)  # compile the kernels before capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = model(static_x)
        for _ in range(3):
            x = torch.randn(m, 512, device="cuda", dtype=torch.float16)
            static_x.copy_(x)
            graph.replay()
            ref = model(x)
            err = ((static_y.float() - ref.float()).norm() / ref.float().norm()).item()
            assert err <= 1e-3, f"graph replay vs eager {err:.2e}"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", "-rs"]))
