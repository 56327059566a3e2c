"""gqsa.size: the one bits accounting, checked against hand-computed cases."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gqsa.baselines import BaselineConfig
from gqsa.format import pack_layer
from gqsa.layer import GQSLinear
from gqsa.size import (
    baseline_layer_bits,
    dense_layer_bits,
    model_stats,
    packed_layer_bits,
)


def test_gptq_parts_by_hand():
    # 8 x 256, W3 g64 asym: 3 bits x 2048 codes; 8 rows x 4 groups of one fp16 scale and one 3-bit zero
    parts = baseline_layer_bits(BaselineConfig("gptq", bits=3, group_size=64, act_order="off"), 8, 256)
    assert parts == {"codes": 6144, "scales": 512, "zeros": 96}
    group = baseline_layer_bits(BaselineConfig("gptq", bits=3, group_size=64, act_order="group"), 8, 256)
    assert group["g_idx"] == 256 * 32  # one int32 group index per input column


def test_sparse_parts_by_hand():
    two_four = baseline_layer_bits(BaselineConfig("sparsegpt", pattern="2:4"), 4, 16)
    assert two_four == {"codes": 32 * 16, "index": 32 * 2}  # 32 kept fp16 values, 2 bits each
    unstructured = baseline_layer_bits(BaselineConfig("wanda", pattern="unstructured", sparsity=0.75), 4, 16)
    assert unstructured == {"codes": 16 * 16, "mask": 64}
    w4 = baseline_layer_bits(BaselineConfig("sparsegpt", pattern="2:4", bits=4, group_size=8), 4, 16, bias=True)
    assert w4 == {"codes": 128, "index": 64, "scales": 4 * 2 * 16, "zeros": 4 * 2 * 4, "bias": 64}
    assert dense_layer_bits(4, 16, bias=True) == {"codes": 1024, "bias": 64}


class Block(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module):
        super().__init__()
        self.a, self.b = a, b


class Tiny(nn.Module):
    """Embedding 10 x 16, two blocks of two linears [32, 16], a norm of 16."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 16)
        self.layers = nn.ModuleList(Block(nn.Linear(16, 32, bias=False), nn.Linear(16, 32, bias=False))
                                    for _ in range(2))
        self.norm = nn.LayerNorm(16, bias=False)


def test_baseline_model_counts_skipped_layers_and_the_rest():
    model = Tiny()
    cfg = BaselineConfig("gptq", bits=4, group_size=8, act_order="off", skip=("layers.1.b",))
    s = model_stats(model, cfg)
    per_layer = 512 * 4 + 32 * 2 * (16 + 4)  # codes + one scale and zero per 8 inputs of a row
    assert s["compressed_layers"] == 3 and s["skipped_layers"] == ["layers.1.b"]
    assert s["bits_per_weight"] == pytest.approx(per_layer / 512)  # 5.25: the skipped layer left out
    assert s["bits_per_weight_all_linears"] == pytest.approx((3 * per_layer + 512 * 16) / 2048)  # 7.9375
    rest = (10 * 16 + 16) * 16  # embedding and norm at 16 bits
    assert s["model_bytes"] == pytest.approx((3 * per_layer + 512 * 16 + rest) / 8)
    assert s["model_params"] == 2048 + 176
    assert s["parts"] == {"codes": 3 * 2048, "scales": 3 * 1024, "zeros": 3 * 256}


def test_packed_layer_counts_every_stored_tensor():
    torch.manual_seed(0)
    n, k, g, bits = 4, 32, 16, 4
    keep = torch.tensor([[1, 0], [1, 1], [0, 0], [0, 1]], dtype=torch.bool)  # 4 kept groups
    q = torch.randint(0, 16, (n, k))
    layer = GQSLinear(k, n, 4, g, bits, False, torch.float32)
    p = pack_layer(q, keep, torch.rand(n, 2), torch.randint(0, 16, (n, 2)).float(), g, bits)
    for name in ("codes", "col_idx", "row_ptr", "scales", "zeros"):
        getattr(layer, name).copy_(getattr(p, name))
    parts = packed_layer_bits(layer)
    # as a folder stores it (format v3): 4 groups x 16 codes x 4 bits; the mask's 8 group bits
    # (one byte); an fp32 factor for the layer; an 8-bit code per row; an 8-bit scale code per
    # group; 4-bit zeros, padded to 8 groups (4 bytes)
    assert parts == {"codes": 256, "mask": 8, "layer_scale": 32, "row_code": 32, "scale_codes": 32, "zeros": 32}
    model = nn.Module()
    model.layers = nn.ModuleList([Block(layer, nn.Linear(32, 4, bias=False))])
    s = model_stats(model)
    assert s["bits_per_weight"] == pytest.approx(392 / 128)
    assert s["bits_per_weight_all_linears"] == pytest.approx((392 + 128 * 16) / 256)
    assert s["model_bytes"] == pytest.approx((392 + 128 * 16) / 8)
    assert s["model_params"] == 256 and s["bits_per_param"] == pytest.approx((392 + 128 * 16) / 256)
