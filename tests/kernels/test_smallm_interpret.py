"""The small-batch tensor-core kernel (gqsa.kernels.smallm) against the PyTorch reference.

Runs on CPU under TRITON_INTERPRET=1 (tests/kernels/conftest.py) and natively on a GPU.
Fresh random inputs, NaN-poisoned outputs, tolerances as in test_gemv_interpret.py
(relative error <= 2e-3 for fp16, 1e-2 for bf16, against a float32 reference).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from gqsa.format import TENSOR_NAMES, PackedGQS, pack_layer  # noqa: E402
from gqsa.kernels.plan import build_plan  # noqa: E402
from gqsa.kernels.smallm import SmallMConfig, gqs_smallm, split_for  # noqa: E402
from tests.kernels.cases import (  # noqa: E402
    CASES,
    DEVICE,
    NEEDS_BACKEND,
    check,
    poisoned,
    random_layer,
)

BATCHES = (2, 3, 5, 16, 17, 32)
CONFIGS = (SmallMConfig(), SmallMConfig(block_n=16, block_k=128, programs_per_sm=1, max_k=0),
           SmallMConfig(block_n=64, block_k=32, programs_per_sm=64, max_k=64))  # splits inside a bitmask word

pytestmark = NEEDS_BACKEND


@pytest.mark.parametrize("g,bits", CASES)
def test_smallm_matches_reference(g, bits):
    """Every G and bit width; batches 2..32; tiles with and without a K split; bias or none."""
    i = CASES.index((g, bits))
    gen = torch.Generator().manual_seed(2000 + i)
    p = random_layer(n=37 + i, ng=9 + i % 5, g=g, bits=bits, gen=gen)
    m, dtype = BATCHES[i % len(BATCHES)], (torch.float16, torch.bfloat16)[i % 2]
    x = torch.randn(m, p.in_features, generator=gen).to(dtype).to(DEVICE)
    bias = torch.randn(p.out_features, generator=gen).to(dtype).to(DEVICE) if i % 3 else None
    plan = build_plan(p, num_programs=7)
    cfg = CONFIGS[i % len(CONFIGS)]
    y = gqs_smallm(x, p, bias, plan, cfg, out=poisoned(m, p.out_features, dtype))
    check(y, x, p, bias)


def test_smallm_split_counters_rearm():
    """Many K splits per tile: every split lands once, and the arrival counters end at zero."""
    gen = torch.Generator().manual_seed(3)
    p = random_layer(n=50, ng=70, g=8, bits=4, gen=gen, keep_p=0.3, empty_rows=(0, 7), full_rows=(1, 49))
    plan = build_plan(p, num_programs=3)
    cfg = SmallMConfig(block_n=16, block_k=32, programs_per_sm=64)
    assert split_for(4, 70, 64 * 8) == (3, 32)  # the case below splits K three ways
    for _ in range(3):
        x = torch.randn(7, p.in_features, generator=gen).half().to(DEVICE)
        check(gqs_smallm(x, p, None, plan, cfg, out=poisoned(7, 50, torch.float16)), x, p, None)
    assert plan.fix_cnt.abs().sum().item() == 0


def test_smallm_splits_inside_bitmask_words():
    """K split into parts of one bitmask word (4 group columns each): each part lands once."""
    assert split_for(2, 70, 1000, max_groups=4) == (18, 4)
    assert split_for(2, 70, 4, max_groups=64) == (2, 64)  # few programs: whole words, up to the cap
    gen = torch.Generator().manual_seed(4)
    p = random_layer(n=40, ng=70, g=16, bits=4, gen=gen, keep_p=0.4, empty_rows=(3,), full_rows=(5,))
    plan = build_plan(p, num_programs=3)
    cfg = SmallMConfig(block_n=16, block_k=32, programs_per_sm=64, max_k=64)
    for m in (3, 16):
        x = torch.randn(m, p.in_features, generator=gen).half().to(DEVICE)
        check(gqs_smallm(x, p, None, plan, cfg, out=poisoned(m, 40, torch.float16)), x, p, None)
    assert plan.fix_cnt.abs().sum().item() == 0


def test_smallm_single_kept_group():
    gen = torch.Generator().manual_seed(9)
    keep = torch.zeros(19, 6, dtype=torch.bool)
    keep[11, 4] = True
    q = torch.randint(0, 16, (19, 96), generator=gen)
    p = pack_layer(q, keep, torch.rand(19, 6, generator=gen) + 0.1, torch.full((19, 6), 3.0), 16, 4)
    p = PackedGQS(*(getattr(p, t).to(DEVICE) for t in TENSOR_NAMES),
                  19, 96, 16, 4)
    x = torch.randn(4, 96, generator=gen).half().to(DEVICE)
    bias = torch.randn(19, generator=gen).half().to(DEVICE)
    check(gqs_smallm(x, p, bias, build_plan(p, num_programs=2), out=poisoned(4, 19, torch.float16)), x, p, bias)


def test_smallm_bad_arguments_raise():
    gen = torch.Generator().manual_seed(0)
    p = random_layer(n=8, ng=2, g=16, bits=4, gen=gen)
    plan = build_plan(p, num_programs=2)
    with pytest.raises(ValueError, match="M <= 32"):
        gqs_smallm(torch.randn(33, 32).half().to(DEVICE), p, None, plan)
    with pytest.raises(ValueError, match="M <= 32"):
        gqs_smallm(torch.randn(2, 31).half().to(DEVICE), p, None, plan)
    with pytest.raises(ValueError, match="out must be"):
        gqs_smallm(torch.randn(2, 32).half().to(DEVICE), p, None, plan, out=torch.empty(2, 9).half().to(DEVICE))
    with pytest.raises(ValueError, match="power of two"):
        gqs_smallm(torch.randn(2, 32).half().to(DEVICE), p, None, plan, SmallMConfig(max_k=48))
