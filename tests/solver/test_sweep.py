"""The shared lazy-batch OBS sweep (gqsa.solver.sweep)."""

from __future__ import annotations

import torch

from gqsa.solver.prune_quant import output_error
from gqsa.solver.sweep import lazy_obs_sweep


class _Elementwise:
    """BlockTargets that map each column through ``fn`` and keep the result."""

    graph_safe = True

    def __init__(self, W, block_size, fn):
        self.out, self.fn = torch.zeros_like(W), fn
        self.out1 = torch.zeros(W.shape[0], block_size)
        self.begun = []

    def begin(self, i1, i2, W1, U1):
        self.begun.append((i1, i2, W1.shape[1], U1.shape))

    def target(self, i, W1):
        self.out1[:, i] = self.fn(W1[:, i])
        return self.out1[:, i]

    def end(self, i1, i2):
        self.out[:, i1:i2] = self.out1[:, :i2 - i1]


def _sweep(W, U, block_size, fn):
    t = _Elementwise(W, block_size, fn)
    lazy_obs_sweep(W, U, block_size, t)
    return t.out


def _problem():
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(16, 64, generator=gen) * 2
    X = torch.randn(256, 64, generator=gen) @ torch.randn(64, 64, generator=gen)  # correlated inputs
    H = X.T @ X / 256 + 1e-2 * torch.eye(64)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    return W, H, U


def test_identity_hessian_means_no_compensation():
    W = torch.randn(8, 40) * 3
    assert torch.equal(_sweep(W, torch.eye(40), 16, torch.round), torch.round(W))


def test_blocks_begin_in_order_with_their_widths():
    W = torch.randn(8, 40)
    t = _Elementwise(W, 16, torch.round)
    lazy_obs_sweep(W, torch.eye(40), 16, t)
    assert t.begun == [(0, 16, 16, (16, 16)), (16, 32, 16, (16, 16)), (32, 40, 8, (8, 8))]


def test_compensation_lowers_the_layer_output_error():
    W, H, U = _problem()
    before = W.clone()
    swept = _sweep(W, U, 64, torch.round)
    assert output_error(W, swept, H) < 0.5 * output_error(W, torch.round(W), H)
    assert torch.equal(W, before)  # the caller's weight is not modified


def test_lazy_blocks_give_the_same_result_as_one_block():
    W, _, U = _problem()
    shrink = lambda w: 0.5 * w  # noqa: E731  (a continuous target: float reordering cannot flip a rounding)
    torch.testing.assert_close(_sweep(W, U, 8, shrink), _sweep(W, U, 64, shrink), rtol=1e-4, atol=1e-4)
