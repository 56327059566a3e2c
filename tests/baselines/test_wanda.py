import pytest
import torch

from gqsa.baselines import BaselineConfig, magnitude_layer, wanda_layer
from gqsa.solver.prune_quant import output_error

from .synthetic import make_layer


def test_unstructured_prunes_exactly_half_of_every_row():
    W, acc = make_layer(input_scales=True)
    res = wanda_layer(W, acc, BaselineConfig("wanda", pattern="unstructured", sparsity=0.5))
    assert ((res.weight == 0).sum(1) == W.shape[1] // 2).all()
    assert torch.equal(res.weight[res.keep], W[res.keep])  # no weight update


def test_two_four_exact():
    W, acc = make_layer(input_scales=True)
    res = wanda_layer(W, acc, BaselineConfig("wanda", pattern="2:4"))
    assert ((res.weight != 0).reshape(W.shape[0], -1, 4).sum(-1) == 2).all()


def test_score_is_weight_times_input_norm():
    """A large weight on a dead-quiet input goes before a small weight on a loud one."""
    W = torch.tensor([[10.0, 1.0, 0.5, 0.4]])
    acc = make_layer(n=1, k=4)[1]
    acc.sq_norm = torch.tensor([1e-4, 100.0, 100.0, 100.0])
    res = wanda_layer(W, acc, BaselineConfig("wanda", pattern="2:4"))
    assert res.keep.tolist() == [[False, True, True, False]]


@pytest.mark.parametrize("pattern, sparsity", [("unstructured", 0.5), ("2:4", None)])
def test_beats_magnitude_when_inputs_have_outlier_channels(pattern, sparsity):
    W, acc = make_layer(input_scales=True)
    cfg = BaselineConfig("wanda", pattern=pattern, sparsity=sparsity)
    e_wanda = output_error(W, wanda_layer(W, acc, cfg).weight, acc.H)
    e_mag = output_error(W, magnitude_layer(W, None, cfg).weight, acc.H)
    assert e_wanda < 0.8 * e_mag, (e_wanda, e_mag)
