import pytest
import torch

from gqsa.baselines import BaselineConfig, rtn_layer, rtn_quantize
from gqsa.solver.prune_quant import output_error

from .synthetic import dequantize_result


@pytest.mark.parametrize("bits, group_size", [(4, 128), (3, 128), (2, 64), (4, 96)])
def test_codes_in_range_and_consistent_with_scales(layer, bits, group_size):
    W, _ = layer  # K = 256: group 96 leaves a short last group of 64
    res = rtn_layer(W, None, BaselineConfig("rtn", bits=bits, group_size=group_size, block_size=96 * 4))
    assert res.codes.min() >= 0 and res.codes.max() <= 2 ** bits - 1
    assert torch.equal(res.codes, res.codes.round())
    assert res.scales.shape == (W.shape[0], -(-W.shape[1] // group_size))
    torch.testing.assert_close(dequantize_result(res, group_size), res.weight)
    # each group uses at most 2^bits distinct values and spans its own min..max
    assert (res.weight - W).abs().max() <= res.scales.max() / 2 + 1e-6


def test_short_last_group_matches_quantizing_it_alone(layer):
    W, _ = layer
    _, _, _, whole = rtn_quantize(W, 3, 96)
    _, _, _, tail = rtn_quantize(W[:, 192:], 3, 96)
    torch.testing.assert_close(whole[:, 192:], tail)


def test_error_falls_with_bits_and_smaller_groups(layer):
    W, acc = layer
    errs = [output_error(W, rtn_quantize(W, b, g)[3], acc.H) for b, g in [(2, 128), (2, 64), (3, 128), (4, 128)]]
    assert errs[1] < errs[0] and errs[2] < 0.5 * errs[1] and errs[3] < 0.5 * errs[2]
