"""Layer-input Hessian H = 2 X^T X / n and its damped inverse (GPTQ/SparseGPT, sec. 3)."""

from __future__ import annotations

import torch


class HessianAccumulator:
    """Running H = 2/n * sum_t x_t x_t^T over calibration tokens, in float32.

    Also keeps the running squared column norms sum_t x_t^2 (for Wanda's ||x||).
    """

    def __init__(self, in_features: int, device: torch.device | str = "cpu"):
        self.H = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.sq_norm = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.n = 0

    def add_batch(self, x: torch.Tensor) -> None:
        """Accumulate inputs x [..., K] (any float dtype)."""
        x = x.reshape(-1, x.shape[-1]).to(self.H.device, torch.float32)
        t = x.shape[0]
        self.H.mul_(self.n / (self.n + t))
        self.n += t
        xs = x * (2.0 / self.n) ** 0.5
        self.H.addmm_(xs.T, xs)
        self.sq_norm.add_(x.pow(2).sum(0))


def dead_inputs(H: torch.Tensor) -> torch.Tensor:
    """Bool [K]: inputs that were always zero on the calibration data."""
    return torch.diag(H) == 0


def damped_inverse(H: torch.Tensor, damp: float) -> torch.Tensor:
    """H^-1 of H + damp*mean(diag H)*I, with dead inputs given a unit diagonal. [K, K] float32."""
    H = H.clone()
    dead = dead_inputs(H)
    H[dead, dead] = 1.0
    H.diagonal().add_(damp * torch.mean(torch.diag(H)))
    L = torch.linalg.cholesky(H)
    return torch.cholesky_inverse(L)


def inverse_cholesky_upper(Hinv: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor U of H^-1 (H^-1 = U^T U): row i holds the OBS update of column i."""
    return torch.linalg.cholesky(Hinv, upper=True)
