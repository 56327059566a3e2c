"""compress_method end to end on a tiny random LLaMA: patterns, accounting, save and load."""

import json

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from gqsa.baselines import compress_method, read_baseline, save_method
from gqsa.layer import GQSLinear


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def calib() -> torch.Tensor:
    return torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(1))


def block_linears(model) -> dict[str, nn.Module]:
    blocks = model.model.layers
    return {f"{i}.{n}": m for i, b in enumerate(blocks) for n, m in b.named_modules()
            if isinstance(m, (nn.Linear, GQSLinear))}


@pytest.mark.parametrize("method, pattern, bits", [
    ("gptq", None, 3), ("sparsegpt", "2:4", 16), ("sparsegpt", "2:4", 4), ("wanda", "2:4", None),
    ("sparsegpt", "unstructured", None), ("wanda", "unstructured", None)])
def test_baselines_keep_dense_linears_with_their_pattern(calib, method, pattern, bits):
    model, ref = tiny_llama(), tiny_llama()
    report = compress_method(model, method, pattern, bits=bits, group_size=32, calib=calib, progress=False)
    linears = block_linears(model)
    assert len(report.layers) == len(linears) == 14
    assert all(isinstance(m, nn.Linear) for m in linears.values())
    for name, m in linears.items():
        w = m.weight
        if pattern == "2:4":
            assert ((w != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2).all(), name
        elif pattern == "unstructured":
            assert abs((w == 0).float().mean().item() - 0.5) < 0.01, name
        if report.config.quantized:  # at most 2^bits distinct values per row and group of 32
            assert all(len(torch.unique(g)) <= 2 ** report.config.bits + 1 for g in w.reshape(-1, 32)), name
    assert torch.equal(model.lm_head.weight, ref.lm_head.weight)
    assert all(0 <= s["rel_output_error"] < 1 for s in report.layers)
    assert torch.isfinite(model(calib[:2]).logits).all()


def test_rtn_without_data_equals_rtn_in_the_pipeline(calib):
    a, b = tiny_llama(), tiny_llama()
    ra = compress_method(a, "rtn", bits=2, group_size=32)
    rb = compress_method(b, "rtn", bits=2, group_size=32, calib=calib, progress=False)
    for (n, la), lb in zip(block_linears(a).items(), block_linears(b).values()):
        assert torch.equal(la.weight, lb.weight), n
    assert ra.bits_per_weight == rb.bits_per_weight == pytest.approx(2 + 18 / 32)


def test_gqsa_goes_through_the_packed_path(calib):
    model = tiny_llama()
    report = compress_method(model, "gqsa", sparsity=0.5, bits=4, group_size=16, calib=calib, progress=False)
    assert all(isinstance(m, GQSLinear) for m in block_linears(model).values())
    # as stored (format v2): 16 codes * 4 bits + 8-bit scale code + 4-bit zero = 76 bits per kept
    # group of 16, half the groups kept, a mask bit per group, an fp16 row factor per row (K >= 64)
    assert 2.4375 < report.bits_per_weight < 2.4375 + 16 / 64 + 1e-6


def test_saved_baseline_loads_as_a_dense_transformers_model(tmp_path, calib):
    model = tiny_llama()
    report = compress_method(model, "sparsegpt", "2:4", bits=4, group_size=32, calib=calib, progress=False)
    out = save_method(model, report, tmp_path / "out")
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert read_baseline(out)["method"] == "sparsegpt" and read_baseline(out)["pattern"] == "2:4"
    assert read_baseline(out)["bits_per_weight"] == pytest.approx(report.bits_per_weight)
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert isinstance(loaded.model.layers[0].mlp.down_proj, nn.Linear)
    torch.testing.assert_close(loaded(calib[:2]).logits, model(calib[:2]).logits)
    with pytest.raises(FileExistsError):
        save_method(model, report, out)
