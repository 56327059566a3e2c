"""The shared lazy-batch OBS sweep (gqsa.solver.sweep)."""

from __future__ import annotations

import torch

from gqsa.solver.prune_quant import output_error
from gqsa.solver.sweep import lazy_obs_sweep


def _sweep(W, U, block_size, target):
    out = torch.zeros_like(W)

    def column(col, i, W1):
        out[:, col] = target(W1[:, i])
        return out[:, col]
    lazy_obs_sweep(W, U, block_size, column)
    return out


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


def test_compensation_lowers_the_layer_output_error():
    W, H, U = _problem()
    before = W.clone()
    swept = _sweep(W, U, 64, torch.round)
    assert output_error(W, swept, H) < 0.5 * output_error(W, torch.round(W), H)
    assert torch.equal(W, before)  # the caller's weight is not modified


def test_lazy_blocks_give_the_same_result_as_one_block():
    W, _, U = _problem()
    shrink = lambda w: 0.5 * w  # a continuous target, so float reordering cannot flip a rounding
    torch.testing.assert_close(_sweep(W, U, 8, shrink), _sweep(W, U, 64, shrink), rtol=1e-4, atol=1e-4)
