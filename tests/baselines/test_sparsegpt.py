import pytest
import torch

from gqsa.baselines import BaselineConfig, magnitude_layer, sparsegpt_layer
from gqsa.solver.prune_quant import output_error

from .synthetic import dequantize_result


def assert_two_of_four(weight: torch.Tensor, keep: torch.Tensor) -> None:
    """Exactly 2 kept entries, and at most 2 nonzeros, in every 4 consecutive inputs of a row."""
    per4 = keep.reshape(keep.shape[0], -1, 4).sum(-1)
    assert (per4 == 2).all()
    assert (weight[~keep] == 0).all()
    assert ((weight != 0).reshape(weight.shape[0], -1, 4).sum(-1) <= 2).all()


@pytest.mark.parametrize("bits", [16, 4])
def test_two_four_exact_and_beats_magnitude(layer, bits):
    W, acc = layer
    cfg = BaselineConfig("sparsegpt", pattern="2:4", bits=bits, group_size=64)
    res = sparsegpt_layer(W, acc, cfg)
    assert_two_of_four(res.weight, res.keep)
    mag = magnitude_layer(W, None, BaselineConfig("wanda", pattern="2:4"))
    e, e_mag = output_error(W, res.weight, acc.H), output_error(W, mag.weight, acc.H)
    assert e < 0.5 * e_mag, (e, e_mag)
    if bits == 4:
        assert res.codes.min() >= 0 and res.codes.max() <= 15
        torch.testing.assert_close(dequantize_result(res, 64), res.weight)


@pytest.mark.parametrize("bits", [16, 4])
def test_unstructured_exact_sparsity_per_block_and_beats_magnitude(layer, bits):
    W, acc = layer
    cfg = BaselineConfig("sparsegpt", pattern="unstructured", sparsity=0.5, bits=bits, group_size=128)
    res = sparsegpt_layer(W, acc, cfg)
    for i1 in range(0, W.shape[1], cfg.block_size):  # the mask is chosen per block of 128 columns
        assert res.keep[:, i1:i1 + cfg.block_size].float().mean().item() == 0.5
    assert (res.weight[~res.keep] == 0).all()
    mag = magnitude_layer(W, None, BaselineConfig("wanda", pattern="unstructured", sparsity=0.5))
    e, e_mag = output_error(W, res.weight, acc.H), output_error(W, mag.weight, acc.H)
    assert e < 0.5 * e_mag, (e, e_mag)


def test_unstructured_keeps_kept_weights_updated_not_copied(layer):
    """OBS reconstruction changes the kept weights; a bare mask would leave them equal to W."""
    W, acc = layer
    res = sparsegpt_layer(W, acc, BaselineConfig("sparsegpt", pattern="unstructured", sparsity=0.5, bits=16))
    assert (res.weight[res.keep] - W[res.keep]).abs().mean() > 0.01
