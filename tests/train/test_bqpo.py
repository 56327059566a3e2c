"""BQPO: fake-quant layers reproduce the packed ones, training lowers the block's output MSE,
masks stay fixed, the pipeline feeds the full-precision targets, bad options raise."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import calib_ids, tiny_model

from gqsa.config import BQPOConfig, GQSAConfig
from gqsa.format import dequantize
from gqsa.layer import GQSLinear
from gqsa.models import find_blocks
from gqsa.pipeline import capture_block_inputs, compress_block, run_blocks
from gqsa.train.bqpo import (
    FakeQuantLinear,
    block_mse,
    bqpo_hook,
    summarize,
    train_block,
)

CONFIG = GQSAConfig(group_size=16, sparsity=0.5, bits=4)
PACKED = ("codes", "col_idx", "row_ptr", "scales", "zeros")


def _one_shot_block(n: int = 16, length: int = 32):
    """Block 0 of a tiny LLaMA after one-shot compression, its inputs, dense outputs and kwargs."""
    model = tiny_model("llama")
    _, blocks = find_blocks(model)
    with torch.no_grad():
        hidden, kwargs = capture_block_inputs(model, blocks[0], calib_ids(n, length), torch.device("cpu"), 8)
        _, dense_out = compress_block(blocks[0], hidden, kwargs, CONFIG, "model.layers.0", 8)
    return blocks[0], hidden, dense_out, kwargs


def _gqs_state(block) -> dict[str, torch.Tensor]:
    return {f"{n}.{t}": getattr(m, t).clone() for n, m in block.named_modules() if isinstance(m, GQSLinear)
            for t in PACKED}


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size"), ({"lr_scale": -1e-4}, "lr_scale"),
    ({"lr_weight": float("nan")}, "lr_weight"), ({"lr_weight": 0, "lr_scale": 0, "lr_zero": 0}, "nothing to train"),
    ({"min_lr_factor": 0.5}, "min_lr_factor"), ({"max_grad_norm": -1}, "max_grad_norm")])
def test_config_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BQPOConfig(**kwargs)


def test_config_is_frozen_and_json_ready():
    cfg = BQPOConfig()
    with pytest.raises(AttributeError):
        cfg.epochs = 3
    assert cfg.to_dict()["epochs"] == 2 and cfg.fp_targets is True


def test_fake_quant_starts_at_the_packed_layer_and_packs_back_bitwise():
    block, *_ = _one_shot_block()
    for layer in (m for m in block.modules() if isinstance(m, GQSLinear)):
        fq = FakeQuantLinear(layer)
        assert torch.equal(fq.quant_weight().detach(), dequantize(layer.packed(), torch.float32))
        again = fq.to_gqs()
        for t in PACKED:
            assert torch.equal(getattr(again, t), getattr(layer, t)), t


def test_one_epoch_lowers_block_output_mse_and_keeps_masks():
    block, hidden, target, kwargs = _one_shot_block()
    before_state = _gqs_state(block)
    before = block_mse(block, hidden, target, kwargs)
    cfg = BQPOConfig(epochs=1, batch_size=2, lr_weight=1e-3, lr_scale=1e-4, keep_best=False)
    with torch.enable_grad():
        log = train_block(block, hidden, target, kwargs, cfg, progress=False)
    after = block_mse(block, hidden, target, kwargs)
    assert log["mse_before"] == pytest.approx(before, rel=1e-6)
    assert log["mse_after"] == pytest.approx(after, rel=1e-6)
    assert after < 0.9 * before, (before, after)
    state = _gqs_state(block)
    for name, t in before_state.items():
        if name.endswith(("col_idx", "row_ptr")):  # the keep mask
            assert torch.equal(state[name], t), name
    assert state[next(n for n in state if n.endswith("scales"))].dtype == torch.float16
    assert log["codes_changed"] > 0 and log["steps"] == 8 and not log["reverted"]
    assert all(not p.requires_grad or p.grad is None for p in block.parameters())


def test_worse_training_is_reverted_to_the_one_shot_layers():
    block, hidden, target, kwargs = _one_shot_block(n=4)
    before_state = _gqs_state(block)
    cfg = BQPOConfig(epochs=1, batch_size=2, lr_weight=0.0, lr_scale=0.5, lr_zero=0.0, max_grad_norm=0.0)
    with torch.enable_grad():
        log = train_block(block, hidden, target, kwargs, cfg, progress=False)
    assert log["reverted"] and log["mse_trained"] > log["mse_before"] == log["mse_after"]
    state = _gqs_state(block)
    assert all(torch.equal(state[n], t) for n, t in before_state.items())


def _dense_block_outputs(model, calib: torch.Tensor, i: int) -> torch.Tensor:
    """Output [n, L, d] of block i of the dense model (HF hidden_states[i + 1], before the final norm)."""
    with torch.no_grad():
        return model(calib, output_hidden_states=True, use_cache=False).hidden_states[i + 1]


@pytest.mark.parametrize("fp_targets", [True, False])
def test_pipeline_gives_the_hook_full_precision_targets(fp_targets):
    model = tiny_model("llama", layers=3)
    dense = copy.deepcopy(model)
    calib = calib_ids(8, 32)
    seen = {}

    def hook(i, block, inputs, targets, kwargs):
        seen[i] = targets.clone()
        return bqpo_hook(BQPOConfig(epochs=1, lr_weight=1e-4), progress=False)(i, block, inputs, targets, kwargs)

    report = run_blocks(model, CONFIG, calib, progress=False, after_block=hook, fp_targets=fp_targets)
    fp_chain = _dense_block_outputs(dense, calib, 1)
    gap = (seen[1] - fp_chain).abs().max().item()
    if fp_targets:
        assert gap < 1e-4
    else:
        assert gap > 1e-3  # the local target: dense block 1 on the compressed chain's inputs
    assert [b["index"] for b in report.blocks] == [0, 1, 2]
    summary = summarize(report.blocks, BQPOConfig(epochs=1, lr_weight=1e-4))
    assert summary["blocks"] == 3 and len(summary["mse_after"]) == 3
    assert all(a <= b for a, b in zip(summary["mse_after"], summary["mse_before"]))
