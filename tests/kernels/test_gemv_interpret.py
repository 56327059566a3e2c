"""The GQS kernels against the PyTorch reference at small shapes.

Runs on CPU under TRITON_INTERPRET=1 (set by conftest.py) and natively on a GPU.
Each check draws fresh random inputs, poisons the output with NaN first, and
compares ``||y - ref|| / ||ref||`` with a float32 reference: at most 2e-3 for fp16
outputs (their rounding is ~5e-4) and 1e-2 for bf16 (rounding ~4e-3).
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from gqsa.format import TENSOR_NAMES, PackedGQS, pack_layer  # noqa: E402
from gqsa.kernels import ops  # noqa: E402
from gqsa.kernels.gemm import GemmConfig, dequantize_dense, gqs_gemm  # noqa: E402
from gqsa.kernels.gemv import gqs_gemv  # noqa: E402
from gqsa.kernels.plan import build_plan  # noqa: E402
from tests.kernels.cases import (  # noqa: E402
    CASES,
    DEVICE,
    NEEDS_BACKEND,
    check,
    poisoned,
    random_layer,
)

BATCHES = (1, 3, 16, 17, 5, 2, 8)

pytestmark = NEEDS_BACKEND


@pytest.mark.parametrize("schedule", ["rows", "tasks"])
@pytest.mark.parametrize("g,bits", CASES)
def test_decode_matches_reference(g, bits, schedule):
    i = CASES.index((g, bits))
    gen = torch.Generator().manual_seed(1000 + i)
    p = random_layer(n=37, ng=5 + i % 4, g=g, bits=bits, gen=gen)
    m, dtype = BATCHES[i % len(BATCHES)], (torch.float16, torch.bfloat16)[i % 2]
    x = torch.randn(m, p.in_features, generator=gen).to(dtype).to(DEVICE)
    bias = torch.randn(p.out_features, generator=gen).to(dtype).to(DEVICE) if i % 3 else None
    plan = build_plan(p, num_programs=7)
    y = gqs_gemv(x, p, bias, plan, schedule, out=poisoned(m, p.out_features, dtype))
    check(y, x, p, bias)


@pytest.mark.parametrize("pattern", ["uniform", "heavy"])
def test_decode_plan_fast_paths(pattern):
    """Rows schedule with a plan (unrolled steps; no row pointers for uniform rows) and without one."""
    from gqsa.bench.synth import random_packed
    p = random_packed(40, 256, 16, 4, 0.5, pattern, DEVICE, seed=3)
    plan = build_plan(p, num_programs=6)
    assert (plan.row_len == 8) == (pattern == "uniform") and plan.max_row_len >= 8
    gen = torch.Generator().manual_seed(5)
    for m, with_plan in ((1, True), (6, True), (3, False)):
        x = torch.randn(m, 256, generator=gen).half().to(DEVICE)
        y = gqs_gemv(x, p, None, plan if with_plan else None, "rows", out=poisoned(m, 40, torch.float16))
        check(y, x, p, None)


@pytest.mark.parametrize("schedule,split_mode", [("rows", 0), ("tasks", 0), ("tasks", 1)])
def test_single_kept_group(schedule, split_mode):
    gen = torch.Generator().manual_seed(7)
    p = random_layer(n=19, ng=6, g=16, bits=4, gen=gen, keep_p=0.0, empty_rows=(), full_rows=())
    q = torch.randint(0, 16, (19, 96), generator=gen)
    keep = torch.zeros(19, 6, dtype=torch.bool)
    keep[11, 4] = True
    p = pack_layer(q, keep, torch.rand(19, 6, generator=gen) + 0.1, torch.full((19, 6), 3.0), 16, 4)
    p = PackedGQS(*(getattr(p, t).to(DEVICE) for t in TENSOR_NAMES),
                  19, 96, 16, 4)
    x = torch.randn(2, 96, generator=gen).half().to(DEVICE)
    bias = torch.randn(19, generator=gen).half().to(DEVICE)
    y = gqs_gemv(x, p, bias, build_plan(p, num_programs=4), schedule, split_mode,
                 out=poisoned(2, 19, torch.float16))
    check(y, x, p, bias)


@pytest.mark.parametrize("split_mode", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tasks_rows_cut_by_many_programs(split_mode, dtype):
    """Long rows cut across several programs: every part lands once, slots end at zero."""
    gen = torch.Generator().manual_seed(11 + split_mode)
    p = random_layer(n=9, ng=40, g=8, bits=4, gen=gen, keep_p=0.1, empty_rows=(0, 5, 8), full_rows=(2, 3))
    plan = build_plan(p, num_programs=13)
    x = torch.randn(4, p.in_features, generator=gen).to(dtype).to(DEVICE)
    bias = torch.randn(9, generator=gen).to(dtype).to(DEVICE)
    for _ in range(2):  # the second call checks the slots were reset by the first
        y = gqs_gemv(x, p, bias, plan, "tasks", split_mode, out=poisoned(4, 9, dtype))
        check(y, x, p, bias)
    assert plan.fix_cnt.abs().sum().item() == 0 and plan.fix_ws.abs().sum().item() == 0


@pytest.mark.parametrize("g,bits,dtype", [(16, 4, torch.float16), (8, 3, torch.bfloat16), (128, 2, torch.float16),
                                          (32, 8, torch.bfloat16)])
def test_prefill_gemm_and_dense(g, bits, dtype):
    gen = torch.Generator().manual_seed(g + bits)
    p = random_layer(n=21, ng=6, g=g, bits=bits, gen=gen)
    plan = build_plan(p, num_programs=3)
    x = torch.randn(20, p.in_features, generator=gen).to(dtype).to(DEVICE)
    bias = torch.randn(21, generator=gen).to(dtype).to(DEVICE)
    for split_k in (1, 3):  # 3: partial tiles added into a float32 buffer, cast after
        cfg = GemmConfig(block_m=16, block_n=16, block_k=32, num_warps=4, num_stages=1, split_k=split_k)
        check(gqs_gemm(x, p, bias, plan, cfg, out=poisoned(20, 21, dtype)), x, p, bias)
    dense = dequantize_dense(p, plan, torch.float32)
    from gqsa.format import dequantize
    assert torch.equal(dense, dequantize(p, torch.float32).to(dense.device))


@pytest.mark.parametrize("m", [1, 3, 33])
def test_custom_op(m):
    """torch.ops.gqsa.gqs_linear: leading dims kept, fake impl agrees; ops.run routes by batch to the kernels
    (on CPU the op itself is the reference, so the kernels are called through ops.run there)."""
    gen = torch.Generator().manual_seed(m)
    p = random_layer(n=24, ng=4, g=16, bits=4, gen=gen)
    plan = build_plan(p, num_programs=5)
    x = torch.randn(1, m, p.in_features, generator=gen).half().to(DEVICE)
    y = ops.call(x, p, None, plan, "tasks")
    assert y.shape == (1, m, 24)
    check(y.reshape(m, 24), x.reshape(m, -1), p, None)
    check(ops.run(x.reshape(m, -1), p, None, plan, "tasks"), x.reshape(m, -1), p, None)
    args = (x, p.codes, p.col_idx, p.row_ptr, p.scales, p.zeros, None, plan.prog_rows, plan.fix_ws, plan.fix_cnt,
            plan.mask_words, plan.mask_prefix, p.in_features, p.group_size, p.bits, 1, plan.max_row_len, plan.row_len)
    torch.library.opcheck(torch.ops.gqsa.gqs_linear.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_bad_arguments_raise():
    gen = torch.Generator().manual_seed(0)
    p = random_layer(n=8, ng=2, g=16, bits=4, gen=gen)
    with pytest.raises(ValueError, match="must be"):
        gqs_gemv(torch.randn(1, 31).half().to(DEVICE), p)
    with pytest.raises(ValueError, match="KernelPlan"):
        gqs_gemv(torch.randn(1, 32).half().to(DEVICE), p, schedule="tasks")
    with pytest.raises(ValueError, match="out must be"):
        gqs_gemv(torch.randn(2, 32).half().to(DEVICE), p, out=torch.empty(1, 8).half().to(DEVICE))


@pytest.mark.parametrize("int4", [False, True])
def test_sparse24_baseline(int4):
    """The benchmark's Triton 2:4 kernels compute x W^T for their dense 2:4 weight."""
    from gqsa.bench.sparse24 import gemv24, pack_24, quantize_24_int4
    gen = torch.Generator().manual_seed(int(int4))
    w = torch.randn(12, 256, generator=gen)
    vals, meta, dense = pack_24(w)
    x = torch.randn(3, 256, generator=gen).half()
    if int4:
        vq, s, z, deq = quantize_24_int4(vals)
        blocks = w.reshape(12, 64, 4)
        idx = blocks.abs().topk(2, -1).indices.sort(-1).values
        dense = torch.zeros_like(blocks).scatter_(-1, idx, deq.reshape(12, 64, 2)).reshape(12, 256)
        y = gemv24(x.to(DEVICE), meta.to(DEVICE), vq=vq.to(DEVICE), scales=s.to(DEVICE), zeros=z.to(DEVICE))
    else:
        dense = dense.half().float()
        y = gemv24(x.to(DEVICE), meta.to(DEVICE), vals=vals.half().to(DEVICE))
    ref = x.float() @ dense.T
    err = ((y.float().cpu() - ref).norm() / ref.norm()).item()
    assert err <= 2e-3, f"relative error {err:.2e}"


def test_default_tile_rules():
    """The measured tile rules: 4 rows x 32 lanes only for uniform rows of <= 256 groups in big layers."""
    from gqsa.kernels.gemv import GemvConfig, default_config
    assert default_config(16, 1, 128.0, uniform=True, n_rows=4096) == GemvConfig(4, 32, 4)
    assert default_config(16, 1, 128.0, uniform=False, n_rows=4096) == GemvConfig(2, 64, 4)
    assert default_config(16, 1, 256.0, uniform=True, n_rows=1024) == GemvConfig(1, 128, 4)
    assert default_config(16, 1, 344.0, uniform=True, n_rows=4096) == GemvConfig(1, 128, 4)
    assert default_config(16, 16, 128.0, uniform=True, n_rows=4096) == default_config(16, 16, 128.0)


def test_decode_four_rows_per_program():
    """The uniform-row tile (4 rows x 32 lanes, unrolled, no row pointers) on rows of 20 groups."""
    from gqsa.bench.synth import random_packed
    from gqsa.kernels.gemv import GemvConfig
    p = random_packed(45, 640, 16, 4, 0.5, "uniform", DEVICE, seed=4)
    plan = build_plan(p, num_programs=5)
    assert plan.row_len == 20
    gen = torch.Generator().manual_seed(6)
    for m in (1, 2):
        x = torch.randn(m, 640, generator=gen).half().to(DEVICE)
        y = gqs_gemv(x, p, None, plan, "rows", config=GemvConfig(4, 32, 4), out=poisoned(m, 45, torch.float16))
        check(y, x, p, None)
