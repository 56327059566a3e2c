"""The format-v2 decode kernel against two oracles at small shapes.

Runs on CPU under TRITON_INTERPRET=1 (set by conftest.py) and natively on a GPU. Each check
draws a fresh random v1 layer, re-encodes it with ``format_v2.from_v1``, poisons the output
with NaN and compares ``||y - ref|| / ||ref||`` with two float32 references: the v1 reference
(``gqs_linear_ref``) of ``to_v1(p2)`` and a dense float32 matmul of the v2 layer dequantized
from its own tensors. Tolerance: at most 2e-3 for fp16 outputs (their rounding is ~5e-4) and
1e-2 for bf16 (rounding ~4e-3), as in test_gemv_interpret.py.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from gqsa.format import PackedGQS, pack_codes, pack_layer, unpack_codes  # noqa: E402
from gqsa.format_v2 import TENSOR_NAMES_V3, PackedGQSv2, decode_scales, from_v1, to_v1, unpack_mask  # noqa: E402
from gqsa.kernels.gemv import GemvConfig, decode_layout, static_steps  # noqa: E402
from gqsa.kernels.gemv_v2 import build_plan_v2, gqs_gemv_v2  # noqa: E402
from tests.kernels.cases import CASES, DEVICE, NEEDS_BACKEND, TOL, check, poisoned, random_layer  # noqa: E402

BATCHES = (1, 2, 5, 16, 17)

pytestmark = NEEDS_BACKEND


def dense_v2(p: PackedGQSv2) -> torch.Tensor:
    """Dense float32 weight [N, K] of a v2 layer from its own tensors: mask, codes, float32 scales, zero stream."""
    n, ng, g = p.out_features, p.in_features // p.group_size, p.group_size
    keep = unpack_mask(p.mask, n, ng)
    rows = torch.arange(n, device=keep.device).unsqueeze(1).expand(n, ng)[keep]
    q = unpack_codes(p.codes, p.bits, g).float()
    z = unpack_codes(p.zeros.reshape(1, -1), p.bits, p.zeros.numel() * 8 // p.bits).reshape(-1)[:p.nnz].float()
    s = decode_scales(p.row_factors(), p.scale_codes, rows, torch.float32)
    w = torch.zeros(n, ng, g, device=keep.device)
    w[keep] = (q - z[:, None]) * s[:, None]
    return w.reshape(n, p.in_features)


def check_both(y: torch.Tensor, x: torch.Tensor, p2: PackedGQSv2, bias: torch.Tensor | None) -> None:
    """y against the v1 reference of to_v1(p2) and against x @ dense_v2(p2)^T + bias, in float32."""
    check(y, x, to_v1(p2), bias)
    ref = x.float() @ dense_v2(p2).T + (0 if bias is None else bias.float())
    err = ((y.float() - ref).norm() / ref.norm().clamp(min=1e-12)).item()
    assert err <= TOL[x.dtype], f"relative error {err:.2e} > {TOL[x.dtype]:.0e} against the dense v2 weight"


def on_device(p1: PackedGQS) -> PackedGQSv2:
    """The v2 re-encoding of a v1 layer, its tensors on DEVICE."""
    p2, _ = from_v1(p1)
    return PackedGQSv2(*(getattr(p2, t).to(DEVICE) for t in TENSOR_NAMES_V3), p2.out_features, p2.in_features,
                       p2.group_size, p2.bits)


def v2_layer(n, ng, g, bits, gen, **kw) -> PackedGQSv2:
    p2, clamped = from_v1(random_layer(n, ng, g, bits, gen, **kw))
    assert clamped == 0  # random_layer's scales span < 2.6 octaves: none leaves the 6-octave grid
    return p2


@pytest.mark.parametrize("g,bits", CASES)
def test_decode_v2_matches_references(g, bits):
    """Every (G, bits): uneven rows with an empty row 0 and a full row 1; batches, dtypes and bias cycle."""
    i = CASES.index((g, bits))
    gen = torch.Generator().manual_seed(2000 + i)
    p2 = v2_layer(37, 5 + i % 4, g, bits, gen)
    m, dtype = BATCHES[i % len(BATCHES)], (torch.float16, torch.bfloat16)[i % 2]
    x = torch.randn(m, p2.in_features, generator=gen).to(dtype).to(DEVICE)
    bias = torch.randn(p2.out_features, generator=gen).to(dtype).to(DEVICE) if i % 3 else None
    plan = build_plan_v2(p2)
    assert plan.col.dtype == torch.uint8
    y = gqs_gemv_v2(x, p2, bias, plan, out=poisoned(m, p2.out_features, dtype))
    check_both(y, x, p2, bias)


@pytest.mark.parametrize("g,bits", CASES)
def test_plan_equals_to_v1(g, bits):
    """The plan's row pointers and columns (derived from the mask) are to_v1's; column dtype by K/G."""
    gen = torch.Generator().manual_seed(3000 + CASES.index((g, bits)))
    for ng, col_dtype in ((7, torch.uint8), (256, torch.uint8), (257, torch.int16)):
        p2 = v2_layer(9, ng, g, bits, gen)
        plan, v1 = build_plan_v2(p2), to_v1(p2)
        assert plan.col.dtype == col_dtype
        assert torch.equal(plan.row_ptr, v1.row_ptr)
        assert torch.equal(plan.col.to(torch.int64), v1.col_idx.to(torch.int64))
        counts = (v1.row_ptr[1:] - v1.row_ptr[:-1]).tolist()
        assert plan.max_row_len == max(counts) and plan.row_len == 0  # row 0 empty, row 1 full


@pytest.mark.parametrize("ng,g,bits,dtype", [(300, 8, 3, torch.float16), (300, 8, 4, torch.bfloat16),
                                             (300, 16, 2, torch.float16), (256, 8, 8, torch.bfloat16)])
def test_wide_rows_columns(ng, g, bits, dtype):
    """K/G = 300 > 256: int16 columns past 255; K/G = 256: uint8 columns up to 255 (few rows, to stay fast
    under the interpreter)."""
    gen = torch.Generator().manual_seed(ng + g * bits)
    p2 = v2_layer(6, ng, g, bits, gen, keep_p=0.4)
    plan = build_plan_v2(p2)
    assert plan.col.dtype == (torch.int16 if ng > 256 else torch.uint8) and int(plan.col.max()) == ng - 1
    bias = torch.randn(6, generator=gen).to(dtype).to(DEVICE)
    for m in (1, 17):
        x = torch.randn(m, p2.in_features, generator=gen).to(dtype).to(DEVICE)
        check_both(gqs_gemv_v2(x, p2, bias, plan, out=poisoned(m, 6, dtype)), x, p2, bias)


@pytest.mark.parametrize("bits", [3, 4])
def test_uneven_rows_run_time_loop(bits):
    """Heavy rows with a small tile: too uneven to unroll, so the kernel loops over steps at run time."""
    gen = torch.Generator().manual_seed(40 + bits)
    p2 = v2_layer(11, 40, 8, bits, gen, keep_p=0.1, empty_rows=(0, 5, 10), full_rows=(2, 3))
    plan, cfg = build_plan_v2(p2), GemvConfig(block_r=2, block_g=4, num_warps=4)
    assert static_steps(plan, p2.nnz, 11, cfg.block_g, decode_layout(8, bits)["R"]) == 0
    for m, dtype in ((2, torch.float16), (5, torch.bfloat16)):
        x = torch.randn(m, p2.in_features, generator=gen).to(dtype).to(DEVICE)
        check_both(gqs_gemv_v2(x, p2, None, plan, cfg, out=poisoned(m, 11, dtype)), x, p2, None)


@pytest.mark.parametrize("g,bits", [(16, 4), (32, 3)])
def test_uniform_rows_skip_row_pointers(g, bits):
    """Every row keeps 3 of 6 groups: the plan's row_len takes the kernel's ROW_LEN path."""
    gen = torch.Generator().manual_seed(g + bits)
    n, ng = 21, 6
    keep = torch.rand(n, ng, generator=gen).argsort(1) < 3
    p1 = pack_layer(torch.randint(0, 2 ** bits, (n, ng * g), generator=gen), keep,
                    torch.rand(n, ng, generator=gen) * 0.05 + 0.01, torch.randint(0, 2 ** bits, (n, ng), generator=gen),
                    g, bits)
    p2 = on_device(p1)
    plan = build_plan_v2(p2)
    assert plan.row_len == 3
    x = torch.randn(3, ng * g, generator=gen).half().to(DEVICE)
    check_both(gqs_gemv_v2(x, p2, None, plan, out=poisoned(3, n, torch.float16)), x, p2, None)


def test_three_bit_zero_stream_straddles_bytes():
    """3-bit zeros 7, 0, 5, 2, 6, ... pack across byte boundaries; one group per row reads each back."""
    gen = torch.Generator().manual_seed(9)
    n = 16
    zeros = torch.tensor([7, 0, 5, 2, 6, 1, 3, 4, 7, 7, 0, 6, 5, 1, 2, 3])
    keep = torch.zeros(n, 2, dtype=torch.bool)
    keep[:, 1] = True
    p1 = pack_layer(torch.randint(0, 8, (n, 16), generator=gen), keep, torch.full((n, 2), 0.03),
                    torch.stack([zeros, zeros], 1), 8, 3)
    p2 = on_device(p1)
    assert torch.equal(p2.zeros.cpu(), pack_codes(zeros.reshape(1, -1), 3).reshape(-1))  # the stream the kernel reads
    x = torch.randn(1, 16, generator=gen).half()
    check_both(gqs_gemv_v2(x.to(DEVICE), p2, None, out=poisoned(1, n, torch.float16)), x.to(DEVICE), p2, None)


def test_bad_arguments_raise():
    gen = torch.Generator().manual_seed(0)
    p2 = v2_layer(8, 2, 16, 4, gen)
    x = torch.randn(2, 32).half().to(DEVICE)
    with pytest.raises(ValueError, match="must be"):
        gqs_gemv_v2(torch.randn(1, 31).half().to(DEVICE), p2)
    with pytest.raises(ValueError, match="out must be"):
        gqs_gemv_v2(x, p2, out=torch.empty(1, 8).half().to(DEVICE))
    with pytest.raises(ValueError, match="build_plan_v2"):
        gqs_gemv_v2(x, p2, plan=build_plan_v2(v2_layer(8, 3, 16, 4, gen)))
    with pytest.raises(ValueError, match="kept groups"):
        build_plan_v2(PackedGQSv2(p2.codes[1:], p2.mask, p2.layer_scale, p2.row_code, p2.scale_codes[1:], p2.zeros,
                                  8, 32, 16, 4))
